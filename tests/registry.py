"""Every algorithm under test, once: the case registry that the test files draw from.

In the style of torch's ``common_optimizers.optim_db``: one record per algorithm
holds what the generic tests need to know about it (its facade class, functional
constructor and torch class, the option grid its parity tests run, the dtypes and
shapes torch accepts for it, and option sets for the other suites). A test that
runs "every algorithm" parametrizes over ``SPECS``; adding an algorithm to the
library is one record here.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch
from reference import DTYPES, MIXED, SHAPES, SPAN

import functorch_optim as fo


@dataclasses.dataclass(frozen=True)
class Spec:
    """One algorithm and its test cases.

    name: the functional constructor's name (``fo.<name>``).
    facade: the facade class's name (``fo.<facade>``), torch's class name too.
    grid: option sets for the parity runs, each setting options at zero and nonzero
      values, alone and together; every one runs in every dtype of ``dtypes``.
    dtypes: the parameter dtypes torch runs (the others get torch's error).
    shapes: the leaf shapes of one parity pytree (torch's limits on shapes).
    steps: steps per parity run (RAdam needs 7 to cross its rectification switch).
    every_state: options under which the algorithm creates each of its state
      entries (amsgrad, momentum, centered, ASGD's averaging).
    ecosystem: options for the optax / flax / checkpoint integration tests.
    properties: options for the property tests (test_properties), switching on
      more of the rule than the defaults do.
    packing: options for the packed-leaves tests; set exactly for the elementwise
      algorithms (test_packing checks that).
    sharding: options for the sharding checks where they differ from
      ``every_state`` (weight decay on too).
    facade_options: option sets for the facade's two-group parity runs against torch
      (test_facade: group 1 halves the lr and flips ``maximize``); the first also
      runs the state-dict round trips. Empty: the algorithm has its own facade test.
    facade_shapes: the leaf shapes of those runs' two param groups; the last param
      of group 1 never gets a gradient.
    facade_dtypes: the dtypes of those runs; in one torch rejects, the facade must
      raise torch's error.
    capturable: options for the ``capturable=True`` and float32-tensor-lr checks
      (test_capturable: torch keeps its step scalars as float32 tensors there);
      None: not checked.
    as_arrays: options that test_parity passes as JAX arrays (traced: a new value
      does not recompile), its lr also as a schedule; None: not checked that way
      (test_parity's lr-as-array tests take most others' lr alone).
    foreach_as_default: torch's foreach path rounds differently from its
      single-tensor one (ASGD's even factors the update differently), so test_parity
      compares ``foreach=True`` with the single-tensor path. These algorithms (the
      ones with per-leaf scalars, elementwise) also get test_parity's
      implementation-flag cases, packed-leaves runs, lr as an array and as a
      schedule, and updates without params.
    fused: options with ``fused=True`` where torch's fused kernel runs on CPU (its
      own code: test_parity compares it in every real dtype); None: none.
    invalid_options: option sets torch rejects whatever the params, at construction
      or at its first step; test_options checks the same exception type and message
      here (at construction, init or update) on float32 params of shape (2, 3).
    invalid_arrays: option sets torch rejects as tensors (a vector lr): the same,
      each value passed as a JAX array.
    invalid_params: ``(options, dtype, shape)``: params torch rejects under those
      options (a dtype, a shape; SparseAdam: a dense gradient), checked the same way.
    facade_invalid_options: option sets torch's constructor rejects: the facade must
      raise torch's error at construction and for a group that
      ``add_param_group`` adds (test_facade).
    nonfinite: ``(options, dtype)``: runs on gradients with NaN and inf, whose NaN
      and inf must land where torch's do (test_properties).
    property_leaves: ``(shape, dtype)`` leaves of the one pytree the mixed-dtype
      property test steps at every magnitude (test_properties); the default mixes
      every dtype and the odd shapes, narrowed where torch rejects some.
    property_span: per dtype, the decimal exponents that test scales its params and
      grads by (``10 ** (u * span)``, u in [-1, 1]).
    meta_gradient: options whose hyperparameters (lr, betas or momentum and
      dampening, weight_decay) test_ecosystem differentiates the loss after unrolled
      steps by, against central differences; None: not checked.
    sharding_tolerance: the largest relative difference the sharding checks allow
      between a sharded run and the unsharded one. Sharded matmuls and reductions
      sum in another order; elementwise steps are bit-identical (0).
    """

    name: str
    facade: str
    grid: tuple[dict, ...] = ({},)
    dtypes: tuple[str, ...] = DTYPES
    shapes: tuple[tuple, ...] = SHAPES
    steps: int = 4
    every_state: dict = dataclasses.field(default_factory=dict)
    ecosystem: dict = dataclasses.field(default_factory=dict)
    properties: dict = dataclasses.field(default_factory=dict)
    packing: dict | None = None
    sharding: dict | None = None
    facade_options: tuple[dict, ...] = ()
    facade_shapes: tuple[tuple, tuple] = (((), (3,), (2, 3)), ((2, 3, 2), (0,), (4,)))
    facade_dtypes: tuple[str, ...] = DTYPES
    capturable: dict | None = None
    as_arrays: dict | None = None
    foreach_as_default: bool = False
    fused: dict | None = None
    invalid_options: tuple[dict, ...] = ()
    invalid_arrays: tuple[dict, ...] = ()
    invalid_params: tuple[tuple[dict, str, tuple], ...] = ()
    facade_invalid_options: tuple[dict, ...] = ()
    nonfinite: tuple[tuple[dict, str], ...] = ()
    property_leaves: tuple[tuple[tuple, str], ...] = MIXED
    property_span: dict = dataclasses.field(default_factory=SPAN.copy)
    meta_gradient: dict | None = None
    sharding_tolerance: float = 0.0

    @property
    def functional(self):
        return getattr(fo, self.name)

    @property
    def cls(self) -> type:
        return getattr(fo, self.facade)

    @property
    def torch_cls(self) -> type:
        return getattr(torch.optim, self.facade)

    @property
    def algorithm(self):
        """The per-leaf rule's record (its state names, torch facts, flags)."""
        return self.cls.algorithm

    @property
    def elementwise(self) -> bool:
        return self.algorithm.elementwise

    @property
    def supports_complex(self) -> bool:
        return any(d.startswith("complex") for d in self.dtypes)

    @property
    def sparse(self) -> bool:
        """Steps on sparse (BCOO) gradients only."""
        return self.name == "sparse_adam"

    @property
    def state_type(self) -> type:
        """The functional state's NamedTuple (``fo.AdamState``, ...)."""
        return getattr(fo, f"{self.facade}State")


def _sgd_grid():
    for momentum, dampening, nesterov in [
        (0.0, 0.0, False),
        (0.9, 0.0, False),
        (0.9, 0.0, True),
        (0.8, 0.3, False),
    ]:
        for weight_decay, maximize in itertools.product([0.0, 0.1], [False, True]):
            yield dict(
                lr=0.1,
                momentum=momentum,
                dampening=dampening,
                nesterov=nesterov,
                weight_decay=weight_decay,
                maximize=maximize,
            )


def _adam_grid(decoupled_options=(False, True)):
    for amsgrad, maximize, weight_decay, decoupled in itertools.product(
        [False, True], [False, True], [0.0, 0.1], decoupled_options
    ):
        options = dict(
            lr=0.05,
            betas=(0.8, 0.95),
            amsgrad=amsgrad,
            maximize=maximize,
            weight_decay=weight_decay,
        )
        if decoupled is not None:
            options["decoupled_weight_decay"] = decoupled
        yield options


# torch's Adafactor divides by the element count (size 0 raises); Muon takes 2-D
# parameters only: wide, tall, square and empty.
NONEMPTY_SHAPES = tuple(s for s in SHAPES if np.prod(s) > 0) + ((3, 1, 4),)
MATRIX_SHAPES = ((3, 5), (5, 3), (4, 4), (0, 3))
REAL_DTYPES = tuple(d for d in DTYPES if not d.startswith("complex"))
NAN = float("nan")

SPECS = {
    spec.name: spec
    for spec in [
        Spec(
            "sgd",
            "SGD",
            nonfinite=((dict(lr=0.1, momentum=0.9), "float32"),),
            meta_gradient=dict(lr=0.01, momentum=0.7, weight_decay=0.1, dampening=0.2),
            sharding=dict(lr=0.1, momentum=0.9, weight_decay=0.01),
            properties=dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
            packing={"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
            grid=tuple(_sgd_grid()),
            every_state=dict(lr=0.05, momentum=0.9),
            ecosystem=dict(lr=0.1, momentum=0.9, nesterov=True),
            facade_options=(
                dict(lr=0.1),
                dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.1),
                dict(lr=0.1, momentum=0.9, nesterov=True),
            ),
            facade_invalid_options=(
                dict(lr=-0.1),
                dict(momentum=-0.5),
                dict(weight_decay=-1.0),
                dict(nesterov=True),
                dict(fused=True, foreach=True),
            ),
        ),
        Spec(
            "adam",
            "Adam",
            nonfinite=(
                (dict(lr=0.1, amsgrad=True), "float32"),
                (dict(lr=0.1), "float64"),
            ),
            meta_gradient=dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1),
            sharding=dict(lr=0.05, amsgrad=True, weight_decay=0.01),
            properties=dict(lr=0.05, amsgrad=True, weight_decay=0.1),
            packing={"lr": 0.1, "amsgrad": True, "weight_decay": 0.1},
            grid=tuple(_adam_grid()),
            every_state=dict(lr=0.05, amsgrad=True),
            ecosystem=dict(lr=0.1, amsgrad=True),
            facade_options=(
                dict(lr=0.05),
                dict(lr=0.05, amsgrad=True, weight_decay=0.1),
            ),
            capturable=dict(lr=0.1, amsgrad=True, weight_decay=0.01),
            facade_invalid_options=(
                dict(lr=-1.0),
                dict(eps=-1.0),
                dict(betas=(1.0, 0.9)),
                dict(betas=(0.9, -0.1)),
                dict(weight_decay=-0.1),
                dict(fused=True, differentiable=True),
            ),
        ),
        Spec(
            "adamw",
            "AdamW",
            properties=dict(lr=0.05),
            packing={"lr": 0.1, "maximize": True},
            grid=tuple(_adam_grid((None,))),
            every_state=dict(lr=0.05),
            ecosystem=dict(lr=0.1),
            facade_options=(dict(lr=0.05, betas=(0.8, 0.9)),),
            capturable=dict(lr=0.1),
            facade_invalid_options=(dict(lr=-1.0),),
        ),
        Spec(
            "adadelta",
            "Adadelta",
            sharding=dict(lr=0.5, weight_decay=0.01),
            properties=dict(lr=0.5, weight_decay=0.1),
            packing={"lr": 0.5, "rho": 0.8, "weight_decay": 0.1},
            grid=(
                {},
                dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1),
                dict(rho=1.0, weight_decay=0.1, maximize=True),
            ),
            steps=5,
            every_state=dict(lr=0.5),
            facade_options=(dict(lr=0.5, rho=0.8, weight_decay=0.1),),
            foreach_as_default=True,
            invalid_options=(
                dict(lr=-1.0),
                dict(lr=NAN),
                dict(rho=-0.1),
                dict(rho=1.5),
                dict(eps=-1e-6),
                dict(weight_decay=-0.1),
                dict(rho=2.0, eps=-1.0),
                dict(foreach=True, differentiable=True),
            ),
            invalid_arrays=(dict(lr=(0.1, 0.2)),),
            facade_invalid_options=(dict(rho=1.5),),
        ),
        Spec(
            "adafactor",
            "Adafactor",
            # torch's Adafactor rejects complex and size 0.
            property_leaves=tuple(
                leaf for leaf in MIXED if leaf[1] != "complex64" and leaf[0] != (0,)
            ),
            # Sharded matmuls and reductions sum in another order: Adafactor's norms
            # run in float32 (elementwise steps are bit-identical).
            sharding_tolerance=1e-5,
            # torch's Adafactor takes eps1=None as finfo(dtype).eps of the FIRST
            # param of the group for all its params; the rule uses each leaf's own
            # dtype. They agree on single-dtype groups (test_parity); the mixed-dtype
            # groups of test_properties set eps1.
            properties=dict(lr=0.5, eps=(1e-12, 1e-3)),
            grid=(
                {},
                dict(lr=0.5, weight_decay=0.1),  # lr > 1/sqrt(t): rho_t = 1/sqrt(t)
                dict(beta2_decay=-0.5, eps=(1e-3, 1e-2), maximize=True),
                dict(d=1.5, eps=(None, 0.5), foreach=True),
                dict(beta2_decay=0.0, d=100.0),
            ),
            dtypes=REAL_DTYPES,
            shapes=NONEMPTY_SHAPES,
            every_state=dict(lr=0.05),
            facade_options=(dict(lr=0.5, weight_decay=0.1),),
            facade_shapes=(((), (3,), (2, 3)), ((2, 3, 2), (3, 1, 4), (4,))),
            as_arrays=dict(lr=0.02, weight_decay=0.1, beta2_decay=-0.6, d=1.2),
            invalid_options=(
                dict(lr=-1.0),
                dict(beta2_decay=0.5),
                dict(eps=(-1e-3, 1e-3)),
                dict(eps=(None, -1e-3)),
                dict(d=0.5),
                dict(weight_decay=-0.1),
                dict(d=0.5, weight_decay=-1.0),
            ),
            invalid_arrays=(dict(lr=(0.1, 0.2)),),
            invalid_params=(
                ({}, "complex64", (2, 3)),
                ({}, "float32", (0,)),
                ({}, "float32", (2, 0)),
            ),
            facade_invalid_options=(dict(lr=-1.0),),
        ),
        Spec(
            "adagrad",
            "Adagrad",
            nonfinite=((dict(lr=0.1), "float32"),),
            properties=dict(lr=0.1, lr_decay=0.1),
            packing={"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
            grid=(
                {},
                dict(lr=0.1, lr_decay=0.1, weight_decay=0.1),
                dict(
                    lr_decay=0.05,
                    initial_accumulator_value=0.3,
                    eps=1e-3,
                    maximize=True,
                ),
            ),
            steps=5,
            every_state=dict(lr=0.1, lr_decay=0.01),
            ecosystem=dict(lr_decay=0.1),
            facade_options=(dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1),),
            foreach_as_default=True,
            fused=dict(
                lr_decay=0.05,
                initial_accumulator_value=0.1,
                weight_decay=0.1,
                fused=True,
            ),
            invalid_options=(
                dict(lr=-0.1),
                dict(lr_decay=-0.1),
                dict(weight_decay=-0.1),
                dict(initial_accumulator_value=-0.1),
                dict(eps=-1e-10),
                dict(eps=-1.0, lr_decay=-1.0),
                dict(fused=True, differentiable=True),
                dict(fused=True, foreach=True),
                dict(foreach=True, differentiable=True),
            ),
            invalid_params=((dict(fused=True), "complex64", (2,)),),
            facade_invalid_options=(dict(lr_decay=-0.1),),
        ),
        Spec(
            "adamax",
            "Adamax",
            nonfinite=((dict(lr=0.1), "float32"),),
            properties=dict(lr=0.05),
            packing={"lr": 0.1, "weight_decay": 0.1},
            grid=(
                {},
                dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1),
                dict(weight_decay=0.1, maximize=True),
            ),
            steps=5,
            every_state=dict(lr=0.05),
            facade_options=(dict(lr=0.05, weight_decay=0.1),),
            capturable=dict(lr=0.1),
            foreach_as_default=True,
            invalid_options=(
                dict(lr=-1e-3),
                dict(eps=-1e-8),
                dict(betas=(-0.1, 0.999)),
                dict(betas=(1.0, 0.999)),
                dict(betas=(0.9, 1.0)),
                dict(weight_decay=-1.0),
                dict(foreach=True, differentiable=True),
            ),
            facade_invalid_options=(dict(eps=-1.0),),
        ),
        Spec(
            "asgd",
            "ASGD",
            properties=dict(lr=0.05, t0=1.0),
            packing={"lr": 0.1, "t0": 1.0},
            grid=(
                {},  # t0 = 1e6: mu stays 1 and ax copies the parameters
                dict(lr=0.05, lambd=0.1, alpha=0.5, t0=1.0, weight_decay=0.1),
                dict(lr=0.05, lambd=0.01, t0=2.0, maximize=True),
            ),
            steps=5,
            every_state=dict(lr=0.05, t0=1.0),
            ecosystem=dict(t0=1),
            facade_options=(dict(lr=0.05, lambd=0.1, t0=1.0),),
            capturable=dict(lr=0.1, t0=3.0),
            foreach_as_default=True,
            invalid_options=(
                dict(lr=-0.01),
                dict(weight_decay=-0.1),
                dict(foreach=True, differentiable=True),
            ),
            invalid_arrays=(dict(lr=(0.1, 0.2)),),
            facade_invalid_options=(dict(weight_decay=-1.0),),
        ),
        Spec(
            "nadam",
            "NAdam",
            properties=dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
            packing={"lr": 0.1, "decoupled_weight_decay": True, "weight_decay": 0.1},
            grid=(
                {},
                dict(lr=0.05, betas=(0.8, 0.95), momentum_decay=0.1, weight_decay=0.1),
                dict(
                    weight_decay=0.1,
                    decoupled_weight_decay=True,
                    maximize=True,
                    momentum_decay=0.0,
                ),
            ),
            steps=5,
            every_state=dict(lr=0.05),
            ecosystem=dict(decoupled_weight_decay=True, weight_decay=0.1),
            facade_options=(
                dict(
                    lr=0.05,
                    momentum_decay=0.1,
                    decoupled_weight_decay=True,
                    weight_decay=0.1,
                ),
            ),
            capturable=dict(lr=0.1, weight_decay=0.01, decoupled_weight_decay=True),
            foreach_as_default=True,
            invalid_options=(
                dict(lr=-1.0),
                dict(eps=-1.0),
                dict(betas=(0.9, -0.5)),
                dict(weight_decay=-1.0),
                dict(momentum_decay=-1.0),
                dict(momentum_decay=-1.0, betas=(2.0, 0.9)),
                dict(foreach=True, differentiable=True),
            ),
            facade_invalid_options=(dict(momentum_decay=-1.0),),
        ),
        Spec(
            "radam",
            "RAdam",
            properties=dict(lr=0.05),
            packing={"lr": 0.1, "weight_decay": 0.1},
            grid=(
                {},
                dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1),
                dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
            ),
            # RAdam rectifies only once rho_t > 5, from the 5th or 6th step on for
            # usual betas.
            steps=7,
            every_state=dict(lr=0.05),
            facade_options=(dict(lr=0.05, weight_decay=0.1),),
            capturable=dict(lr=0.1),
            foreach_as_default=True,
            invalid_options=(
                dict(lr=-1.0),
                dict(eps=-1.0),
                dict(betas=(1.5, 0.999)),
                dict(betas=(0.9, 1.5)),
                dict(weight_decay=-1.0),
                dict(foreach=True, differentiable=True),
            ),
            facade_invalid_options=(dict(betas=(0.9, 1.0)),),
        ),
        Spec(
            "rmsprop",
            "RMSprop",
            nonfinite=((dict(lr=0.1, centered=True), "float32"),),
            sharding=dict(lr=0.01, momentum=0.9, centered=True),
            properties=dict(lr=0.03, centered=True, momentum=0.5),
            packing={"lr": 0.01, "centered": True, "momentum": 0.5},
            grid=(
                {},
                dict(lr=0.05, momentum=0.9),
                dict(centered=True, alpha=0.5, eps=1e-3),
                dict(
                    lr=0.03, centered=True, momentum=0.5, weight_decay=0.1, foreach=True
                ),
                dict(
                    weight_decay=0.1,
                    maximize=True,
                    capturable=True,
                    differentiable=True,
                ),
            ),
            every_state=dict(lr=0.01, momentum=0.5, centered=True),
            ecosystem=dict(centered=True, momentum=0.5),
            facade_options=(dict(lr=0.03, centered=True, momentum=0.5),),
            as_arrays=dict(lr=0.02, momentum=0.9, alpha=0.9, weight_decay=0.1),
            invalid_options=(
                dict(lr=-1.0),
                dict(lr=NAN),
                dict(eps=-1e-8),
                dict(momentum=-0.9),
                dict(weight_decay=-0.1),
                dict(alpha=-0.99),
                dict(alpha=-1.0, eps=-1.0),
            ),
            invalid_arrays=(dict(lr=(0.1, 0.2)),),
            facade_invalid_options=(dict(alpha=-0.1),),
        ),
        Spec(
            "rprop",
            "Rprop",
            nonfinite=((dict(lr=0.1), "float32"),),
            properties=dict(lr=0.05),
            packing={"lr": 0.01},
            grid=(
                {},
                dict(lr=0.05, etas=(0.3, 1.5)),
                dict(step_sizes=(5e-3, 1.5e-2), maximize=True),
                dict(lr=0.1, etas=(0.7, 1.1), step_sizes=(1e-2, 1.0), foreach=True),
                dict(capturable=True, differentiable=True),
            ),
            every_state=dict(lr=0.05),
            facade_options=(dict(lr=0.05, etas=(0.3, 1.5)),),
            as_arrays=dict(lr=0.02),
            invalid_options=(
                dict(lr=-1.0),
                dict(etas=(0.0, 1.2)),
                dict(etas=(1.0, 1.2)),
                dict(etas=(0.5, 1.0)),
                dict(etas=(0.5, NAN)),
            ),
            invalid_arrays=(dict(lr=(0.1, 0.2)),),
            facade_invalid_options=(dict(etas=(1.5, 1.2)),),
        ),
        Spec(
            "sparse_adam",
            "SparseAdam",
            properties=dict(lr=0.05),
            grid=(
                {},
                dict(lr=0.05, betas=(0.8, 0.95), eps=1e-4),
                dict(lr=0.02, maximize=True),
            ),
            dtypes=REAL_DTYPES,
            every_state=dict(lr=0.05),
            ecosystem=dict(lr=0.1),
            invalid_options=(
                dict(lr=0.0),
                dict(lr=-1.0),
                dict(eps=0.0),
                dict(betas=(1.0, 0.999)),
                dict(betas=(0.9, -0.1)),
            ),
            invalid_arrays=(dict(lr=(0.1, 0.2)),),
            invalid_params=(
                ({}, "float32", (2, 3)),  # a dense gradient
                ({}, "complex64", (2, 3)),
            ),
            facade_invalid_options=(dict(lr=0.0),),
        ),
        Spec(
            "muon",
            "Muon",
            # Muon takes matrices, float16 and complex not. torch runs Newton-Schulz
            # in bfloat16, whose range is float32's, so float64 leaves stay within it.
            property_leaves=(
                ((2, 3), "float32"),
                ((0, 3), "float32"),
                ((3, 2), "float64"),
                ((2, 2), "bfloat16"),
            ),
            property_span=SPAN | {"float64": 15},
            # Sharded matmuls sum in another order, and Newton-Schulz runs in
            # bfloat16.
            sharding_tolerance=2e-2,
            properties=dict(lr=0.02),
            grid=(
                {},
                dict(lr=0.02, nesterov=False, adjust_lr_fn="original"),
                dict(
                    lr=0.05,
                    momentum=0.5,
                    weight_decay=0.0,
                    adjust_lr_fn="match_rms_adamw",
                ),
                dict(
                    ns_steps=3, ns_coefficients=(2.0, -1.5, 0.5), eps=1e-3, momentum=0.0
                ),
            ),
            dtypes=REAL_DTYPES,
            shapes=MATRIX_SHAPES,
            every_state=dict(lr=0.05),
            ecosystem=dict(lr=0.1),
            facade_options=(dict(lr=0.02, momentum=0.9),),
            facade_shapes=(((3, 5), (4, 4)), ((5, 3), (0, 3), (2, 2))),
            facade_dtypes=("float32", "float64"),
            as_arrays=dict(lr=0.02, momentum=0.9, weight_decay=0.1),
            invalid_options=(
                dict(lr=-1.0),
                dict(momentum=-0.5),
                dict(weight_decay=-0.1),
                dict(adjust_lr_fn="spectral"),
                dict(ns_steps=100),
                dict(ns_coefficients=(3.0, -4.0)),
            ),
            invalid_arrays=(dict(lr=(0.1, 0.2)),),
            invalid_params=(
                ({}, "complex64", (2, 3)),
                ({}, "float32", (3,)),
                ({}, "float32", (2, 3, 4)),
                (dict(adjust_lr_fn="original"), "float32", (3, 0)),
            ),
            facade_invalid_options=(dict(momentum=-1.0),),
        ),
        # L-BFGS steps on a closure, not on grads: the grid-based parity tests skip
        # it (tests/test_lbfgs.py is its parity suite).
        Spec(
            "lbfgs",
            "LBFGS",
            grid=(),
            dtypes=("float32", "float64"),
            ecosystem=dict(max_iter=3, line_search_fn="strong_wolfe"),
        ),
    ]
}

# Algorithms that step on gradients (all but L-BFGS).
FIRST_ORDER = [name for name in SPECS if name != "lbfgs"]

# The same records by facade class name (torch's class name).
BY_FACADE = {spec.facade: spec for spec in SPECS.values()}

"""Adadelta, Adagrad, Adamax, ASGD, NAdam and RAdam against torch.optim.

Step by step over each algorithm's options, every dtype torch runs, all SHAPES in
one pytree; the final optimizer state is compared with torch's too, under torch's
state names. Every value torch rejects is rejected with torch's exception and
message.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reference import (
    DTYPES,
    SHAPES,
    as_torch_options,
    assert_same_error,
    grad_sequence,
    parity_run,
    random_arrays,
    scale_lr_after_each_step,
    to_jax,
    to_numpy,
    to_torch,
)

import functorch_optim as fo
from functorch_optim.algorithms.adadelta import ADADELTA
from functorch_optim.algorithms.adagrad import ADAGRAD
from functorch_optim.algorithms.adamax import ADAMAX
from functorch_optim.algorithms.asgd import ASGD
from functorch_optim.algorithms.nadam import NADAM
from functorch_optim.algorithms.radam import RADAM

ALGORITHMS = {
    "adadelta": (ADADELTA, torch.optim.Adadelta),
    "adagrad": (ADAGRAD, torch.optim.Adagrad),
    "adamax": (ADAMAX, torch.optim.Adamax),
    "asgd": (ASGD, torch.optim.ASGD),
    "nadam": (NADAM, torch.optim.NAdam),
    "radam": (RADAM, torch.optim.RAdam),
}

STEPS = 5
# RAdam rectifies only once rho_t > 5, from the 5th or 6th step on for usual betas.
RADAM_STEPS = 7

# Flags that only pick one of torch's implementations are compared with torch's
# CPU reference, its single-tensor path: torch on CPU cannot run capturable (its
# device check) nor differentiable (in-place steps of leaf tensors that require
# grad) steps, and its foreach path rounds differently (ASGD's foreach path even
# factors the update differently). Adagrad's fused kernel runs on CPU and is
# compared as it is.
AS_TORCH_DEFAULT = {"capturable": False, "differentiable": False, "foreach": None}

# Each grid sets every option of the algorithm, at zero and nonzero values, alone
# and together; these run in every dtype.
GRIDS = {
    "adadelta": [
        {},
        dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1),
        dict(rho=1.0, weight_decay=0.1, maximize=True),
    ],
    "adagrad": [
        {},
        dict(lr=0.1, lr_decay=0.1, weight_decay=0.1),
        dict(lr_decay=0.05, initial_accumulator_value=0.3, eps=1e-3, maximize=True),
    ],
    "adamax": [
        {},
        dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1),
        dict(weight_decay=0.1, maximize=True),
    ],
    "asgd": [
        {},  # t0 = 1e6: mu stays 1 and ax copies the parameters
        dict(lr=0.05, lambd=0.1, alpha=0.5, t0=1.0, weight_decay=0.1),
        dict(lr=0.05, lambd=0.01, t0=2.0, maximize=True),
    ],
    "nadam": [
        {},
        dict(lr=0.05, betas=(0.8, 0.95), momentum_decay=0.1, weight_decay=0.1),
        dict(
            weight_decay=0.1,
            decoupled_weight_decay=True,
            maximize=True,
            momentum_decay=0.0,
        ),
    ],
    "radam": [
        {},
        dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1),
        dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    ],
}

# Implementation flags leave the math alone: one dtype each is enough.
FLAG_CASES = [
    (name, flags | dict(weight_decay=0.1))
    for name in GRIDS
    for flags in (
        # Adagrad alone has no capturable
        dict(foreach=True) | ({} if name == "adagrad" else dict(capturable=True)),
        dict(differentiable=True),
    )
]
# Adagrad's fused kernel is torch code of its own, run on CPU for real dtypes
# (complex: torch's error, see test_torch_errors).
FUSED_CASE = (
    "adagrad",
    dict(lr_decay=0.05, initial_accumulator_value=0.1, weight_decay=0.1, fused=True),
)

CASES = [(name, options) for name, grid in GRIDS.items() for options in grid]
JIT_CASES = (
    [(case, dtype) for case in CASES for dtype in DTYPES]
    + [(case, "float32") for case in FLAG_CASES]
    + [(FUSED_CASE, dtype) for dtype in DTYPES if not dtype.startswith("complex")]
)


def _case_id(case):
    name, options = case
    return f"{name}[{','.join(f'{k}={v}' for k, v in options.items())}]"


def _run_both(name, options, dtype, jit=True):
    """Run torch and our transform side by side; returns the largest difference."""
    algorithm, torch_cls = ALGORITHMS[name]
    steps = RADAM_STEPS if name == "radam" else STEPS
    return parity_run(
        getattr(fo, name)(**options),
        lambda tensors: torch_cls(
            tensors, **as_torch_options(options, AS_TORCH_DEFAULT)
        ),
        algorithm.state_names,
        random_arrays(0, SHAPES, dtype),
        grad_sequence(steps, SHAPES, dtype),
        dtype,
        jit,
    )


@pytest.mark.parametrize(
    "case,dtype", JIT_CASES, ids=lambda x: x if isinstance(x, str) else _case_id(x)
)
def test_parity_jit(case, dtype):
    _run_both(*case, dtype)


@pytest.mark.parametrize(
    "case,dtype",
    # Eager steps run the same rules op by op (slowly): each algorithm's case with
    # the most nonzero options, the dtypes in turn.
    [
        ((name, grid[1]), DTYPES[i % len(DTYPES)])
        for i, (name, grid) in enumerate(GRIDS.items())
    ],
    ids=lambda x: x if isinstance(x, str) else _case_id(x),
)
def test_parity_without_jit(case, dtype):
    _run_both(*case, dtype, jit=False)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_parity_with_packed_leaves(name):
    """Many small leaves of one shape are stepped stacked (the rules are
    elementwise; ASGD's eta/mu and NAdam's mu_product stay per leaf)."""
    algorithm, torch_cls = ALGORITHMS[name]
    assert algorithm.elementwise
    options = GRIDS[name][1]
    shapes = [(2, 3)] * 6 + [(4,)]
    parity_run(
        getattr(fo, name)(**options),
        lambda tensors: torch_cls(tensors, **options),
        algorithm.state_names,
        random_arrays(0, shapes, "complex64"),
        grad_sequence(RADAM_STEPS, shapes, "complex64"),
        "complex64",
    )


@pytest.mark.parametrize("name", ALGORITHMS)
def test_signature_is_torchs(name):
    """Same keyword names, order, kinds and defaults as torch's constructor."""
    algorithm, torch_cls = ALGORITHMS[name]
    theirs = list(inspect.signature(torch_cls.__init__).parameters.values())[2:]
    ours = list(inspect.signature(algorithm.functional).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours] == [
        (p.name, p.kind, p.default) for p in theirs
    ]
    assert algorithm.name == torch_cls.__name__


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
def test_adagrad_state_is_created_at_construction(dtype):
    """torch fills ``sum`` in its constructor, complex parts both at the value."""
    params = random_arrays(0, SHAPES, dtype)
    tensors = [to_torch(p, dtype) for p in params]
    optimizer = torch.optim.Adagrad(tensors, initial_accumulator_value=0.25)
    state = fo.adagrad(initial_accumulator_value=0.25).init(
        [to_jax(p, dtype) for p in params]
    )
    for tensor, ours in zip(tensors, state.sum):
        np.testing.assert_array_equal(
            to_numpy(ours), to_numpy(optimizer.state[tensor]["sum"])
        )
        assert ours.dtype == jnp.dtype(dtype)


def test_radam_grid_crosses_the_rectification_switch():
    """The RAdam cases step on both sides of rho_t = 5 inside one jitted step."""
    for beta2 in {o.get("betas", (0.9, 0.999))[1] for o in GRIDS["radam"]}:
        rho_inf = 2 / (1 - beta2) - 1
        rho = [
            rho_inf - 2 * t * beta2**t / (1 - beta2**t)
            for t in range(1, RADAM_STEPS + 1)
        ]
        assert rho[0] <= 5.0 < rho[-1], (beta2, rho)


@pytest.mark.parametrize(
    "lr,torch_lr",
    [
        (jnp.asarray(0.03), torch.tensor(0.03, dtype=torch.float64)),
        # a schedule sees 0, 1, 2, ... exactly as torch's lr set before each step
        (lambda count: 0.1 * 0.5**count, 0.1),
    ],
    ids=["array", "schedule"],
)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_lr_as_array_and_schedule(name, lr, torch_lr):
    algorithm, torch_cls = ALGORITHMS[name]
    factor = 1.0 if isinstance(torch_lr, torch.Tensor) else 0.5
    parity_run(
        getattr(fo, name)(lr=lr),
        lambda ps: scale_lr_after_each_step(torch_cls(ps, lr=torch_lr), factor),
        algorithm.state_names,
        random_arrays(0, SHAPES, "float64"),
        grad_sequence(RADAM_STEPS, SHAPES, "float64"),
        "float64",
    )


@pytest.mark.parametrize("name", ALGORITHMS)
def test_update_without_params(name):
    """Without weight decay only ASGD reads the parameters (its decay and average)."""
    params = [jnp.ones(3)]
    grads = [jnp.full(3, 0.5)]
    tx = getattr(fo, name)(lr=0.1)
    if name == "asgd":
        with pytest.raises(ValueError, match="needs params"):
            tx.update(grads, tx.init(params))
        return
    with_params, _ = tx.update(grads, tx.init(params), params)
    without, _ = tx.update(grads, tx.init(params))
    np.testing.assert_allclose(with_params[0], without[0])


NAN = float("nan")

# (algorithm, invalid options): each raises in torch at construction or at its
# first step, and here at construction or init; float32 parameters unless given.
ERROR_CASES = [
    ("adadelta", dict(lr=-1.0)),
    ("adadelta", dict(lr=NAN)),
    ("adadelta", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("adadelta", dict(rho=-0.1)),
    ("adadelta", dict(rho=1.5)),
    ("adadelta", dict(eps=-1e-6)),
    ("adadelta", dict(weight_decay=-0.1)),
    ("adadelta", dict(rho=2.0, eps=-1.0)),
    ("adadelta", dict(foreach=True, differentiable=True)),
    ("adagrad", dict(lr=-0.1)),
    ("adagrad", dict(lr_decay=-0.1)),
    ("adagrad", dict(weight_decay=-0.1)),
    ("adagrad", dict(initial_accumulator_value=-0.1)),
    ("adagrad", dict(eps=-1e-10)),
    ("adagrad", dict(eps=-1.0, lr_decay=-1.0)),
    ("adagrad", dict(fused=True, differentiable=True)),
    ("adagrad", dict(fused=True, foreach=True)),
    ("adagrad", dict(foreach=True, differentiable=True)),
    ("adamax", dict(lr=-1e-3)),
    ("adamax", dict(eps=-1e-8)),
    ("adamax", dict(betas=(-0.1, 0.999))),
    ("adamax", dict(betas=(1.0, 0.999))),
    ("adamax", dict(betas=(0.9, 1.0))),
    ("adamax", dict(weight_decay=-1.0)),
    ("adamax", dict(foreach=True, differentiable=True)),
    ("asgd", dict(lr=-0.01)),
    ("asgd", dict(weight_decay=-0.1)),
    ("asgd", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("asgd", dict(foreach=True, differentiable=True)),
    ("nadam", dict(lr=-1.0)),
    ("nadam", dict(eps=-1.0)),
    ("nadam", dict(betas=(0.9, -0.5))),
    ("nadam", dict(weight_decay=-1.0)),
    ("nadam", dict(momentum_decay=-1.0)),
    ("nadam", dict(momentum_decay=-1.0, betas=(2.0, 0.9))),
    ("nadam", dict(foreach=True, differentiable=True)),
    ("radam", dict(lr=-1.0)),
    ("radam", dict(eps=-1.0)),
    ("radam", dict(betas=(1.5, 0.999))),
    ("radam", dict(betas=(0.9, 1.5))),
    ("radam", dict(weight_decay=-1.0)),
    ("radam", dict(foreach=True, differentiable=True)),
]
ERROR_CASES = [(name, options, "float32") for name, options in ERROR_CASES] + [
    ("adagrad", dict(fused=True), "complex64"),
]


@pytest.mark.parametrize(
    "name,options,dtype",
    ERROR_CASES,
    ids=[f"{n}[{o}]-{d}" for n, o, d in ERROR_CASES],
)
def test_torch_errors(name, options, dtype):
    """Same exception type and message as torch, for every value torch rejects."""
    _, torch_cls = ALGORITHMS[name]
    value = np.ones(2)

    def torch_run():
        tensor = to_torch(value, dtype).requires_grad_()
        tensor.grad = torch.ones_like(tensor)
        torch_cls([tensor], **as_torch_options(options)).step()

    def our_run():
        params = [to_jax(value, dtype)]
        tx = getattr(fo, name)(**options)
        tx.update(params, tx.init(params), params)

    assert_same_error(torch_run, our_run)

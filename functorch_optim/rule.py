"""The per-leaf rule every algorithm module declares, and torch's option checks.

An algorithm is written once, as torch writes its single-tensor path: the math of one
step on one parameter leaf. :class:`Algorithm` bundles that rule with torch's
defaults, validation and state type; the functional transforms
(:mod:`functorch_optim.functional`), the tree runner (:mod:`functorch_optim.runner`)
and the facade (:mod:`functorch_optim.optim`) all run this one definition.

This module holds the contract (the record, :class:`Options`, the conventions below)
and the checks on options that torch's constructors make, so it depends on
:mod:`functorch_optim.core` alone. The array math the rules share lives in
:mod:`functorch_optim.kernels`, which reads options through this module; the two are
split by concern: what a rule is and which options are valid here, how torch's CPU
kernels round there.

The state type
--------------
An algorithm's state is declared once, as its functional state
(``Algorithm.state_type``), a NamedTuple: ``count`` (int32, steps taken), then
torch's per-parameter entries in torch's order, each a tree shaped like the
params (None where torch creates none), except the entries torch keeps as equal
scalars for every parameter (ASGD's ``eta`` and ``mu``, NAdam's
``mu_product``), annotated :data:`ScalarEntry` and kept once. From it
:attr:`Algorithm.state_names` (torch's keys: ``"step"`` first where
``Algorithm.keeps_step``, then the fields after ``count``),
:attr:`Algorithm.scalar_names` (the :data:`ScalarEntry` fields) and the array
entries (the other fields, :func:`functorch_optim.runner.array_names`) are
derived. The runner checks, as it traces them, that ``init``, ``init_scalars``,
``scalars`` and ``step`` return exactly these entries.

Rule conventions
----------------
A rule is split in two: the scalar part of a step, evaluated once per step for all
leaves of a transform (bias corrections, step sizes, the per-parameter scalars
torch keeps such as ASGD's ``eta``), and the per-leaf part, the array math.

``init(param, options) -> dict``
    The per-leaf array state torch would create at its first step: one key per
    array entry of the state type (not ``step``, not the scalar entries). An entry
    torch does not create for this leaf is ``None``.
``init_scalars(options) -> dict``
    The scalar entries torch creates (one key per :data:`ScalarEntry` field),
    equal for every leaf of a transform; ``{}`` for most algorithms.
``scalars(step, scalar_state, options) -> (scalars, new_scalar_state)``
    The scalar part of one torch ``step()``. ``step`` is the count after this step
    (an int32 scalar), ``scalar_state`` the scalar entries before it, ``options``
    the group's options (schedules evaluated). ``scalars`` is the step's per-step
    scalars, a small NamedTuple the algorithm's module declares
    (``AdamStepScalars``), whose fields are arrays (or None, for a field the
    options leave unused); an algorithm without per-step scalars has no
    ``scalars`` function and its rule receives None. With x64 off the values
    pass through :func:`functorch_optim.doubled.rounded_values`, which rounds
    them once and computes them in one kernel.
``step(param, grad, state, options, scalars) -> (new_param, new_state)``
    The per-leaf part of one torch ``step()``: ``state`` holds the array entries,
    ``options`` the group's hyperparameters (schedules evaluated), ``scalars``
    what ``scalars`` returned. ``new_param`` is the parameter torch holds
    afterwards, computed in torch's order of operations; where torch's last op
    adds an increment to the parameter it was given (``param.add_``,
    ``param.addcdiv_``), the rule returns it as a
    :class:`functorch_optim.kernels.Increment` (``add_step``, ``addcdiv_step``),
    which the functional path returns as the update itself.
``options``
    An :class:`Options` of the group's hyperparameters under torch's keyword names.
    Numeric values are Python numbers (constants), JAX scalars (traced, so changing
    them never recompiles) or, already evaluated by the runner, schedules. Flags
    (``amsgrad``, ``maximize``, ...) are Python values. Use :func:`nonzero` where
    torch branches on ``x != 0``.

Per-step scalar names
    One quantity has one name in every algorithm, torch's name for it where torch
    names it: ``step_size`` is the scalar a rule multiplies its update direction
    by, the learning rate of this step (torch's ``step_size`` and ``clr``; NAdam's
    two directions have ``grad_step_size`` and ``exp_avg_step_size``);
    ``bias_correction1``, ``bias_correction2`` and ``bias_correction2_sqrt`` are
    ``1 - beta ** step`` and its root
    (:func:`functorch_optim.kernels.bias_corrections`); ``eta``, ``mu``,
    ``rect``, ``rho_t`` and ``one_minus_beta2_t`` are torch's. A field that holds
    a quantity's negation is ``neg_<name>`` (torch's ``step_size_neg`` and
    ``neg_bias_correction``): the scalar part negates where these rules always
    have, since XLA's simplifier reassociates the products and quotients a
    negation does not separate (``a / (b / c)`` becomes ``a c / b``), so where it
    stands is part of the rounding. What torch's capturable path derives from
    these for each parameter (Adam's denominator ``sqrt(v) /
    (bias_correction2_sqrt * neg_step_size) + eps / neg_step_size``) the rule
    computes, as torch writes it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Protocol, TypeAlias, get_origin, get_type_hints

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .core import is_concrete

Array = jax.Array


class ScheduleFn(Protocol):
    """A schedule as a hyperparameter takes one: a function of the step count (an
    int32 array, traced) to the value. fo's schedules, optax's and a lambda all
    are one. (A protocol rather than a ``Callable`` alias, so that the docs and
    type checkers print its name.)"""

    def __call__(self, count: Array, /) -> ArrayLike: ...


# A numeric hyperparameter of a functional transform: a Python float (a constant),
# a JAX scalar (traced: vmap or differentiate over it) or a schedule.
Hyperparameter = float | Array | ScheduleFn


class Options(dict):
    """A group's hyperparameters, readable as attributes (``options.lr``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclasses.dataclass(frozen=True, eq=False)
class StaticDefault:
    """An integer default as a functional constructor's signature shows it.

    ``optax.inject_hyperparams`` turns every number it finds in a signature into a
    traced hyperparameter. torch's integer defaults are the zeros it branches on
    (``weight_decay=0``: no decay term, so no params read; ``momentum=0``: no
    buffer) and loop counts (Muon's ``ns_steps``): traced, a zero could no longer
    be told apart from a nonzero value, nor a count unrolled. Shown as this
    object, such a default is passed through as it is, a Python constant; it
    prints and compares as its value.
    """

    value: int

    def __repr__(self) -> str:
        return repr(self.value)

    def __eq__(self, other: object) -> bool:
        return self.value == (
            other.value if isinstance(other, StaticDefault) else other
        )

    def __hash__(self) -> int:
        return hash(self.value)


def _unwrapped(value: Any) -> Any:
    return value.value if isinstance(value, StaticDefault) else value


# The marker of a scalar entry in a state type (see the module docstring): an array
# for type checkers, an entry kept once (not a tree shaped like the params) here.
_SCALAR_ENTRY = "scalar entry"
ScalarEntry: TypeAlias = Annotated[Array, _SCALAR_ENTRY]


def _is_scalar_entry(annotation: Any) -> bool:
    return get_origin(annotation) is Annotated and _SCALAR_ENTRY in getattr(
        annotation, "__metadata__", ()
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Algorithm:
    """One torch.optim algorithm: its signature, validation, state and step rule.

    Attributes:
      name: torch's class name (``"Adam"``).
      functional: the public functional constructor (``adam``); its signature is the
        single source of the keyword names and defaults of both APIs.
      init: per-leaf array state constructor, see the module docstring.
      step: per-leaf part of the step rule, see the module docstring.
      validate: raises torch's exception for invalid options (it sees the options as
        given; schedules and traced values are skipped by :func:`require`).
      state_type: the functional state, a NamedTuple and the one declaration of
        the algorithm's state (see the module docstring): ``count``, then torch's
        per-parameter entries in torch's order, the scalar entries annotated
        :data:`ScalarEntry`. None for L-BFGS, which has no per-leaf rule.
      keeps_step: torch keeps a per-parameter ``step`` entry (all but SGD and
        Muon).
      scalars: scalar part of the step rule, see the module docstring.
      init_scalars: scalar state constructor, see the module docstring.
      complex_as_real: run the rule on ``view_as_real`` views of complex leaves, as
        torch does for this algorithm.
      reads_params: ``reads_params(options)`` is False when the update does not
        depend on the parameter values, so ``update`` may be called without params.
      fixed: options torch sets itself and keeps in ``param_groups`` without a
        constructor keyword (AdamW's ``decoupled_weight_decay=True``).
      sparse_grads: how a sparse (``jax.experimental.sparse.BCOO``) gradient is
        taken: ``"native"`` (the rule reads it: SparseAdam), ``"densify"`` (torch
        accepts it and, with a zero gradient leaving a parameter and its state
        unchanged, its result equals the dense step's: SGD, Adagrad) or
        ``"reject"`` (torch raises :meth:`sparse_grad_error`).
      sparse_grad_message: ``message(options)``, torch's error for a sparse
        gradient under these options, or None where torch accepts one.
      elementwise: the step of a leaf acts on each element independently (given the
        leaf's scalar state such as ``step``) and ``init`` depends on the leaf's
        shape and dtype only, so many leaves may be stepped as one flat array
        (:mod:`functorch_optim.packing`).
      state_at_construction: torch creates the per-parameter state in the
        optimizer's constructor, not at the first step (Adagrad).
      step_is_tensor: torch keeps ``step`` as a float32 tensor; False where it keeps
        a Python int (SparseAdam).
      check_params: ``check_params(groups)``, torch's constructor checks on the
        params themselves (``groups``: one list of param leaves per param group;
        SparseAdam: dense, real params only), or None.
    """

    name: str
    functional: Callable[..., Any]
    init: Callable[[Array, Options], dict]
    step: Callable[[Array, Array, dict, Options, Any], tuple[Array, dict]]
    validate: Callable[[Options], None]
    state_type: Any = None
    keeps_step: bool = True
    scalars: Callable[[Array, dict, Options], tuple[Any, dict]] = (
        lambda step, scalar_state, options: (None, {})
    )
    init_scalars: Callable[[Options], dict] = lambda options: {}
    complex_as_real: bool = True
    reads_params: Callable[[Options], bool] = lambda options: nonzero(
        options.get("weight_decay", 0.0)
    )
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sparse_grads: str = "reject"
    sparse_grad_message: Callable[[Options], str | None] | None = None
    elementwise: bool = False
    state_at_construction: bool = False
    step_is_tensor: bool = True
    check_params: Callable[[list], None] | None = None
    # (state_names, scalar_names), derived from state_type by __post_init__
    _names: tuple[tuple[str, ...], tuple[str, ...]] = dataclasses.field(
        init=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.state_type is None:
            object.__setattr__(self, "_names", ((), ()))
            return
        fields = self.state_type._fields
        if fields[:1] != ("count",):
            raise TypeError(
                f"{self.name}'s state type {self.state_type.__name__} must start "
                f"with count, got the fields {fields}"
            )
        hints = get_type_hints(self.state_type, include_extras=True)
        scalar_names = tuple(f for f in fields[1:] if _is_scalar_entry(hints[f]))
        state_names = ("step",) * self.keeps_step + fields[1:]
        object.__setattr__(self, "_names", (state_names, scalar_names))
        # The functional's signature shows its integer defaults as StaticDefault,
        # so optax.inject_hyperparams keeps them static.
        signature = inspect.signature(self.functional)
        parameters = [
            p.replace(default=StaticDefault(p.default)) if type(p.default) is int else p
            for p in signature.parameters.values()
        ]
        # inspect reads a function's __signature__, which typeshed does not declare
        self.functional.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=parameters
        )

    @property
    def state_names(self) -> tuple[str, ...]:
        """torch's per-parameter state keys, in torch's order: ``"step"`` where
        torch keeps it (:attr:`keeps_step`), then the state type's fields after
        ``count``. Empty for L-BFGS (no state type: its state is global,
        :data:`functorch_optim.lbfgs.TORCH_STATE`)."""
        return self._names[0]

    @property
    def scalar_names(self) -> tuple[str, ...]:
        """The state type's :data:`ScalarEntry` fields (the keys of
        ``init_scalars``' result), in its order."""
        return self._names[1]

    @property
    def defaults(self) -> dict[str, Any]:
        """torch's constructor keywords and defaults, in torch's order."""
        signature = inspect.signature(self.functional).parameters
        return {name: _unwrapped(p.default) for name, p in signature.items()} | dict(
            self.fixed
        )

    def sparse_grad_error(self, options: Options) -> str | None:
        """torch's error for a sparse gradient with these options, if it has one."""
        if self.sparse_grad_message is not None:
            return self.sparse_grad_message(options)
        if self.sparse_grads == "reject":
            return f"{self.name} does not support sparse gradients"
        return None

    def options(self, given: Mapping[str, Any]) -> Options:
        """Fill defaults, check unknown names, and validate as torch's constructor."""
        defaults = self.defaults
        given = {k: _unwrapped(v) for k, v in given.items()}
        unknown = set(given) - set(defaults)
        if unknown:
            raise TypeError(
                f"{self.name} got unexpected keyword argument(s) {sorted(unknown)}"
            )
        options = Options({**defaults, **given, **self.fixed})
        check_scalar_lr(options.get("lr"))
        self.validate(options)
        return options


# --- validation helpers --------------------------------------------------------

# How torch's messages name a hyperparameter when not as "<name> value".
_LABELS = {"lr": "learning rate", "eps": "epsilon value"}


def known_value(x: Any) -> Any:
    """The value of ``x`` when it is knowable now, else None.

    Python numbers are returned as they are; concrete JAX/NumPy scalars as Python
    numbers; schedules (callables) and traced values give None, so validation skips
    what it cannot see, as torch skips nothing it can. Anything else (a string, a
    list) is returned as it is, so the check compares it and raises the
    ``TypeError`` torch's own comparison raises.
    """
    if callable(x) or x is None:
        return None
    if hasattr(x, "shape"):
        if getattr(x, "size", 1) == 1 and is_concrete(x):
            return float(jnp.asarray(x).reshape(()))
        return None
    return x


def require(ok: Callable[[Any], bool], value: Any, message: str) -> None:
    """Raise ``ValueError(message)`` when ``value`` is known and ``ok(value)`` fails."""
    v = known_value(value)
    if v is not None and not ok(v):
        raise ValueError(message)


def check_scalar_lr(lr: Any) -> None:
    """torch accepts a tensor lr only when it has exactly one element."""
    if hasattr(lr, "shape") and not callable(lr) and getattr(lr, "size", 1) != 1:
        raise ValueError("Tensor lr must be 1-element")


def check_fused_flags(options: Options) -> None:
    """torch's checks on ``fused`` for the algorithms that have a fused kernel."""
    if options.get("fused"):
        if options.get("differentiable"):
            raise RuntimeError("`fused` does not support `differentiable`")
        if options.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def require_nonnegative(o: Options, *names: str) -> None:
    """torch's ``if not 0.0 <= x: raise ValueError(f"Invalid ...: {x}")``, in order."""
    for name in names:
        value = o[name]
        label = _LABELS.get(name, f"{name} value")
        require(lambda v: 0.0 <= v, value, f"Invalid {label}: {value}")


def validate_adam_like(o: Options, *extra_nonnegative: str) -> None:
    """The constructor checks of Adamax, NAdam and RAdam, in torch's order."""
    require_nonnegative(o, "lr", "eps")
    require_betas(o)
    require_nonnegative(o, "weight_decay", *extra_nonnegative)
    check_foreach_differentiable(o)


def require_betas(o: Options) -> None:
    """torch's ``if not 0.0 <= beta < 1.0`` for each of ``betas``."""
    for index, beta in enumerate(o.betas):
        require(
            lambda v: 0.0 <= v < 1.0,
            beta,
            f"Invalid beta parameter at index {index}: {beta}",
        )


def check_foreach_differentiable(o: Options) -> None:
    """torch's foreach kernels refuse ``differentiable=True`` (at its first step)."""
    if o.get("foreach") and o.get("differentiable"):
        raise AssertionError("_foreach ops don't support autograd")


def nonzero(x: Any) -> bool:
    """torch's ``x != 0`` branch, decided at trace time.

    Only a Python number equal to zero counts as zero: a traced or array value may
    be nonzero at run time, and applying the term with a zero value gives the same
    result for finite inputs.
    """
    return not (isinstance(x, (int, float)) and x == 0)

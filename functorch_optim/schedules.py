r"""torch's learning-rate schedules as pure ``count -> value`` functions.

Each function here returns a schedule: a function of the step count ``t`` (an int or
an int array, traced or not) giving the value torch's scheduler of the same name
puts in ``param_group['lr']`` after ``t`` calls of ``scheduler.step()``, that is the
value used by the optimizer's step ``t + 1``. Schedules are jnp-traceable, so they
serve as any hyperparameter of the functional transforms under ``jax.jit``: the
runner evaluates a callable option at the leaf's pre-step count, the same count
torch's scheduler has reached when that step runs.

    tx = fo.sgd(lr=fo.cosine_annealing_lr(0.1, T_max=100), momentum=0.9)

A schedule is a :class:`Schedule`: a function of the count that also records how
torch's scheduler of the same name is built, so its position saves as that
scheduler's ``state_dict()`` (:meth:`Schedule.torch_state_dict`) and resumes from
one (:meth:`Schedule.count_from_torch`), a jitted loop resuming a torch run or a
torch run resuming a jitted one. A torch scheduler stepped once per epoch rather
than once per optimizer step is :func:`per_epoch` of its schedule.

The shapes are computed by :mod:`functorch_optim.schedule_math`, which the stateful
schedulers of :mod:`functorch_optim.lr_scheduler` use too (Python floats there, jnp
here), so both APIs share one definition of each.

torch's schedulers compute the lr in Python double, and its optimizers use it in
double scalar arithmetic (``lr / bias_correction1``) before one rounding. With x64
on, the schedules compute in float64. With x64 off, they compute the same closed
forms in float32 pairs (:mod:`functorch_optim.doubled`, to a few units of
``2**-48``): :meth:`Schedule.exact_value` gives that pair as a
:class:`~functorch_optim.doubled.Float`, which the functional optimizers' scalar
arithmetic takes as torch takes its double, and calling the schedule gives its
float32 rounding, torch's lr as a float32 tensor would hold it. The schedules of
user functions (:func:`lambda_lr`, :func:`multiplicative_lr`, a ``scale_fn``)
stay float32 there.

:func:`reduce_on_plateau` (defined in :mod:`functorch_optim.plateau`) is a gradient
transformation rather than a schedule, because its value depends on the losses seen:
it reads the loss through ``update(..., value=loss)`` and scales the updates.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp

from . import doubled, lr_scheduler
from . import schedule_math as sm
from .core import scalar_dtype
from .doubled import Doubled
from .plateau import reduce_on_plateau

__all__ = [
    "Schedule",
    "per_epoch",
    "lambda_lr",
    "multiplicative_lr",
    "step_lr",
    "multi_step_lr",
    "constant_lr",
    "linear_lr",
    "exponential_lr",
    "polynomial_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "cyclic_momentum",
    "one_cycle_lr",
    "one_cycle_momentum",
    "sequential_lr",
    "chained_lr",
    "reduce_on_plateau",
]

CountFunction = Callable[[Any], Any]
# a closed form's value at a count, computed with schedule_math's ops (JAX, PAIRS)
OpsFunction = Callable[[Any, Any], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    r"""A schedule ``count -> value`` that knows the torch scheduler it reproduces.

    Calling it calls ``fn``, so it serves wherever a function of the count does
    (a hyperparameter, ``jax.jit``, ``jax.vmap``, ``optax.inject_hyperparams``).
    The functions of this module return one, recording how torch's scheduler of
    the same name is built, so that its position moves to and from that
    scheduler's ``state_dict()``: :meth:`torch_state_dict` writes it,
    :meth:`count_from_torch` reads it.

    Counts map one to one: the functional optimizer evaluates its schedule at its
    step count :math:`c` (the steps taken), and torch's scheduler, stepped once
    after each ``optimizer.step()``, has then taken :math:`c` steps
    (``last_epoch`` :math:`= c`): both use ``schedule(c)`` for step :math:`c + 1`.
    A torch scheduler stepped once per epoch maps to :func:`per_epoch`.

    With x64 off, the lr schedules of this module also compute their value as a
    float32 pair (``pair_fn``, :mod:`functorch_optim.doubled`), to double
    accuracy: :meth:`exact_value` gives it, and calling the schedule gives its
    float32 rounding (with an integer count; a float count takes ``fn``).

    Attributes:
      fn: the function of the count (in the scalar dtype: float64 with x64 on).
      torch_class: the name of torch's scheduler class; None where none
        corresponds (a momentum schedule, or a wrapped plain function).
      torch_args: that class's constructor arguments, but the optimizer (and a
        container's schedulers).
      lr: the optimizer's lr torch's scheduler starts from (its ``initial_lr``).
      children: the schedules of :func:`sequential_lr` and :func:`chained_lr`.
      steps_per_epoch: optimizer steps per ``scheduler.step()`` (:func:`per_epoch`).
      pair_fn: the function of an integer count giving the value as a
        :class:`~functorch_optim.doubled.Doubled`, used with x64 off; None where
        the value is ``fn``'s float32 (a user function's).

    Example:
      >>> lr = fo.step_lr(1e-3, step_size=10)  # torch_sched: StepLR(torch_opt, 10)
      >>> tx = fo.adam(lr=lr)
      >>> torch_sched.load_state_dict(lr.torch_state_dict(45))
      >>> torch_sched.last_epoch, torch_sched.get_last_lr()
      (45, [1.0000000000000002e-07])
    """

    fn: CountFunction
    torch_class: str | None = None
    torch_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lr: Any = None
    children: tuple[CountFunction, ...] = ()
    steps_per_epoch: int = 1
    pair_fn: CountFunction | None = None

    def __call__(self, count):
        if self.pair_fn is None or not _pairs_for(count):
            return self.fn(count)
        return jnp.asarray(doubled.rounded(self.pair_fn(count)), jnp.float32)

    def exact_value(self, count):
        """The value at ``count`` as torch's Python double, for scalar arithmetic.

        With x64 off, a :class:`~functorch_optim.doubled.Float`: the pair of
        ``pair_fn`` (within a few units of ``2**-48`` of the closed form), or
        ``fn``'s float32 value exactly where there is none (a user function's), so
        that ``lr / bias_correction1`` rounds once, as torch's does. With x64 on,
        the float64 value of calling the schedule.
        """
        if scalar_dtype() != jnp.float32:
            return self(count)
        return doubled.Float.of_pair(self._pair(count))

    def _pair(self, count) -> Doubled:
        if self.pair_fn is not None and _pairs_for(count):
            return self.pair_fn(count)
        return doubled.of(jnp.asarray(self.fn(count), jnp.float32))

    def torch_state_dict(self, count) -> dict[str, Any]:
        r"""The ``state_dict()`` of this schedule's torch scheduler at ``count``.

        Equal, key for key, to the ``state_dict()`` of the torch scheduler built
        as the schedule was, on an optimizer with one param group, after
        :math:`\lfloor c / N \rfloor` calls of ``step()`` (:math:`N` =
        ``steps_per_epoch``, 1 but for :func:`per_epoch`), nested
        ``_schedulers`` and torch's bookkeeping (``_step_count``, ``_is_initial``,
        ...) included, so that ``torch_scheduler.load_state_dict`` continues the
        run. Torch reaches some lrs by repeated multiplication (its chainable
        ``step()``); here they are the closed forms, equal to rounding. The lrs
        torch goes on from are the optimizer's ``param_groups``, which
        :func:`functorch_optim.interop.torch_state_dict` writes at the schedule's
        value.

        CyclicLR and OneCycleLR also schedule the momentum, which
        :func:`cyclic_momentum` / :func:`one_cycle_momentum` are here: the state
        of :func:`cyclic_lr` / :func:`one_cycle_lr` leaves out the momentum
        entries (``cycle_momentum``, ``use_beta1``, ``base_momentums``,
        ``max_momentums``), so a torch scheduler loading it keeps its own.

        Args:
          count: the optimizer's step count :math:`c`, an int or a concrete
            integer array (a functional state's ``count``).

        Returns:
          A dict in the format of torch's scheduler's ``state_dict()``.

        Raises:
          ValueError: no torch scheduler corresponds, or ``count`` is negative.

        Example:
          >>> sd = fo.exponential_lr(0.1, gamma=0.5).torch_state_dict(3)
          >>> sd["last_epoch"], sd["_step_count"], sd["_last_lr"]
          (3, 4, [0.0125])
        """
        count = operator.index(count)
        if count < 0:
            raise ValueError(f"Expected a count >= 0, but got {count}")
        state = _built_state(self)
        epoch = count // self.steps_per_epoch
        if epoch > 0:  # at 0 the state as built is torch's
            _move(state, self, epoch)
        return state

    def count_from_torch(
        self, state_dict: Mapping[str, Any], *, group: int | None = None
    ) -> int:
        r"""The count at which this schedule continues a torch scheduler's run.

        The count is torch's position, ``last_epoch`` (the epoch its schedulers
        have reached for a ChainedScheduler), times ``steps_per_epoch``: for
        :func:`per_epoch`, the count at the start of the epoch torch has reached
        (see there). The dict must be the state of the torch scheduler built as
        the schedule was: its class's entries, each equal to the schedule's
        (numbers to float32 precision); the functions torch saves as None
        (``lr_lambdas``, a ``scale_fn``) and the momentum entries of CyclicLR and
        OneCycleLR are not compared.

        Args:
          state_dict: a torch scheduler's ``state_dict()``.
          group: the param group the schedule is for, in a state with several
            (``base_lrs`` has one entry per group); needed only where the
            groups' entries differ.

        Returns:
          The count :math:`c`, a Python int.

        Raises:
          ValueError: an entry differs from the schedule's (naming both values),
            the dict is of another class, or the groups differ and ``group`` is
            None.

        Example:
          >>> for _ in range(3):
          ...     torch_opt.step()
          ...     torch_sched.step()
          >>> fo.step_lr(1e-3, step_size=10).count_from_torch(torch_sched.state_dict())
          3
        """
        _check_built_alike(
            self, _built_state(self), state_dict, group, self.torch_class
        )
        return _epoch(state_dict) * self.steps_per_epoch


def per_epoch(schedule: CountFunction, steps_per_epoch: int) -> Schedule:
    r"""``schedule`` stepped once per epoch of ``steps_per_epoch`` optimizer steps:

    .. math::
        \eta_c = S(\lfloor c / N \rfloor)

    at the optimizer's step count :math:`c`, for :math:`S` = ``schedule`` and
    :math:`N` = ``steps_per_epoch``: the form of a torch loop that calls
    ``scheduler.step()`` after each epoch of :math:`N` batches.

    Its torch position is the epoch: :meth:`Schedule.torch_state_dict` at count
    :math:`c` is the scheduler's state after :math:`\lfloor c / N \rfloor`
    epochs, and :meth:`Schedule.count_from_torch` gives the count at the start of
    the epoch torch has reached, ``last_epoch * N``, since torch's scheduler does
    not record the batch within its epoch. A checkpoint taken at the end of an
    epoch (where torch loops step their scheduler) resumes there exactly; for one
    taken mid-epoch, the optimizer's count is the one to resume at (the
    functional state's ``count``, which
    :func:`functorch_optim.interop.load_torch_state` reads from torch's
    per-parameter ``step``), on the same value until the epoch ends.

    Args:
      schedule: a schedule of the epoch.
      steps_per_epoch: :math:`N`, a positive int.

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> lr = fo.schedules.per_epoch(fo.step_lr(0.1, 30), steps_per_epoch=390)
      >>> tx = fo.sgd(lr=lr, momentum=0.9)
      >>> lr.torch_state_dict(390 * 45 + 7)["last_epoch"]
      45
    """
    if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
        raise ValueError(
            f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}"
        )
    base = _as_schedule(schedule)
    pair_fn = base.pair_fn
    return dataclasses.replace(
        base,
        fn=lambda count: base.fn(count // steps_per_epoch),
        steps_per_epoch=base.steps_per_epoch * steps_per_epoch,
        pair_fn=None
        if pair_fn is None
        else lambda count: pair_fn(jnp.asarray(count) // steps_per_epoch),
    )


# --- torch's scheduler state ---------------------------------------------------------

# Entries of torch's scheduler state that say where the run is, not how the
# scheduler was built.
_POSITION = frozenset(
    {
        "last_epoch",
        "_step_count",
        "_last_lr",
        "_is_initial",
        "_get_lr_called_within_step",
        "T_cur",
        "T_i",
    }
)
# CyclicLR's and OneCycleLR's momentum half, which an lr schedule leaves open.
_MOMENTUM = frozenset(
    {"cycle_momentum", "use_beta1", "base_momentums", "max_momentums"}
)
# Functions, which torch saves as None (or a callable object's __dict__).
_FUNCTIONS = frozenset({"lr_lambdas", "_scale_fn_custom"})
# Lists of one entry per param group.
_PER_GROUP = frozenset({"base_lrs", "max_lrs"})


class _OneGroupOptimizer:
    """What a scheduler reads of an optimizer: one param group with the lr."""

    def __init__(self, lr) -> None:
        lr = None if lr is None else float(lr)
        self.param_groups: list[dict[str, Any]] = [{"lr": lr}]
        self.defaults = {"lr": lr}

    def step(self) -> None:
        """Never called: a scheduler only wraps it."""


def _with_torch_scheduler(schedule: CountFunction) -> Schedule:
    if not isinstance(schedule, Schedule) or schedule.torch_class is None:
        raise ValueError(
            f"{schedule!r} has no torch scheduler: the lr schedules of "
            "functorch_optim.schedules have one (a momentum schedule is saved with "
            "its lr schedule's CyclicLR or OneCycleLR)"
        )
    return schedule


def _children(schedule: Schedule) -> list[Schedule]:
    """The schedules of a SequentialLR or ChainedScheduler, checked to have torch
    schedulers that it can step."""
    children = [_with_torch_scheduler(child) for child in schedule.children]
    if any(child.steps_per_epoch != 1 for child in children):
        raise ValueError(
            f"torch's {schedule.torch_class} steps its schedulers together: "
            "apply per_epoch to it, not to its schedules"
        )
    return children


def _torch_scheduler(schedule: CountFunction, optimizer) -> lr_scheduler.LRScheduler:
    """The facade's twin of torch's scheduler (torch's format, torch's arithmetic),
    built as a torch script builds it."""
    schedule = _with_torch_scheduler(schedule)
    cls = getattr(lr_scheduler, cast(str, schedule.torch_class))
    if not schedule.children:
        return cls(optimizer, **schedule.torch_args)
    children = _children(schedule)
    schedulers = [_torch_scheduler(child, optimizer) for child in children]
    if schedule.torch_class == "ChainedScheduler":
        if any(child.children for child in children):
            raise ValueError("torch's ChainedScheduler here chains single schedulers")
        return cls(schedulers, optimizer=optimizer)
    lrs = [float(child.lr) for child in children]
    if len(set(lrs)) > 1:
        # torch's schedulers of one optimizer all start from its initial_lr
        raise ValueError(
            f"torch's SequentialLR runs its schedulers from one initial lr; the "
            f"schedules start from {lrs}"
        )
    return cls(optimizer, schedulers, **schedule.torch_args)


def _built_state(schedule: Schedule) -> dict[str, Any]:
    """torch's state of the schedule's scheduler as built (after 0 steps)."""
    scheduler = _torch_scheduler(schedule, _OneGroupOptimizer(schedule.lr))
    return _without_momentum(scheduler.state_dict())


def _without_momentum(state: dict[str, Any]) -> dict[str, Any]:
    state = {k: v for k, v in state.items() if k not in _MOMENTUM}
    if "_schedulers" in state:
        state["_schedulers"] = [_without_momentum(s) for s in state["_schedulers"]]
    return state


def _lr_at(schedule: Schedule, epoch: int) -> float:
    # torch keeps its lrs as Python floats: evaluate in double, also with x64 off.
    with jax.enable_x64(True):
        return float(schedule(epoch * schedule.steps_per_epoch))


def _move(state: dict[str, Any], schedule: Schedule, epoch: int) -> None:
    """Set the position entries of a state as built to those after ``epoch`` steps."""
    if schedule.torch_class == "SequentialLR":
        _move_sequential(state, schedule, epoch)
    elif schedule.torch_class == "ChainedScheduler":
        _move_chained(state, schedule, epoch)
    else:
        _set_position(state, schedule, epoch, _lr_at(schedule, epoch))


def _set_position(state: dict[str, Any], schedule: Schedule, epoch: int, lr) -> None:
    state["last_epoch"] = epoch
    state["_last_lr"] = [lr]
    if schedule.torch_class == "CosineAnnealingWarmRestarts":
        # Its step() advances T_cur and T_i and leaves _step_count as built.
        t_cur, t_i = epoch, schedule.torch_args["T_0"]
        if schedule.torch_args["T_mult"] == 1:
            t_cur %= t_i
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= schedule.torch_args["T_mult"]
        state["T_cur"], state["T_i"] = t_cur, t_i
    else:
        state["_step_count"] = 1 + epoch  # the constructor's step and epoch more


def _move_sequential(state: dict[str, Any], schedule: Schedule, epoch: int) -> None:
    # A scheduler that has finished rests on the epoch before the next milestone;
    # the current one has run since its milestone (restarted at 0 there, its
    # _step_count not counting the restart); later ones are as built.
    milestones = schedule.torch_args["milestones"]
    children = _children(schedule)
    starts = [0, *milestones]
    current = bisect_right(milestones, epoch)
    for i in range(current + 1):
        end = epoch if i == current else milestones[i] - 1
        if end >= starts[i]:  # a scheduler between two equal milestones never runs
            _move(state["_schedulers"][i], children[i], end - starts[i])
    state["last_epoch"] = epoch
    state["_last_lr"] = state["_schedulers"][current]["_last_lr"]


def _move_chained(state: dict[str, Any], schedule: Schedule, epoch: int) -> None:
    if epoch == 0:  # as built: each scheduler's constructor has scaled the lr
        return
    # Each step runs the schedulers in order, each scaling the group's lr by its
    # factor's change: scheduler i leaves factors 0..i at `epoch`, the later ones
    # still at `epoch - 1`.
    factors = _children(schedule)
    now = [_lr_at(factor, epoch) for factor in factors]
    before = [_lr_at(factor, epoch - 1) for factor in factors]
    for i, factor in enumerate(factors):
        lr = float(schedule.lr) * math.prod(now[: i + 1]) * math.prod(before[i + 1 :])
        _set_position(state["_schedulers"][i], factor, epoch, lr)
    state["_last_lr"] = state["_schedulers"][-1]["_last_lr"]


def _epoch(state: Mapping[str, Any]) -> int:
    if "last_epoch" in state:
        return state["last_epoch"]
    epochs = {child["last_epoch"] for child in state["_schedulers"]}
    if len(epochs) != 1:
        raise ValueError(
            "The ChainedScheduler's schedulers are at different epochs "
            f"{sorted(epochs)}"
        )
    return epochs.pop()


def _check_built_alike(schedule, built, given, group, where) -> None:
    """Raise unless ``given`` is the state of a scheduler built as ``built`` was."""
    ignored = _POSITION | _MOMENTUM | _FUNCTIONS
    keys, given_keys = built.keys() - ignored, given.keys() - ignored
    if keys != given_keys:
        raise ValueError(
            f"The state dict is not a {where}'s: it has {sorted(given_keys - keys)} "
            f"and lacks {sorted(keys - given_keys)}"
        )
    for key in sorted(keys):
        ours, theirs = built[key], given[key]
        if key == "_schedulers":
            if len(ours) != len(theirs):
                raise ValueError(
                    f"{where} has {len(ours)} schedulers, the state dict's "
                    f"{len(theirs)}"
                )
            for i, child in enumerate(_children(schedule)):
                name = f"{where}'s scheduler {i} ({child.torch_class})"
                _check_built_alike(child, ours[i], theirs[i], group, name)
            continue
        if key in _PER_GROUP:
            ours, theirs = ours[0], _group_entry(theirs, key, group)
        if not _same(ours, theirs):
            raise ValueError(
                f"{where}'s {key}: the schedule has {ours!r}, the state dict has "
                f"{theirs!r}"
            )


def _group_entry(values: Sequence, key: str, group: int | None):
    if group is not None:
        if not 0 <= group < len(values):
            raise ValueError(
                f"group={group}, but the state dict has {len(values)} param groups"
            )
        return values[group]
    if any(not _same(value, values[0]) for value in values[1:]):
        raise ValueError(
            f"The state dict's {key} differ between its {len(values)} param groups "
            f"({list(values)}): pass group= to say which the schedule is for"
        )
    return values[0]


def _same(a, b) -> bool:
    # Numbers to float32 precision: an lr may have been a float32 on either side.
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    except (TypeError, ValueError):
        return bool(a == b)


def _int_count(count) -> jax.Array:
    """The count as a user's function of it sees it: JAX's default integer type,
    so its arithmetic with Python numbers is in the default float type."""
    return jnp.asarray(count).astype(jax.dtypes.canonicalize_dtype(int))


def _float_count(count) -> jax.Array:
    return jnp.asarray(count).astype(scalar_dtype())


def _pairs_for(count) -> bool:
    """Whether a schedule computes its value at ``count`` in pairs: with x64 off,
    for an integer count."""
    if scalar_dtype() != jnp.float32 or isinstance(count, bool):
        return False
    return isinstance(count, int) or jnp.issubdtype(jnp.result_type(count), jnp.integer)


def _count(count, ops):
    """The count as the closed forms take it: a float in the scalar dtype
    (:data:`~functorch_optim.schedule_math.JAX`), or an exact pair keeping its
    int32 (:data:`~functorch_optim.schedule_math.PAIRS`)."""
    return sm.PairCount(count) if ops is sm.PAIRS else _float_count(count)


def _closed_form(
    value: OpsFunction, torch_class: str | None, torch_args, lr
) -> Schedule:
    """The schedule of ``value(count, ops)``: jnp in the scalar dtype, and pairs
    with x64 off."""
    return Schedule(
        lambda count: value(count, sm.JAX),
        torch_class,
        torch_args,
        lr,
        pair_fn=lambda count: value(count, sm.PAIRS),
    )


def _pair_value(schedule: CountFunction, count) -> Doubled:
    """A (child) schedule's value as a pair: a function's float32 exactly."""
    return _as_schedule(schedule)._pair(count)


def _as_schedule(schedule: CountFunction) -> Schedule:
    """``schedule``, a plain function of the count wrapped as a :class:`Schedule`
    (no torch class, its value the function's)."""
    return schedule if isinstance(schedule, Schedule) else Schedule(schedule)


def lambda_lr(lr, lr_lambda: CountFunction) -> Schedule:
    r"""``torch.optim.lr_scheduler.LambdaLR``: :math:`\eta_t = \eta_0 \lambda(t)`.

    Args:
      lr: the initial value :math:`\eta_0` (torch's ``initial_lr``).
      lr_lambda: a jnp-traceable function of the count giving the factor. It gets
        the count as an integer array of JAX's default integer type (int64 under
        x64), so ``t / n`` divides in the default float type as torch's Python
        ``int / int`` does in double (an int32 count would divide in float32).
        A lambda with a Python ``if`` on the count cannot be traced: write it
        with ``jnp.where``, or use the facade's ``fo.lr_scheduler.LambdaLR``.

    With x64 off the value is the float32 the function computes (torch's is a
    double): a user function has no pair form, so :meth:`Schedule.exact_value`
    gives that float32, and the lr is within an ulp or so of torch's rather than
    rounded as torch's double.

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> tx = fo.sgd(lr=fo.lambda_lr(0.1, lambda t: 0.95**t))
    """
    return Schedule(
        lambda count: lr * lr_lambda(_int_count(count)),
        "LambdaLR",
        {"lr_lambda": lr_lambda},
        lr,
    )


def multiplicative_lr(lr, lr_lambda: CountFunction) -> Schedule:
    r"""``MultiplicativeLR``: :math:`\eta_t = \eta_0 \prod_{k=1}^{t} \lambda(k)`.

    The product has no closed form for a general ``lr_lambda``, so the schedule
    runs a loop of ``t`` iterations (a ``lax.fori_loop``) at each evaluation.
    With x64 off it multiplies in float32, as :func:`lambda_lr` computes (no pair
    form: :meth:`Schedule.exact_value` gives the float32), so its rounding errors
    add up over the ``t`` factors where torch's double's do not show.

    Args:
      lr: the initial value :math:`\eta_0`.
      lr_lambda: a jnp-traceable function of the count giving the factor of step
        ``k`` (torch calls it with ``k = 1, 2, ...``).

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> tx = fo.adam(lr=fo.multiplicative_lr(1e-3, lambda k: 0.99))
    """

    def schedule(count):
        t = _int_count(count)
        return jax.lax.fori_loop(
            1, t + 1, lambda k, acc: acc * lr_lambda(k), jnp.asarray(lr, scalar_dtype())
        )

    return Schedule(schedule, "MultiplicativeLR", {"lr_lambda": lr_lambda}, lr)


def step_lr(lr, step_size: int, gamma=0.1) -> Schedule:
    r"""``StepLR``: :math:`\eta_t = \eta_0 \gamma^{\lfloor t / s \rfloor}`.

    Args:
      lr: the initial value :math:`\eta_0`.
      step_size: the period :math:`s` of the decay.
      gamma: the factor :math:`\gamma` applied every ``step_size`` steps.

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> tx = fo.sgd(lr=fo.step_lr(0.1, step_size=30))
    """
    return _closed_form(
        lambda count, ops: sm.step_value(lr, _count(count, ops), step_size, gamma),
        "StepLR",
        {"step_size": step_size, "gamma": gamma},
        lr,
    )


def multi_step_lr(lr, milestones: Sequence[int], gamma=0.1) -> Schedule:
    r"""``MultiStepLR``: :math:`\eta_t = \eta_0 \gamma^{\#\{m \in M : m \le t\}}`.

    A milestone listed twice counts twice, as in torch.

    Args:
      lr: the initial value :math:`\eta_0`.
      milestones: the counts :math:`M` at which the value is multiplied by gamma.
      gamma: the decay factor.

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> tx = fo.sgd(lr=fo.multi_step_lr(0.1, milestones=[30, 80]))
    """
    points = sorted(milestones)
    return _closed_form(
        lambda count, ops: sm.multi_step_value(
            lr, _count(count, ops), points, gamma, ops
        ),
        "MultiStepLR",
        {"milestones": points, "gamma": gamma},
        lr,
    )


def constant_lr(lr, factor=1.0 / 3, total_iters=5) -> Schedule:
    r"""``ConstantLR``: :math:`\eta_t = \eta_0 f` for :math:`t < T`, then
    :math:`\eta_0`.

    Args:
      lr: the initial value :math:`\eta_0`.
      factor: the factor :math:`f \in [0, 1]` applied before ``total_iters``.
      total_iters: the count :math:`T` at which the factor is removed.

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> tx = fo.adam(lr=fo.constant_lr(1e-3, factor=0.5, total_iters=100))
    """
    sm.check_constant_factor(factor)
    return _closed_form(
        lambda count, ops: sm.constant_value(
            lr, _count(count, ops), factor, total_iters, ops
        ),
        "ConstantLR",
        {"factor": factor, "total_iters": total_iters},
        lr,
    )


def linear_lr(lr, start_factor=1.0 / 3, end_factor=1.0, total_iters=5) -> Schedule:
    r"""``LinearLR``: :math:`\eta_t = \eta_0 (f_s + (f_e - f_s) \min(t, T) / T)`.

    Args:
      lr: the initial value :math:`\eta_0`.
      start_factor: :math:`f_s \in (0, 1]`, the factor at count 0.
      end_factor: :math:`f_e \in [0, 1]`, the factor from ``total_iters`` on.
      total_iters: :math:`T`, the length of the ramp.

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> tx = fo.adamw(lr=fo.linear_lr(3e-4, start_factor=0.01, total_iters=1000))
    """
    sm.check_linear_factors(start_factor, end_factor)
    return _closed_form(
        lambda count, ops: sm.linear_value(
            lr, _count(count, ops), start_factor, end_factor, total_iters, ops
        ),
        "LinearLR",
        {
            "start_factor": start_factor,
            "end_factor": end_factor,
            "total_iters": total_iters,
        },
        lr,
    )


def exponential_lr(lr, gamma) -> Schedule:
    r"""``ExponentialLR``: :math:`\eta_t = \eta_0 \gamma^t`.

    Example:
      >>> tx = fo.sgd(lr=fo.exponential_lr(0.1, gamma=0.99))
    """
    return _closed_form(
        lambda count, ops: sm.exponential_value(lr, _count(count, ops), gamma),
        "ExponentialLR",
        {"gamma": gamma},
        lr,
    )


def polynomial_lr(lr, total_iters=5, power=1.0) -> Schedule:
    r"""``PolynomialLR``: :math:`\eta_t = \eta_0 (1 - \min(t, T) / T)^p`.

    Args:
      lr: the initial value :math:`\eta_0`.
      total_iters: :math:`T`, the count at which the value reaches 0.
      power: the power :math:`p` of the polynomial.

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> tx = fo.sgd(lr=fo.polynomial_lr(0.1, total_iters=1000, power=2.0))
    """
    return _closed_form(
        lambda count, ops: sm.polynomial_value(
            lr, _count(count, ops), total_iters, power, ops
        ),
        "PolynomialLR",
        {"total_iters": total_iters, "power": power},
        lr,
    )


def cosine_annealing_lr(lr, T_max, eta_min=0.0) -> Schedule:
    r"""``CosineAnnealingLR``, closed form:

    .. math::
        \eta_t = \eta_{min} + \tfrac12 (\eta_0 - \eta_{min})
                 (1 + \cos(\pi t / T_{max}))

    torch's scheduler computes this value recursively; the two agree to rounding
    (and keep agreeing past ``T_max``, where both rise again).

    Example:
      >>> tx = fo.sgd(lr=fo.cosine_annealing_lr(0.1, T_max=100))
    """
    return _closed_form(
        lambda count, ops: sm.cosine_value(lr, eta_min, _count(count, ops), T_max, ops),
        "CosineAnnealingLR",
        {"T_max": T_max, "eta_min": eta_min},
        lr,
    )


def cosine_annealing_warm_restarts(lr, T_0, T_mult=1, eta_min=0.0) -> Schedule:
    r"""``CosineAnnealingWarmRestarts`` (SGDR):

    .. math::
        \eta_t = \eta_{min} + \tfrac12 (\eta_0 - \eta_{min})
                 (1 + \cos(\pi T_{cur} / T_i))

    where the cycles have lengths :math:`T_0, T_0 m, T_0 m^2, \dots` (:math:`m` =
    ``T_mult``) and :math:`T_{cur}` is the count since the last restart. The cycle
    of a count is found by comparing it with the exact integer cycle boundaries,
    so restarts fall on the same steps as torch's incremental ``step()``.

    Example:
      >>> tx = fo.sgd(lr=fo.cosine_annealing_warm_restarts(0.1, T_0=10, T_mult=2))
    """
    sm.check_warm_restarts(T_0, T_mult, eta_min)
    # Start and length of every cycle that begins below 2**31 (the int32 counts).
    starts, lengths = [0], [T_0]
    if T_mult > 1:
        while starts[-1] + lengths[-1] < 2**31:
            starts.append(starts[-1] + lengths[-1])
            lengths.append(lengths[-1] * T_mult)

    def schedule(count, ops):
        t = _count(count, ops)
        if T_mult == 1:
            t_cur, t_i = t % T_0, T_0 if ops is sm.PAIRS else float(T_0)
        elif ops is sm.PAIRS:
            # the starts are int32s; the last length may not be: pairs
            cycle = ops.count_reached(starts[1:], t).count
            t_cur = sm.PairCount(t.count - jnp.asarray(starts, jnp.int32)[cycle])
            t_i = doubled.lookup(lengths, cycle)
        else:
            cycle = ops.count_reached(starts[1:], t).astype(jnp.int32)
            t_cur = t - jnp.asarray(starts, scalar_dtype())[cycle]
            t_i = jnp.asarray(lengths, scalar_dtype())[cycle]
        return sm.cosine_value(lr, eta_min, t_cur, t_i, ops)

    return _closed_form(
        schedule,
        "CosineAnnealingWarmRestarts",
        {"T_0": T_0, "T_mult": T_mult, "eta_min": eta_min},
        lr,
    )


def _cyclic(
    low, high, value_fn, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode
) -> OpsFunction:
    sm.check_cyclic_mode(mode, scale_fn)
    step_size_up = float(step_size_up)
    step_size_down = (
        float(step_size_down) if step_size_down is not None else step_size_up
    )
    total_size = step_size_up + step_size_down
    step_ratio = step_size_up / total_size
    fn, scale_mode = sm.cyclic_scale_fn(mode, gamma, scale_fn, scale_mode)

    def schedule(count, ops):
        t = _count(count, ops)
        cycle, scale_factor = sm.cyclic_position(t, total_size, step_ratio, ops)
        argument = cycle if scale_mode == "cycle" else t
        if scale_fn is not None and ops is sm.PAIRS:
            # a user's function takes (and gives) float32, as without the pairs
            scale = doubled.of(jnp.asarray(fn(_float32(argument)), jnp.float32))
        else:
            scale = fn(argument)
        return value_fn(low, high, scale_factor, scale)

    return schedule


def _float32(x) -> jax.Array:
    """A pair (a count's too) as its float32."""
    if isinstance(x, sm.PairCount):
        return x.count.astype(jnp.float32)
    return jnp.asarray(doubled.rounded(x), jnp.float32)


def cyclic_lr(
    base_lr,
    max_lr,
    step_size_up=2000,
    step_size_down=None,
    mode="triangular",
    gamma=1.0,
    scale_fn=None,
    scale_mode="cycle",
) -> Schedule:
    r"""``CyclicLR``'s learning rate (CLR, Smith 2017):

    .. math::
        \eta_t = \eta_{base} + (\eta_{max} - \eta_{base})\, h(t)\, s(\cdot)

    where :math:`h(t) \in [0, 1]` rises linearly over ``step_size_up`` steps and
    falls over ``step_size_down`` steps, and :math:`s` is the scaling policy of
    ``mode`` ('triangular': 1; 'triangular2': halved each cycle; 'exp_range':
    ``gamma**t``) or ``scale_fn`` (jnp-traceable) read on the cycle number or the
    count, per ``scale_mode``. With x64 off, the value is a pair (see
    :meth:`Schedule.exact_value`) but for a ``scale_fn``, which takes and gives
    float32; the cycle's fraction is exact for integral step sizes and those of
    few significant bits (2.5), and within ``2**-48`` of ``t / N`` otherwise.

    Returns:
      A schedule ``count -> value``; :func:`cyclic_momentum` is its momentum.

    Example:
      >>> tx = fo.sgd(lr=fo.cyclic_lr(0.01, 0.1, step_size_up=10),
      ...             momentum=fo.cyclic_momentum(step_size_up=10))
    """
    policy = {
        "step_size_up": step_size_up,
        "step_size_down": step_size_down,
        "mode": mode,
        "gamma": gamma,
        "scale_fn": scale_fn,
        "scale_mode": scale_mode,
    }
    return _closed_form(
        _cyclic(base_lr, max_lr, sm.cyclic_lr_value, **policy),
        "CyclicLR",
        # The momentum half of torch's scheduler is cyclic_momentum's (see
        # Schedule.torch_state_dict); off here, so its entries are not written.
        {"base_lr": base_lr, "max_lr": max_lr, **policy, "cycle_momentum": False},
        base_lr,
    )


def cyclic_momentum(
    base_momentum=0.8,
    max_momentum=0.9,
    step_size_up=2000,
    step_size_down=None,
    mode="triangular",
    gamma=1.0,
    scale_fn=None,
    scale_mode="cycle",
) -> Schedule:
    r"""``CyclicLR``'s momentum (or Adam's beta1), cycled inversely to the lr:

    .. math::
        m_t = m_{max} - (m_{max} - m_{base})\, h(t)\, s(\cdot)

    with the same :math:`h` and :math:`s` as :func:`cyclic_lr` for the same
    arguments.

    Example:
      >>> momentum = fo.cyclic_momentum(0.8, 0.9, step_size_up=10)
    """
    return _closed_form(
        _cyclic(
            base_momentum,
            max_momentum,
            sm.cyclic_momentum_value,
            step_size_up,
            step_size_down,
            mode,
            gamma,
            scale_fn,
            scale_mode,
        ),
        None,
        {},
        None,
    )


def _one_cycle(
    values,
    quantity,
    total_steps,
    epochs,
    steps_per_epoch,
    pct_start,
    anneal_strategy,
    three_phase,
) -> OpsFunction:
    total = sm.one_cycle_total_steps(total_steps, epochs, steps_per_epoch)
    phases = sm.one_cycle_phases(total, pct_start, three_phase, anneal_strategy)

    def schedule(count, ops):
        # torch raises past total_steps; a traced count cannot, so it is held there.
        t = ops.minimum(_count(count, ops), total)
        return sm.one_cycle_value(t, phases, values, quantity, anneal_strategy, ops)

    return schedule


def one_cycle_lr(
    max_lr,
    total_steps=None,
    epochs=None,
    steps_per_epoch=None,
    pct_start=0.3,
    anneal_strategy="cos",
    div_factor=25.0,
    final_div_factor=1e4,
    three_phase=False,
) -> Schedule:
    r"""``OneCycleLR``'s learning rate (1cycle, Smith & Topin 2017).

    Starts at ``max_lr / div_factor``, anneals ('cos' or 'linear') up to ``max_lr``
    over the first ``pct_start`` of ``total_steps`` (or ``epochs *
    steps_per_epoch``), then down to ``max_lr / div_factor / final_div_factor``;
    with ``three_phase`` it first comes back down symmetrically to the initial
    value and anneals to the minimum in a third phase. Counts past
    ``total_steps`` (where torch raises) keep the value at ``total_steps``.

    Returns:
      A schedule ``count -> value``; :func:`one_cycle_momentum` is its momentum.

    Example:
      >>> tx = fo.sgd(lr=fo.one_cycle_lr(0.1, total_steps=1000),
      ...             momentum=fo.one_cycle_momentum(total_steps=1000))
    """
    initial_lr = max_lr / div_factor
    values = {
        "initial_lr": initial_lr,
        "max_lr": max_lr,
        "min_lr": initial_lr / final_div_factor,
    }
    length = {
        "total_steps": total_steps,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
    }
    shape = {
        "pct_start": pct_start,
        "anneal_strategy": anneal_strategy,
        "three_phase": three_phase,
    }
    return _closed_form(
        _one_cycle(values, "lr", **length, **shape),
        "OneCycleLR",
        # The momentum half is one_cycle_momentum's, as for cyclic_lr.
        {
            "max_lr": max_lr,
            **length,
            **shape,
            "div_factor": div_factor,
            "final_div_factor": final_div_factor,
            "cycle_momentum": False,
        },
        initial_lr,
    )


def one_cycle_momentum(
    total_steps=None,
    epochs=None,
    steps_per_epoch=None,
    pct_start=0.3,
    anneal_strategy="cos",
    base_momentum=0.85,
    max_momentum=0.95,
    three_phase=False,
) -> Schedule:
    r"""``OneCycleLR``'s momentum (or Adam's beta1), annealed inversely to the lr:
    from ``max_momentum`` down to ``base_momentum`` while the lr rises, and back.

    Example:
      >>> momentum = fo.one_cycle_momentum(total_steps=1000)
    """
    values = {"base_momentum": base_momentum, "max_momentum": max_momentum}
    return _closed_form(
        _one_cycle(
            values,
            "momentum",
            total_steps,
            epochs,
            steps_per_epoch,
            pct_start,
            anneal_strategy,
            three_phase,
        ),
        None,
        {},
        None,
    )


def sequential_lr(
    schedules: Sequence[CountFunction], milestones: Sequence[int]
) -> Schedule:
    r"""``SequentialLR``: schedule :math:`i` runs from milestone :math:`i - 1` on,
    restarted at count 0 there: :math:`\eta_t = S_i(t - m_{i-1})`.

    As in torch, the count is restarted at a milestone; the schedules should be
    built with the same initial value (torch's ``initial_lr``).

    Example:
      >>> lr = fo.sequential_lr([fo.linear_lr(0.1, 0.01, total_iters=10),
      ...                        fo.cosine_annealing_lr(0.1, T_max=90)],
      ...                       milestones=[10])
    """
    sm.check_scheduler_count("SequentialLR", len(schedules), chained=False)
    sm.check_sequential_milestones(len(schedules), len(milestones))
    starts = [0, *milestones]

    def schedule(count):
        t = jnp.asarray(count)
        branches = [
            (t < end, lambda s=s, start=start: s(t - start))
            for s, start, end in zip(schedules, starts, milestones)
        ]
        branches.append((True, lambda: schedules[-1](t - starts[-1])))
        return sm.JAX.first(branches)

    def pairs(count):
        t = jnp.asarray(count)
        branches = [
            (t < end, lambda s=s, start=start: _pair_value(s, t - start))
            for s, start, end in zip(schedules, starts, milestones)
        ]
        branches.append((True, lambda: _pair_value(schedules[-1], t - starts[-1])))
        return sm.PAIRS.first(branches)

    return Schedule(
        schedule,
        "SequentialLR",
        {"milestones": list(milestones)},
        getattr(schedules[0], "lr", None),
        tuple(schedules),
        pair_fn=pairs,
    )


def chained_lr(lr, factors: Sequence[CountFunction]) -> Schedule:
    r"""``ChainedScheduler``: the product of the schedules' factors,
    :math:`\eta_t = \eta_0 \prod_i F_i(t)`.

    Build each factor schedule with an initial value of 1.0; the product then
    equals torch's chaining of the same multiplicative schedulers (all but the
    additive ones: CosineAnnealingLR with ``eta_min != 0`` or past ``T_max``).

    Example:
      >>> lr = fo.chained_lr(0.1, [fo.constant_lr(1.0, 0.1, total_iters=20),
      ...                          fo.exponential_lr(1.0, gamma=0.9)])
    """
    sm.check_scheduler_count("ChainedScheduler", len(factors), chained=True)

    def schedule(count):
        value = lr
        for factor in factors:
            value = value * factor(count)
        return value

    def pairs(count):
        value = lr
        for factor in factors:
            value = value * _pair_value(factor, count)
        return value

    return Schedule(schedule, "ChainedScheduler", {}, lr, tuple(factors), pair_fn=pairs)

r"""torch's learning-rate schedules as pure ``count -> value`` functions.

Each function here returns a schedule: a function of the step count ``t`` (an int or
an int array, traced or not) giving the value torch's scheduler of the same name
puts in ``param_group['lr']`` after ``t`` calls of ``scheduler.step()``, that is the
value used by the optimizer's step ``t + 1``. Schedules are jnp-traceable, so they
serve as any hyperparameter of the functional transforms under ``jax.jit``: the
runner evaluates a callable option at the leaf's pre-step count, the same count
torch's scheduler has reached when that step runs.

    tx = fo.sgd(lr=fo.cosine_annealing_lr(0.1, T_max=100), momentum=0.9)

The closed-form formulas below are also the ones the stateful schedulers of
:mod:`functorch_optim.lr_scheduler` use for their closed forms (Python floats
there, jnp here), so both APIs share one definition of each shape.

:func:`reduce_on_plateau` is a gradient transformation rather than a schedule,
because its value depends on the losses seen: it reads the loss through
``update(..., value=loss)`` and scales the updates.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .core import GradientTransformation, scalar_dtype

Schedule = Callable[[Any], Any]


# --- arithmetic shared by the Python (stateful) and jnp (functional) forms ----------


class _PythonOps:
    """Python-float arithmetic, torch's own for its schedulers."""

    cos = staticmethod(math.cos)
    floor = staticmethod(math.floor)
    minimum = staticmethod(min)

    @staticmethod
    def power(x, p):
        return x**p

    @staticmethod
    def count_reached(sorted_points: Sequence[int], t) -> int:
        return bisect_right(sorted_points, t)

    @staticmethod
    def first(branches: Sequence[tuple[Any, Callable[[], Any]]]) -> Any:
        """The value of the first branch whose condition holds (the last is taken
        unconditionally); only that branch is computed, as torch computes it."""
        for condition, value in branches[:-1]:
            if condition:
                return value()
        return branches[-1][1]()


class _JaxOps:
    """The same operations on (possibly traced) JAX scalars."""

    cos = staticmethod(jnp.cos)
    floor = staticmethod(jnp.floor)
    minimum = staticmethod(jnp.minimum)

    @staticmethod
    def power(x, p):
        # XLA computes pow as exp(p * log(x)); integer powers as products are
        # closer to Python's correctly rounded ones.
        if float(p).is_integer() and abs(p) <= 64:
            return jax.lax.integer_pow(x, int(p))
        return jnp.where(x == 0, 0.0 if p > 0 else jnp.inf, jnp.power(x, p))

    @staticmethod
    def count_reached(sorted_points: Sequence[int], t):
        return sum((t >= p).astype(t.dtype) for p in sorted_points) + jnp.zeros_like(t)

    @staticmethod
    def first(branches):
        # Every branch is computed; a branch torch would not reach may divide by
        # zero, which only yields an unused inf/nan here.
        result = branches[-1][1]()
        for condition, value in reversed(branches[:-1]):
            result = jnp.where(condition, value(), result)
        return result


PY = _PythonOps
JAX = _JaxOps


def _float_count(count) -> jax.Array:
    return jnp.asarray(count).astype(scalar_dtype())


# --- closed forms (``t`` = last_epoch) -----------------------------------------------


def step_value(base, t, step_size, gamma):
    return base * gamma ** (t // step_size)


def multi_step_value(base, t, sorted_milestones, gamma, ops):
    return base * gamma ** ops.count_reached(sorted_milestones, t)


def constant_value(base, t, factor, total_iters):
    return base * (factor + (t >= total_iters) * (1 - factor))


def linear_value(base, t, start_factor, end_factor, total_iters, ops):
    return base * (
        start_factor
        + (end_factor - start_factor) * ops.minimum(total_iters, t) / total_iters
    )


def exponential_value(base, t, gamma):
    return base * gamma**t


def polynomial_value(base, t, total_iters, power, ops):
    # torch writes 1 - t / T; XLA turns the division into a product with 1 / T,
    # leaving ~1e-17 instead of 0 at t = T. The difference of integers is exact.
    return base * ops.power(
        (total_iters - ops.minimum(total_iters, t)) / total_iters, power
    )


def cosine_value(base, eta_min, t_cur, t_max, ops):
    return eta_min + (base - eta_min) * (1 + ops.cos(math.pi * t_cur / t_max)) / 2


def cyclic_position(t, total_size, step_ratio, ops):
    """``(cycle, scale_factor)`` of CyclicLR at ``t``: the 1-based cycle and the
    fraction of the way from the low boundary to the high one."""
    cycle = ops.floor(1 + t / total_size)
    x = 1.0 + t / total_size - cycle
    scale_factor = ops.first(
        [
            (x <= step_ratio, lambda: x / step_ratio),
            (True, lambda: (x - 1) / (step_ratio - 1)),
        ]
    )
    return cycle, scale_factor


def cyclic_lr_value(base_lr, max_lr, scale_factor, scale):
    return base_lr + (max_lr - base_lr) * scale_factor * scale


def cyclic_momentum_value(base_momentum, max_momentum, scale_factor, scale):
    return max_momentum - (max_momentum - base_momentum) * scale_factor * scale


def cyclic_scale_fn(mode, gamma, scale_fn, scale_mode) -> tuple[Callable, str]:
    """CyclicLR's scaling policy and the quantity it reads ('cycle' or 'iterations')."""
    if scale_fn is not None:
        return scale_fn, scale_mode
    if mode == "triangular":
        return (lambda x: 1.0), "cycle"
    if mode == "triangular2":
        return (lambda x: 1 / (2.0 ** (x - 1))), "cycle"
    return (lambda x: gamma**x), "iterations"


def check_cyclic_mode(mode, scale_fn) -> None:
    if mode not in ["triangular", "triangular2", "exp_range"] and scale_fn is None:
        raise ValueError("mode is invalid and scale_fn is None")


def anneal(strategy, start, end, pct, ops):
    """OneCycleLR's annealing from ``start`` to ``end`` as ``pct`` goes 0 -> 1."""
    if strategy == "cos":
        cos_out = ops.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out
    return (end - start) * pct + start


def one_cycle_total_steps(total_steps, epochs, steps_per_epoch) -> int:
    if total_steps is not None:
        if total_steps <= 0 or not isinstance(total_steps, int):
            raise ValueError(
                f"Expected positive integer total_steps, but got {total_steps}"
            )
        return total_steps
    if epochs is not None and steps_per_epoch is not None:
        if not isinstance(epochs, int) or epochs <= 0:
            raise ValueError(f"Expected positive integer epochs, but got {epochs}")
        if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
            raise ValueError(
                f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}"
            )
        return epochs * steps_per_epoch
    raise ValueError(
        "You must define either total_steps OR (epochs AND steps_per_epoch)"
    )


def one_cycle_phases(total_steps, pct_start, three_phase, anneal_strategy) -> list:
    """OneCycleLR's phases, each ending at ``end_step`` and annealing between two
    named group values; validated as torch validates them, in torch's order."""
    if three_phase:
        phases = [
            {
                "end_step": float(pct_start * total_steps) - 1,
                "start_lr": "initial_lr",
                "end_lr": "max_lr",
                "start_momentum": "max_momentum",
                "end_momentum": "base_momentum",
            },
            {
                "end_step": float(2 * pct_start * total_steps) - 2,
                "start_lr": "max_lr",
                "end_lr": "initial_lr",
                "start_momentum": "base_momentum",
                "end_momentum": "max_momentum",
            },
            {
                "end_step": total_steps - 1,
                "start_lr": "initial_lr",
                "end_lr": "min_lr",
                "start_momentum": "max_momentum",
                "end_momentum": "max_momentum",
            },
        ]
    else:
        phases = [
            {
                "end_step": float(pct_start * total_steps) - 1,
                "start_lr": "initial_lr",
                "end_lr": "max_lr",
                "start_momentum": "max_momentum",
                "end_momentum": "base_momentum",
            },
            {
                "end_step": total_steps - 1,
                "start_lr": "max_lr",
                "end_lr": "min_lr",
                "start_momentum": "base_momentum",
                "end_momentum": "max_momentum",
            },
        ]
    if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
        raise ValueError(
            f"Expected float between 0 and 1 pct_start, but got {pct_start}"
        )
    if anneal_strategy not in ["cos", "linear"]:
        raise ValueError(
            "anneal_strategy must be one of 'cos' or 'linear', instead got "
            f"{anneal_strategy}"
        )
    return phases


def one_cycle_value(t, phases, values, quantity, anneal_strategy, ops):
    """OneCycleLR's ``quantity`` ('lr' or 'momentum') at step ``t``; ``values``
    maps the phase names (``initial_lr``, ``max_momentum``, ...) to numbers."""
    branches = []
    start_step = 0.0
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]

        def value(phase=phase, start_step=start_step):
            pct = (t - start_step) / (phase["end_step"] - start_step)
            start = values[phase[f"start_{quantity}"]]
            end = values[phase[f"end_{quantity}"]]
            return anneal(anneal_strategy, start, end, pct, ops)

        last = i == len(phases) - 1
        branches.append((True if last else t <= end_step, value))
        start_step = end_step
    return ops.first(branches)


def check_constant_factor(factor) -> None:
    if factor > 1.0 or factor < 0:
        raise ValueError(
            "Constant multiplicative factor expected to be between 0 and 1."
        )


def check_linear_factors(start_factor, end_factor) -> None:
    if start_factor > 1.0 or start_factor <= 0:
        raise ValueError(
            "Starting multiplicative factor expected to be greater than 0 and less "
            "or equal to 1."
        )
    if end_factor > 1.0 or end_factor < 0:
        raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")


def check_warm_restarts(T_0, T_mult, eta_min) -> None:
    if T_0 <= 0 or not isinstance(T_0, int):
        raise ValueError(f"Expected positive integer T_0, but got {T_0}")
    if T_mult < 1 or not isinstance(T_mult, int):
        raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
    if not isinstance(eta_min, (float, int)):
        raise ValueError(
            f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}"
        )


# --- public schedules ----------------------------------------------------------


def lambda_lr(lr, lr_lambda: Schedule) -> Schedule:
    r"""``torch.optim.lr_scheduler.LambdaLR``: :math:`\eta_t = \eta_0 \lambda(t)`.

    Args:
      lr: the initial value :math:`\eta_0` (torch's ``initial_lr``).
      lr_lambda: a jnp-traceable function of the count giving the factor.

    Returns:
      A schedule ``count -> value``.

    Example:
      >>> tx = fo.sgd(lr=fo.lambda_lr(0.1, lambda t: 0.95**t))
    """
    return lambda count: lr * lr_lambda(jnp.asarray(count))


def multiplicative_lr(lr, lr_lambda: Schedule) -> Schedule:
    r"""``MultiplicativeLR``: :math:`\eta_t = \eta_0 \prod_{k=1}^{t} \lambda(k)`.

    The product has no closed form for a general ``lr_lambda``, so the schedule
    runs a loop of ``t`` iterations (a ``lax.fori_loop``) at each evaluation.

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
        t = jnp.asarray(count)
        return jax.lax.fori_loop(
            1, t + 1, lambda k, acc: acc * lr_lambda(k), jnp.asarray(lr, scalar_dtype())
        )

    return schedule


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
    return lambda count: step_value(lr, _float_count(count), step_size, gamma)


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
    return lambda count: multi_step_value(lr, _float_count(count), points, gamma, JAX)


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
    check_constant_factor(factor)
    return lambda count: constant_value(lr, _float_count(count), factor, total_iters)


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
    check_linear_factors(start_factor, end_factor)
    return lambda count: linear_value(
        lr, _float_count(count), start_factor, end_factor, total_iters, JAX
    )


def exponential_lr(lr, gamma) -> Schedule:
    r"""``ExponentialLR``: :math:`\eta_t = \eta_0 \gamma^t`.

    Example:
      >>> tx = fo.sgd(lr=fo.exponential_lr(0.1, gamma=0.99))
    """
    return lambda count: exponential_value(lr, _float_count(count), gamma)


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
    return lambda count: polynomial_value(
        lr, _float_count(count), total_iters, power, JAX
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
    return lambda count: cosine_value(lr, eta_min, _float_count(count), T_max, JAX)


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
    check_warm_restarts(T_0, T_mult, eta_min)
    # Start and length of every cycle that begins below 2**31 (the int32 counts).
    starts, lengths = [0], [T_0]
    if T_mult > 1:
        while starts[-1] + lengths[-1] < 2**31:
            starts.append(starts[-1] + lengths[-1])
            lengths.append(lengths[-1] * T_mult)
    starts_array = jnp.asarray(starts, scalar_dtype())
    lengths_array = jnp.asarray(lengths, scalar_dtype())

    def schedule(count):
        t = _float_count(count)
        if T_mult == 1:
            t_cur, t_i = t % T_0, float(T_0)
        else:
            cycle = JAX.count_reached(starts[1:], t).astype(jnp.int32)
            t_cur, t_i = t - starts_array[cycle], lengths_array[cycle]
        return cosine_value(lr, eta_min, t_cur, t_i, JAX)

    return schedule


def _cyclic(
    low, high, value_fn, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode
) -> Schedule:
    check_cyclic_mode(mode, scale_fn)
    step_size_up = float(step_size_up)
    step_size_down = (
        float(step_size_down) if step_size_down is not None else step_size_up
    )
    total_size = step_size_up + step_size_down
    step_ratio = step_size_up / total_size
    fn, scale_mode = cyclic_scale_fn(mode, gamma, scale_fn, scale_mode)

    def schedule(count):
        t = _float_count(count)
        cycle, scale_factor = cyclic_position(t, total_size, step_ratio, JAX)
        scale = fn(cycle if scale_mode == "cycle" else t)
        return value_fn(low, high, scale_factor, scale)

    return schedule


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
    count, per ``scale_mode``.

    Returns:
      A schedule ``count -> value``; :func:`cyclic_momentum` is its momentum.

    Example:
      >>> tx = fo.sgd(lr=fo.cyclic_lr(0.01, 0.1, step_size_up=10),
      ...             momentum=fo.cyclic_momentum(step_size_up=10))
    """
    return _cyclic(
        base_lr,
        max_lr,
        cyclic_lr_value,
        step_size_up,
        step_size_down,
        mode,
        gamma,
        scale_fn,
        scale_mode,
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
    return _cyclic(
        base_momentum,
        max_momentum,
        cyclic_momentum_value,
        step_size_up,
        step_size_down,
        mode,
        gamma,
        scale_fn,
        scale_mode,
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
) -> Schedule:
    total = one_cycle_total_steps(total_steps, epochs, steps_per_epoch)
    phases = one_cycle_phases(total, pct_start, three_phase, anneal_strategy)

    def schedule(count):
        # torch raises past total_steps; a traced count cannot, so it is held there.
        t = jnp.minimum(_float_count(count), total)
        return one_cycle_value(t, phases, values, quantity, anneal_strategy, JAX)

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
    return _one_cycle(
        values,
        "lr",
        total_steps,
        epochs,
        steps_per_epoch,
        pct_start,
        anneal_strategy,
        three_phase,
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
    return _one_cycle(
        values,
        "momentum",
        total_steps,
        epochs,
        steps_per_epoch,
        pct_start,
        anneal_strategy,
        three_phase,
    )


def sequential_lr(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    r"""``SequentialLR``: schedule :math:`i` runs from milestone :math:`i - 1` on,
    restarted at count 0 there: :math:`\eta_t = S_i(t - m_{i-1})`.

    As in torch, the count is restarted at a milestone; the schedules should be
    built with the same initial value (torch's ``initial_lr``).

    Example:
      >>> lr = fo.sequential_lr([fo.linear_lr(0.1, 0.01, total_iters=10),
      ...                        fo.cosine_annealing_lr(0.1, T_max=90)],
      ...                       milestones=[10])
    """
    if len(schedules) < 1:
        raise ValueError(
            "SequentialLR expects at least one scheduler, but got no scheduler."
        )
    if len(milestones) != len(schedules) - 1:
        raise ValueError(
            "Sequential Schedulers expects number of schedulers provided to be one "
            "more than the number of milestone points, but got number of schedulers "
            f"{len(schedules)} and the number of milestones to be equal to "
            f"{len(milestones)}"
        )
    starts = [0, *milestones]

    def schedule(count):
        t = jnp.asarray(count)
        branches = [
            (t < end, lambda s=s, start=start: s(t - start))
            for s, start, end in zip(schedules, starts, milestones)
        ]
        branches.append((True, lambda: schedules[-1](t - starts[-1])))
        return JAX.first(branches)

    return schedule


def chained_lr(lr, factors: Sequence[Schedule]) -> Schedule:
    r"""``ChainedScheduler``: the product of the schedules' factors,
    :math:`\eta_t = \eta_0 \prod_i F_i(t)`.

    Build each factor schedule with an initial value of 1.0; the product then
    equals torch's chaining of the same multiplicative schedulers (all but the
    additive ones: CosineAnnealingLR with ``eta_min != 0`` or past ``T_max``).

    Example:
      >>> lr = fo.chained_lr(0.1, [fo.constant_lr(1.0, 0.1, total_iters=20),
      ...                          fo.exponential_lr(1.0, gamma=0.9)])
    """
    if len(factors) < 1:
        raise ValueError(
            "ChainedScheduler expects at least one scheduler to be chained, but got "
            "no scheduler."
        )

    def schedule(count):
        value = lr
        for factor in factors:
            value = value * factor(count)
        return value

    return schedule


# --- reduce on plateau ---------------------------------------------------------------


class ReduceLROnPlateauState(NamedTuple):
    """The state of :func:`reduce_on_plateau`, with torch's attribute names."""

    scale: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array
    last_epoch: jax.Array


def check_plateau_options(mode, factor, threshold_mode) -> None:
    """ReduceLROnPlateau's checks, in torch's order."""
    if factor >= 1.0:
        raise ValueError("Factor should be < 1.0.")
    if mode not in {"min", "max"}:
        raise ValueError("mode " + mode + " is unknown!")
    if threshold_mode not in {"rel", "abs"}:
        raise ValueError("threshold mode " + threshold_mode + " is unknown!")


def plateau_is_better(a, best, mode, threshold, threshold_mode):
    """Whether metric ``a`` improves on ``best`` (ReduceLROnPlateau._is_better)."""
    if mode == "min" and threshold_mode == "rel":
        return a < best * (1.0 - threshold)
    if mode == "min":
        return a < best - threshold
    if threshold_mode == "rel":
        return a > best * (threshold + 1.0)
    return a > best + threshold


def reduce_on_plateau(
    mode="min",
    factor=0.1,
    patience=10,
    threshold=1e-4,
    threshold_mode="rel",
    cooldown=0,
    min_scale=0.0,
    eps=1e-8,
) -> GradientTransformation:
    r"""``ReduceLROnPlateau`` as a transformation that scales the updates.

    Each ``update(updates, state, params, value=loss)`` is one
    ``scheduler.step(loss)`` of torch's scheduler on an lr of 1.0 followed by the
    optimizer step: the loss is compared with the best seen (``threshold`` relative
    or absolute, per ``threshold_mode``); after more than ``patience`` calls
    without improvement the scale becomes :math:`\max(s \cdot f, s_{min})` (unless
    that changes it by less than ``eps``) and ``cooldown`` calls are ignored. The
    updates are multiplied by the scale. For an optimizer whose update is linear
    in lr (SGD, Adam, AdamW, ...) this equals torch's loop of
    ``scheduler.step(loss); optimizer.step()`` with ``min_lr = min_scale * lr``.

    Chain it after the optimizer: ``fo.chain(fo.adam(1e-3), fo.reduce_on_plateau())``.

    Args:
      mode: 'min' (the loss should decrease) or 'max'.
      factor: the factor :math:`f < 1` of a reduction.
      patience: the number of calls without improvement tolerated.
      threshold: the improvement that counts as one.
      threshold_mode: 'rel' (``best * (1 -/+ threshold)``) or 'abs'
        (``best -/+ threshold``).
      cooldown: calls to wait after a reduction before counting bad ones again.
      min_scale: the lower bound of the scale (torch's ``min_lr`` over the lr).
      eps: reductions smaller than this are skipped.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose ``update`` needs
      the keyword ``value``; its state is a :class:`ReduceLROnPlateauState`.

    Example:
      >>> tx = fo.chain(fo.sgd(lr=0.1), fo.reduce_on_plateau(patience=5))
      >>> updates, state = tx.update(grads, state, params, value=loss)
    """
    check_plateau_options(mode, factor, threshold_mode)
    worst = math.inf if mode == "min" else -math.inf

    def init(params):
        del params
        dtype = scalar_dtype()
        return ReduceLROnPlateauState(
            scale=jnp.ones((), dtype),
            best=jnp.asarray(worst, dtype),
            num_bad_epochs=jnp.zeros((), jnp.int32),
            cooldown_counter=jnp.zeros((), jnp.int32),
            last_epoch=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(
                "reduce_on_plateau's update needs the loss: update(..., value=loss)"
            )
        current = jnp.asarray(value).astype(state.best.dtype)
        better = plateau_is_better(current, state.best, mode, threshold, threshold_mode)
        best = jnp.where(better, current, state.best)
        bad = jnp.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = jnp.where(
            in_cooldown, state.cooldown_counter - 1, state.cooldown_counter
        )
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > patience
        reduced = jnp.maximum(state.scale * factor, min_scale)
        scale = jnp.where(reduce & (state.scale - reduced > eps), reduced, state.scale)
        new_state = ReduceLROnPlateauState(
            scale=scale,
            best=best,
            num_bad_epochs=jnp.where(reduce, 0, bad).astype(jnp.int32),
            cooldown_counter=jnp.where(reduce, cooldown, cooldown_counter).astype(
                jnp.int32
            ),
            last_epoch=state.last_epoch + 1,
        )
        scaled = jax.tree.map(
            lambda u: None if u is None else (u * scale).astype(u.dtype),
            updates,
            is_leaf=lambda x: x is None,
        )
        return scaled, new_state

    return GradientTransformation(init, update)

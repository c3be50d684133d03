r"""torch's learning-rate schedules as pure ``count -> value`` functions.

Each function here returns a schedule: a function of the step count ``t`` (an int or
an int array, traced or not) giving the value torch's scheduler of the same name
puts in ``param_group['lr']`` after ``t`` calls of ``scheduler.step()``, that is the
value used by the optimizer's step ``t + 1``. Schedules are jnp-traceable, so they
serve as any hyperparameter of the functional transforms under ``jax.jit``: the
runner evaluates a callable option at the leaf's pre-step count, the same count
torch's scheduler has reached when that step runs.

    tx = fo.sgd(lr=fo.cosine_annealing_lr(0.1, T_max=100), momentum=0.9)

The shapes are computed by :mod:`functorch_optim.schedule_math`, which the stateful
schedulers of :mod:`functorch_optim.lr_scheduler` use too (Python floats there, jnp
here), so both APIs share one definition of each.

:func:`reduce_on_plateau` (defined in :mod:`functorch_optim.plateau`) is a gradient
transformation rather than a schedule, because its value depends on the losses seen:
it reads the loss through ``update(..., value=loss)`` and scales the updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import schedule_math as sm
from .core import scalar_dtype
from .plateau import reduce_on_plateau

__all__ = [
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

Schedule = Callable[[Any], Any]


def _float_count(count) -> jax.Array:
    return jnp.asarray(count).astype(scalar_dtype())


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
    return lambda count: sm.step_value(lr, _float_count(count), step_size, gamma)


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
    return lambda count: sm.multi_step_value(
        lr, _float_count(count), points, gamma, sm.JAX
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
    return lambda count: sm.constant_value(lr, _float_count(count), factor, total_iters)


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
    return lambda count: sm.linear_value(
        lr, _float_count(count), start_factor, end_factor, total_iters, sm.JAX
    )


def exponential_lr(lr, gamma) -> Schedule:
    r"""``ExponentialLR``: :math:`\eta_t = \eta_0 \gamma^t`.

    Example:
      >>> tx = fo.sgd(lr=fo.exponential_lr(0.1, gamma=0.99))
    """
    return lambda count: sm.exponential_value(lr, _float_count(count), gamma)


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
    return lambda count: sm.polynomial_value(
        lr, _float_count(count), total_iters, power, sm.JAX
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
    return lambda count: sm.cosine_value(
        lr, eta_min, _float_count(count), T_max, sm.JAX
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
    starts_array = jnp.asarray(starts, scalar_dtype())
    lengths_array = jnp.asarray(lengths, scalar_dtype())

    def schedule(count):
        t = _float_count(count)
        if T_mult == 1:
            t_cur, t_i = t % T_0, float(T_0)
        else:
            cycle = sm.JAX.count_reached(starts[1:], t).astype(jnp.int32)
            t_cur, t_i = t - starts_array[cycle], lengths_array[cycle]
        return sm.cosine_value(lr, eta_min, t_cur, t_i, sm.JAX)

    return schedule


def _cyclic(
    low, high, value_fn, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode
) -> Schedule:
    sm.check_cyclic_mode(mode, scale_fn)
    step_size_up = float(step_size_up)
    step_size_down = (
        float(step_size_down) if step_size_down is not None else step_size_up
    )
    total_size = step_size_up + step_size_down
    step_ratio = step_size_up / total_size
    fn, scale_mode = sm.cyclic_scale_fn(mode, gamma, scale_fn, scale_mode)

    def schedule(count):
        t = _float_count(count)
        cycle, scale_factor = sm.cyclic_position(t, total_size, step_ratio, sm.JAX)
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
        sm.cyclic_lr_value,
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
        sm.cyclic_momentum_value,
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
    total = sm.one_cycle_total_steps(total_steps, epochs, steps_per_epoch)
    phases = sm.one_cycle_phases(total, pct_start, three_phase, anneal_strategy)

    def schedule(count):
        # torch raises past total_steps; a traced count cannot, so it is held there.
        t = jnp.minimum(_float_count(count), total)
        return sm.one_cycle_value(t, phases, values, quantity, anneal_strategy, sm.JAX)

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
    sm.check_scheduler_count("ChainedScheduler", len(factors), chained=True)

    def schedule(count):
        value = lr
        for factor in factors:
            value = value * factor(count)
        return value

    return schedule

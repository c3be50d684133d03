r"""The schedule math shared by the stateful schedulers and the pure schedules.

:mod:`functorch_optim.lr_scheduler` (torch's classes, Python floats) and
:mod:`functorch_optim.schedules` / :mod:`functorch_optim.plateau` (pure functions,
jnp under ``jax.jit``) compute every shape from the definitions here, so both APIs
follow one rule: the closed forms of the schedules (``t`` = torch's ``last_epoch``),
the cyclic and one-cycle policies, torch's argument checks with its messages, and the
ReduceLROnPlateau state machine.

A function that branches or calls a transcendental takes ``ops``: :data:`PY` gives
torch's own Python arithmetic (only the branch taken is computed), :data:`JAX` the
same operations on traced scalars (every branch is computed and one selected). This
module is internal: its names are no part of the public API.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# --- arithmetic shared by the Python (stateful) and jnp (functional) forms ----------


class _PythonOps:
    """Python-float arithmetic, torch's own for its schedulers."""

    cos = staticmethod(math.cos)
    floor = staticmethod(math.floor)
    minimum = staticmethod(min)
    maximum = staticmethod(max)

    @staticmethod
    def where(condition, if_true, if_false):
        return if_true if condition else if_false

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
    where = staticmethod(jnp.where)

    @staticmethod
    def maximum(a, b):
        # Python's max(a, b): a unless b > a, so a nan a is kept and a nan b is not
        # (jnp.maximum propagates either).
        return jnp.where(b > a, b, a)

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

    def phase(end_step, lrs, momentums) -> dict:
        return {
            "end_step": end_step,
            "start_lr": lrs[0],
            "end_lr": lrs[1],
            "start_momentum": momentums[0],
            "end_momentum": momentums[1],
        }

    rise = phase(
        float(pct_start * total_steps) - 1,
        ("initial_lr", "max_lr"),
        ("max_momentum", "base_momentum"),
    )
    if three_phase:
        phases = [
            rise,
            phase(
                float(2 * pct_start * total_steps) - 2,
                ("max_lr", "initial_lr"),
                ("base_momentum", "max_momentum"),
            ),
            phase(
                total_steps - 1,
                ("initial_lr", "min_lr"),
                ("max_momentum", "max_momentum"),
            ),
        ]
    else:
        phases = [
            rise,
            phase(
                total_steps - 1,
                ("max_lr", "min_lr"),
                ("base_momentum", "max_momentum"),
            ),
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


def check_scheduler_count(owner: str, count: int, chained: bool) -> None:
    """SequentialLR's and ChainedScheduler's check that there is a scheduler."""
    if count < 1:
        purpose = " to be chained" if chained else ""
        raise ValueError(
            f"{owner} expects at least one scheduler{purpose}, but got no scheduler."
        )


def check_sequential_milestones(schedulers: int, milestones: int) -> None:
    """SequentialLR's check: one milestone between each two schedulers."""
    if milestones != schedulers - 1:
        raise ValueError(
            "Sequential Schedulers expects number of schedulers provided to be one "
            "more than the number of milestone points, but got number of schedulers "
            f"{schedulers} and the number of milestones to be equal to {milestones}"
        )


# --- ReduceLROnPlateau -------------------------------------------------------------


class PlateauCounters(NamedTuple):
    """What ReduceLROnPlateau remembers of the metrics (torch's attribute names)."""

    best: Any
    num_bad_epochs: Any
    cooldown_counter: Any


def check_plateau_factor(factor) -> None:
    """ReduceLROnPlateau's first check."""
    if factor >= 1.0:
        raise ValueError("Factor should be < 1.0.")


def check_plateau_modes(mode, threshold_mode) -> None:
    """ReduceLROnPlateau's checks of its modes, also made on loading a state."""
    if mode not in {"min", "max"}:
        raise ValueError("mode " + mode + " is unknown!")
    if threshold_mode not in {"rel", "abs"}:
        raise ValueError("threshold mode " + threshold_mode + " is unknown!")


def plateau_worst(mode) -> float:
    """The initial best, which every finite metric improves on (torch's mode_worse)."""
    return math.inf if mode == "min" else -math.inf


def plateau_is_better(a, best, mode, threshold, threshold_mode):
    r"""Whether metric ``a`` improves on ``best`` (torch's ``_is_better``):

    .. math::
        a < b (1 - \tau) \;\text{(min, rel)},\quad a < b - \tau \;\text{(min, abs)},
        \quad a > b (1 + \tau) \;\text{(max, rel)},\quad a > b + \tau
        \;\text{(max, abs)}

    As IEEE comparisons: a nan metric never improves, and neither does anything on
    a best of ``inf * 0 = nan`` (``threshold = 1`` in 'rel' mode before any
    improvement).
    """
    if mode == "min" and threshold_mode == "rel":
        return a < best * (1.0 - threshold)
    if mode == "min":
        return a < best - threshold
    if threshold_mode == "rel":
        return a > best * (threshold + 1.0)
    return a > best + threshold


def plateau_count(
    counters: PlateauCounters, metric, mode, threshold, threshold_mode, ops
) -> PlateauCounters:
    """The counting half of one ``ReduceLROnPlateau.step(metric)``.

    An improvement becomes the best and clears the bad epochs, any other metric is
    one more bad epoch; during a cooldown the counter ticks down and bad epochs do
    not count.
    """
    better = plateau_is_better(metric, counters.best, mode, threshold, threshold_mode)
    in_cooldown = counters.cooldown_counter > 0
    return PlateauCounters(
        best=ops.where(better, metric, counters.best),
        num_bad_epochs=ops.where(better | in_cooldown, 0, counters.num_bad_epochs + 1),
        cooldown_counter=ops.where(
            in_cooldown, counters.cooldown_counter - 1, counters.cooldown_counter
        ),
    )


def plateau_decide(
    counted: PlateauCounters, patience, cooldown, ops
) -> tuple[PlateauCounters, Any]:
    """The deciding half: ``(counters, reduce)``. More than ``patience`` bad epochs
    reduce the lr now, start a cooldown of ``cooldown`` epochs and clear the count."""
    reduce = counted.num_bad_epochs > patience
    return (
        PlateauCounters(
            best=counted.best,
            num_bad_epochs=ops.where(reduce, 0, counted.num_bad_epochs),
            cooldown_counter=ops.where(reduce, cooldown, counted.cooldown_counter),
        ),
        reduce,
    )


def plateau_reduced(value, factor, floor, eps, ops) -> tuple[Any, Any]:
    r"""``(new, changes)``: a reduced value :math:`\max(v f, v_{min})` and whether it
    replaces :math:`v`, which it does only when it is smaller by more than ``eps``."""
    new = ops.maximum(value * factor, floor)
    return new, value - new > eps

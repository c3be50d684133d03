r"""The schedule math shared by the stateful schedulers and the pure schedules.

:mod:`functorch_optim.lr_scheduler` (torch's classes, Python floats) and
:mod:`functorch_optim.schedules` / :mod:`functorch_optim.plateau` (pure functions,
jnp under ``jax.jit``) compute every shape from the definitions here, so both APIs
follow one rule: the closed forms of the schedules (``t`` = torch's ``last_epoch``),
the cyclic and one-cycle policies, torch's argument checks with its messages, and the
ReduceLROnPlateau state machine.

A function that branches or calls a transcendental takes ``ops``: :data:`PY` gives
torch's own Python arithmetic (only the branch taken is computed), :data:`JAX` the
same operations on traced scalars (every branch is computed and one selected), and
:data:`PAIRS` the same on float32 pairs (:mod:`functorch_optim.doubled`), the
schedules' values to double accuracy with x64 off: the count enters as an exact
pair that keeps its integer form (:class:`PairCount`: ``t // s`` and ``t % s`` in
int32, ``gamma ** t`` from :func:`~functorch_optim.doubled.powers`' tables), Python
numbers meet it as exact pairs, and :meth:`_PairOps.one_plus_cos_pi` reduces its
argument exactly in half-turns. Where torch's own arithmetic would differ between
two ways of writing a formula, the functions here keep torch's for :data:`PY` (and
:data:`JAX`, which mirrors it). This module is internal: its names are no part of
the public API.
"""

from __future__ import annotations

import decimal
import math
import operator
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import doubled
from .doubled import Doubled

# --- arithmetic shared by the Python (stateful) and jnp (functional) forms ----------


class _TorchFormulas:
    """torch's formulas over the arithmetic of a subclass (its ``cos`` and
    ``floor``): Python floats for the schedulers, JAX scalars for the schedules."""

    cos: Callable[[Any], Any]
    floor: Callable[[Any], Any]

    @staticmethod
    def when(condition, value):
        """``condition * value``: ``value`` where the condition holds, else 0."""
        return condition * value

    @classmethod
    def one_plus_cos_pi(cls, numerator, denominator, divide_first: bool):
        """``1 + cos(pi n / d)``, rounded as torch writes it: ``pi * (n / d)``
        where it divides first (OneCycleLR's ``pct``), else ``pi * n / d``."""
        angle = (
            math.pi * (numerator / denominator)
            if divide_first
            else math.pi * numerator / denominator
        )
        return 1 + cls.cos(angle)

    @classmethod
    def cycle(cls, t, total_size):
        """CyclicLR's 1-based cycle of ``t`` and the fraction of it run."""
        cycle = cls.floor(1 + t / total_size)
        return cycle, 1.0 + t / total_size - cycle

    @classmethod
    def anneal(cls, strategy, start, end, elapsed, length):
        """OneCycleLR's anneal (:func:`anneal`), as torch writes it."""
        return _torch_anneal(cls, strategy, start, end, elapsed, length)


class _PythonOps(_TorchFormulas):
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
        unconditionally); only that branch is computed, as torch computes it. A
        value may be a tuple."""
        for condition, value in branches[:-1]:
            if condition:
                return value()
        return branches[-1][1]()


def _every_branch(ops, branches):
    """``first`` on traced values: every branch is computed and the first whose
    condition holds selected by ``ops.where`` (a branch torch would not reach may
    divide by zero, which only yields an unused inf/nan here)."""
    result = branches[-1][1]()
    for condition, value in reversed(branches[:-1]):
        result = _select(lambda a, b, c=condition: ops.where(c, a, b), value(), result)
    return result


class _JaxOps(_TorchFormulas):
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

    first = classmethod(_every_branch)


def _torch_anneal(ops, strategy, start, end, elapsed, length):
    if strategy == "cos":
        cos_out = ops.one_plus_cos_pi(elapsed, length, divide_first=True)
        return end + (start - end) / 2.0 * cos_out
    pct = elapsed / length
    return (end - start) * pct + start


def _select(where: Callable[[Any, Any], Any], a, b):
    """``where(a, b)``, also of two tuples (element by element)."""
    if isinstance(a, tuple):
        return tuple(_select(where, x, y) for x, y in zip(a, b, strict=True))
    return where(a, b)


def _integral(x) -> bool:
    """Whether ``x`` is a Python int (or an integral float) an int32 holds."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return float(x).is_integer() and abs(x) < 2**31


class _LazyPair(Doubled):
    """A :class:`~doubled.Doubled` whose pair is made (by :meth:`_make_pair`) only
    when an operation needs it, for a number that stays exact in another form
    where torch's arithmetic allows."""

    __slots__ = ("_pair",)

    def __init__(self) -> None:
        self._pair: Doubled | None = None

    def _make_pair(self) -> Doubled:
        raise NotImplementedError

    def _exact(self) -> Doubled:
        if self._pair is None:
            self._pair = self._make_pair()
        return self._pair

    @property  # type: ignore[override]
    def hi(self):
        return self._exact().hi

    @property  # type: ignore[override]
    def lo(self):
        return self._exact().lo


class PairCount(_LazyPair):
    """A step count (int32, ``>= 0``) as an exact :class:`~doubled.Doubled`,
    that keeps its integer form where torch's arithmetic on the count stays in
    integers: ``//``, ``%``, ``+`` and ``-`` with ints, ``min``, comparisons with
    integral numbers, and powers of it (``gamma ** t``: a table lookup per 7
    bits, :func:`~functorch_optim.doubled.powers`); other arithmetic is the
    pair's. Its pair is made only when an operation needs it."""

    __slots__ = ("count",)

    def __init__(self, count) -> None:
        super().__init__()
        self.count = jnp.asarray(count, jnp.int32)

    def _make_pair(self) -> Doubled:
        return doubled.of(self.count)

    def __repr__(self) -> str:
        return f"PairCount({self.count!r})"

    def _integer(self, other):
        if isinstance(other, PairCount):
            return other.count
        if _integral(other):
            return int(other)
        return None

    def __floordiv__(self, other) -> PairCount:
        return PairCount(self.count // _index(other))

    def __mod__(self, other) -> PairCount:
        return PairCount(self.count % _index(other))

    def __add__(self, other):
        integer = self._integer(other)
        if integer is None:
            return self._exact() + other
        return PairCount(self.count + integer)

    __radd__ = __add__

    def __sub__(self, other):
        integer = self._integer(other)
        if integer is None:
            return self._exact() - other
        return PairCount(self.count - integer)

    def __rsub__(self, other):
        integer = self._integer(other)
        if integer is None:
            return other - self._exact()
        return PairCount(integer - self.count)

    def __rpow__(self, base) -> Doubled:
        """``base ** count`` (a Python base: :func:`_count_power`)."""
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            return doubled.of(base) ** self._exact()  # exp(count log(base))
        return _count_power(float(base), self.count)

    def _compare(self, op, other):
        integer = self._integer(other)
        if integer is None:
            return op(self._exact(), other)
        return op(self.count, integer)

    def __gt__(self, other):
        return self._compare(operator.gt, other)

    def __lt__(self, other):
        return self._compare(operator.lt, other)

    def __ge__(self, other):
        return self._compare(operator.ge, other)

    def __le__(self, other):
        return self._compare(operator.le, other)


def _index(x) -> int:
    """``x`` as a Python int (an integral float too, as torch's ``t // 7.0``)."""
    if not _integral(x):
        raise TypeError(f"a step count's integer arithmetic takes an integer, got {x}")
    return int(x)


def _count_power(base: float, count) -> Doubled:
    """``base ** count`` for a Python float and an int32 count ``>= 0``: a power of
    two exactly (:class:`_PowerOfTwo`), another
    base from :func:`~functorch_optim.doubled.powers`' tables (a negative one
    with the count's sign)."""
    power: Doubled
    if base != 0 and math.isfinite(base) and abs(math.frexp(base)[0]) == 0.5:
        power = _PowerOfTwo(count * (math.frexp(abs(base))[1] - 1))
    else:
        (power,) = doubled.powers([(abs(base), count)])
    if base < 0:
        return doubled.where((count & 1) == 1, -power, power)
    return power


class _Ratio(_LazyPair):
    """``n / d`` for an int32 ``n`` and a Python int ``d``, whose difference with an
    int is one too (``x - 1`` of CyclicLR's fraction, exact where ``x`` near 1
    as a pair would cancel to ``2**-48`` of 1); its pair ``n`` times ``1 / d``."""

    __slots__ = ("numerator", "denominator")

    def __init__(self, numerator, denominator: int) -> None:
        super().__init__()
        self.numerator = numerator
        self.denominator = denominator

    def _make_pair(self) -> Doubled:
        reciprocal = decimal.Decimal(1) / decimal.Decimal(self.denominator)
        return doubled.of(self.numerator) * doubled.of(reciprocal)

    def __sub__(self, other):
        if isinstance(other, int) and not isinstance(other, bool):
            return _Ratio(self.numerator - other * self.denominator, self.denominator)
        return self._exact() - other


class _PowerOfTwo(Doubled):
    """``2**e`` for an int32 ``e``, exactly (0 or inf beyond float32's range),
    whose reciprocal (CyclicLR's ``1 / 2**(cycle - 1)``) is ``2**-e``, exactly,
    where a quotient would have to take a number beyond its range."""

    __slots__ = ("exponent",)

    def __init__(self, exponent) -> None:
        self.exponent = exponent
        hi = _ldexp_one(exponent)
        super().__init__(hi, jnp.zeros_like(hi))

    def __rtruediv__(self, other) -> Doubled:
        return doubled.of(other) * Doubled(
            _ldexp_one(-self.exponent), jnp.zeros(jnp.shape(self.exponent), jnp.float32)
        )


def _ldexp_one(exponent):
    return jnp.ldexp(jnp.float32(1), jnp.clip(exponent, -200, 200))


def _integer_power(x: Doubled, n: int) -> Doubled:
    """``x ** n`` for an int ``n >= 1``, by squaring (``x**2``: one product)."""
    result: Doubled | None = None
    while True:
        if n & 1:
            result = x if result is None else result * x
        n >>= 1
        if not n:
            return result  # type: ignore[return-value]
        x = x * x


class _PairOps:
    """The same operations on float32 pairs (:class:`~doubled.Doubled`), the
    count a :class:`PairCount`; every branch is computed and one selected."""

    floor = staticmethod(doubled.floor)
    maximum = staticmethod(doubled.maximum)

    @staticmethod
    def minimum(a, b):
        if isinstance(b, PairCount) and _integral(a):
            return PairCount(jnp.minimum(int(a), b.count))
        if isinstance(a, PairCount) and _integral(b):
            return PairCount(jnp.minimum(a.count, int(b)))
        return doubled.minimum(a, b)

    @staticmethod
    def where(condition, if_true, if_false):
        return doubled.where(condition, if_true, if_false)

    @staticmethod
    def when(condition, value):
        return doubled.where(condition, value, 0.0)

    @staticmethod
    def power(x, p):
        # torch's Python pow, correctly rounded; integer powers as products
        x = doubled.of(x)
        if float(p).is_integer() and 1 <= p <= 64:
            return _integer_power(x, int(p))
        if p == 0:
            return doubled.of(1.0)
        result = x**p
        return doubled.where(x.hi == 0, doubled.of(0.0 if p > 0 else math.inf), result)

    @staticmethod
    def count_reached(sorted_points: Sequence[int], t: PairCount) -> PairCount:
        return PairCount(sum((t.count >= p).astype(jnp.int32) for p in sorted_points))

    first = classmethod(_every_branch)

    @staticmethod
    def one_plus_cos_pi(numerator, denominator, divide_first: bool):
        del divide_first  # the exact quotient, whatever torch's rounding
        numerator = numerator.count if isinstance(numerator, PairCount) else numerator
        if isinstance(denominator, PairCount):
            denominator = denominator.count
        elif _integral(denominator):
            denominator = int(denominator)
        return doubled.one_plus_cos_pi(numerator, denominator)

    @staticmethod
    def cycle(t: PairCount, total_size):
        """The cycle ``1 + k``, ``k = floor(t / N)``, and the fraction ``(t - k N) /
        N``, from the remainder ``t - k N``: in int32 for an integral ``N``,
        otherwise in pairs (exact where ``N`` has few significant bits, as step
        sizes do). torch's double rounds ``1 + t / N`` first, to ``2**-53`` of
        ``t / N``."""
        if _integral(total_size) and total_size > 0:
            size = int(total_size)
            done = t.count // size
            return PairCount(done + 1), _Ratio(t.count - done * size, size)
        size_pair = doubled.of(total_size)
        estimate = jnp.floor((t / size_pair).hi)
        rest = t - size_pair * estimate
        # the quotient's float32 is within one of k
        below, above = rest < 0, ~(rest < size_pair)
        rest = doubled.where(
            below,
            rest + size_pair,
            doubled.where(above, rest - size_pair, rest),
        )
        done = estimate.astype(jnp.int32) - below + above
        return PairCount(done + 1), rest / size_pair

    @staticmethod
    def anneal(strategy, start, end, elapsed, length):
        """From the nearer end of the phase: ``near + (far - near) f``, with the
        fraction ``f`` of the way at most 1/2, so the value is exact at both ends
        and cancels nowhere (torch's ``end + (start - end) ...`` nears ``end`` by
        cancellation from ``start``, to ``2**-48`` of ``start`` in pairs)."""
        first_half = elapsed * 2 < length
        near = doubled.where(first_half, start, end)
        far = doubled.where(first_half, end, start)
        if strategy == "cos":
            # 1 + cos(pi m / L), m / L >= 1/2 the way from the far end
            away = doubled.where(first_half, length - elapsed, elapsed)
            return near + (far - near) / 2.0 * doubled.one_plus_cos_pi(away, length)
        done = doubled.where(first_half, elapsed, length - elapsed)
        return near + (far - near) * (done / length)


PY = _PythonOps
JAX = _JaxOps
PAIRS = _PairOps


# --- closed forms (``t`` = last_epoch) -----------------------------------------------


def step_value(base, t, step_size, gamma):
    return base * gamma ** (t // step_size)


def multi_step_value(base, t, sorted_milestones, gamma, ops):
    return base * gamma ** ops.count_reached(sorted_milestones, t)


def constant_value(base, t, factor, total_iters, ops=PY):
    return base * (factor + ops.when(t >= total_iters, 1 - factor))


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
    one_plus_cos = ops.one_plus_cos_pi(t_cur, t_max, divide_first=False)
    return eta_min + (base - eta_min) * one_plus_cos / 2


def cyclic_position(t, total_size, step_ratio, ops):
    """``(cycle, scale_factor)`` of CyclicLR at ``t``: the 1-based cycle and the
    fraction of the way from the low boundary to the high one."""
    cycle, x = ops.cycle(t, total_size)
    # one quotient, of the branch's operands
    numerator, denominator = ops.first(
        [
            (x <= step_ratio, lambda: (x, step_ratio)),
            (True, lambda: (x - 1, step_ratio - 1)),
        ]
    )
    return cycle, numerator / denominator


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


def anneal(strategy, start, end, elapsed, length, ops):
    """OneCycleLR's annealing from ``start`` to ``end`` as ``pct = elapsed /
    length`` goes 0 -> 1."""
    return ops.anneal(strategy, start, end, elapsed, length)


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

        def operands(phase=phase, start_step=start_step):
            # pct = (t - start_step) / (end_step - start_step), and the phase's
            # values: the phase is selected first, then annealed once
            return (
                t - start_step,
                phase["end_step"] - start_step,
                values[phase[f"start_{quantity}"]],
                values[phase[f"end_{quantity}"]],
            )

        last = i == len(phases) - 1
        branches.append((True if last else t <= end_step, operands))
        start_step = end_step
    elapsed, length, start, end = ops.first(branches)
    return anneal(anneal_strategy, start, end, elapsed, length, ops)


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

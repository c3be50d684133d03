"""Double-accurate scalars without x64: a number as an unevaluated sum of two float32s.

torch computes an optimizer's per-step scalars (bias corrections, step sizes, ASGD's
``eta`` and ``mu``, NAdam's momentum products) in Python double and rounds each once,
to float32, where a float32 kernel takes it. With JAX's x64 on, the rules compute
them in float64 (:func:`functorch_optim.core.scalar_dtype`). Most JAX users keep x64
off; float32 arithmetic would then put the scalars up to about 1e-5 (``1 - 0.999``)
from torch's, and float32 results hundreds of ulps from torch's. A :class:`Doubled`
carries the missing bits instead: ``hi + lo`` with ``hi`` the float32 nearest the
sum, so about 48 significant bits, by error-free transformations (Knuth's two-sum;
products of 12-bit halves, exact whatever XLA's CPU backend contracts into fused
multiply-adds; Python constants converted exactly at trace time).

A rule's scalar part keeps its formulas: with x64 off, :func:`exact` makes the step
count (or a float32 scalar torch reads as a double) a :class:`Doubled`, and Python
arithmetic with it, with Python numbers and with JAX scalars, gives
:class:`Doubled` results; :func:`rounded` then gives the float32 a torch kernel
receives. With x64 on, :func:`exact` and :func:`rounded` return their argument, so
the float64 path is unchanged. The facade passes its Python float hyperparameters
traced, as :class:`Float` pairs that compute as the Python floats would, so the
same formulas serve it.

Compile cost: the scalars are computed once per step, but XLA compiles each op
(about 0.1 ms apiece on a CPU) and each kernel (milliseconds), and ``beta ** step``
unrolled into products, or ``exp``/``log`` series, would cost more than the optimizer
(``benchmarks/step_time.py --scalar-cost``). So each operation takes the fewest
error-free steps that keep it within a few units of ``2**-48`` relative (a sum 20
float32 ops, 10 with a float32 operand; a product 27; a quotient or root about 50,
a float32 estimate corrected by its exact residual); ``beta ** step`` is two or
three table lookups and products (:func:`powers`); no op is one XLA keeps out of a
fusion (a division, root or logarithm used twice: :func:`_reciprocal`), and
:func:`rounded_values` makes the step's scalars one kernel, computed once, whose
values the leaves' kernels read.

The functional lr schedules compute their closed forms in pairs too
(:data:`functorch_optim.schedule_math.PAIRS`), with :func:`floor`,
:func:`minimum`, :func:`lookup` and :func:`one_plus_cos_pi` (cosine annealing's
``1 + cos(pi t / T)``, its argument reduced exactly in half-turns, about 300 ops).

Accuracy: each operation is within a few units of 2**-48 relative of the exact
result of its operands (Python floats enter split exactly at trace time, to 48
bits). A float32 rounding of such a value differs from that of torch's double only
when torch's value lies within that distance of a midpoint between float32 numbers,
about once in 1e6 roundings. Values under about 1e-30 lose bits (``lo`` is flushed
to zero below float32's normal range on XLA's CPU), where torch's tiny scalars
matter only beside 1.
"""

from __future__ import annotations

import decimal
import functools
import math
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.lax import lax as lax_internal

from .core import scalar_dtype

_F32 = jnp.float32
_CONTEXT = decimal.Context(prec=50, Emin=-999999, Emax=999999, traps=[])


def _computed_once(*values):
    """``values`` (float32 scalars), as values XLA computes once: its fusion copies
    a chain of cheap scalar ops into every consumer, so the step's scalars would
    be computed again in every leaf's kernel. A division is an op it copies into
    no consumer; this one is of the values gathered in one vector (selected by
    index: a concatenation would emit their shared ops once per operand), by a 1
    that XLA cannot fold, so they are unchanged (signed zeros, infinities and
    NaNs included). The whole scalar program is then one kernel, the division's.
    """
    index = jnp.arange(len(values))
    vector = jnp.broadcast_to(values[-1], index.shape)
    for i in reversed(range(len(values) - 1)):
        vector = jnp.where(index == i, values[i], vector)
    vector = vector / jnp.sign(jnp.abs(vector) + 1)
    return tuple(vector[i] for i in range(len(values)))


def _two_sum(a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e = a + b`` exactly (Knuth)."""
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


def _fast_two_sum(a, b):
    """:func:`_two_sum` for ``|a| >= |b|`` (Dekker); also where ``a`` is 0."""
    s = a + b
    return s, b - (s - a)


def _split(a):
    """``a`` as ``high + low``, each of at most 12 significant bits: ``high`` has
    the low 12 bits of ``a``'s significand cleared (integer arithmetic: LLVM cannot
    contract it, as it can Veltkamp's ``c - (c - a)`` with ``c = 4097 a``)."""
    bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
    high = jax.lax.bitcast_convert_type(bits & np.uint32(0xFFFFF000), _F32)
    return high, a - high


def _two_prod(a, b):
    """``(s, e)`` with ``s + e = a * b`` to ``2**-48`` relative and ``|e|`` at most
    an ulp of ``s``: the four partial products of the 12-bit halves are exact, and
    each is smaller than the sum before it, so two fast two-sums add them.

    Dekker's ``e = a_hi b_hi - fl(a b) + ...`` is not used: XLA's CPU backend lets
    LLVM contract a multiply and an add into a fused multiply-add, which computes
    ``a_hi b_hi - a b`` with the exact product and loses the error term. Here
    every product is exact, so a contraction changes nothing.
    """
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    s, e1 = _fast_two_sum(a_hi * b_hi, a_hi * b_lo)
    s, e2 = _fast_two_sum(s, a_lo * b_hi)
    return s, (e1 + e2) + a_lo * b_lo


def _square(a):
    """:func:`_two_prod` of ``a`` with itself: one split, and ``2 a_hi a_lo`` in
    one exact product."""
    a_hi, a_lo = _split(a)
    s, e = _fast_two_sum(a_hi * a_hi, 2 * a_hi * a_lo)
    return s, e + a_lo * a_lo


def _opaque(*values):
    """Constants XLA cannot see into: its simplifier reassociates float
    arithmetic with constants (``(a + c1) + c2`` to ``a + (c1 + c2)``), which
    would fold the error terms of :func:`_two_sum` to zero."""
    return jax.lax.optimization_barrier(tuple(jnp.asarray(v, _F32) for v in values))


def _reciprocal(b):
    """``1 / b`` for a float32 ``b != 0``, within an ulp or two, without a division:
    XLA fuses a division (a root, a logarithm) into no consumer that may use its
    value twice, and each op left unfused is a kernel of its own, compiled apart
    (milliseconds each). The integer estimate ``0x7EF311C3 - bits(|b|)`` is within
    12%, and each Newton step ``y + y (1 - b y)`` squares the error: three reach
    ``2**-24``."""
    bits = jax.lax.bitcast_convert_type(b, jnp.uint32)
    sign = bits & np.uint32(0x80000000)
    estimate = (np.uint32(0x7EF311C3) - (bits & np.uint32(0x7FFFFFFF))) | sign
    y = jax.lax.bitcast_convert_type(estimate, _F32)
    for _ in range(3):
        y = y + y * (1 - b * y)
    return y


def _reciprocal_sqrt(x):
    """``1 / sqrt(x)`` for a float32 ``x > 0``, within an ulp or two, without a
    root (see :func:`_reciprocal`): the integer estimate ``0x5F375A86 - bits(x) /
    2`` is within 4%, and three Newton steps ``y (3/2 - x y**2 / 2)`` reach
    float32's."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    y = jax.lax.bitcast_convert_type(np.uint32(0x5F375A86) - (bits >> 1), _F32)
    for _ in range(3):
        y = y * (1.5 - 0.5 * x * y * y)
    return y


def _decimal_pair(value: decimal.Decimal) -> tuple[np.float32, np.float32]:
    hi = np.float32(float(value))
    if not np.isfinite(hi):
        return hi, np.float32(0)
    return hi, np.float32(float(_CONTEXT.subtract(value, decimal.Decimal(float(hi)))))


def _pair_columns(values) -> tuple[np.ndarray, np.ndarray]:
    """The pairs nearest ``values`` (decimals), as a float32 column of their
    ``hi`` and one of their ``lo``: a table a traced index reads."""
    pairs = [_decimal_pair(value) for value in values]
    return (
        np.array([p[0] for p in pairs], np.float32),
        np.array([p[1] for p in pairs], np.float32),
    )


def _single(x: Any):
    """``x`` as one float32 where it is one exactly (a float32 array, a Python
    number float32 represents), for the cheaper operations with such an operand;
    otherwise None."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        if float(np.float32(x)) == x:
            return _opaque(x)[0]
        return None
    if isinstance(x, (jax.Array, np.ndarray, np.generic)) and x.dtype == _F32:
        return x
    return None


@jax.tree_util.register_pytree_node_class
class Doubled:
    """A real number ``hi + lo`` (float32 arrays of one shape, ``hi`` the float32
    nearest the sum), with Python's arithmetic operators and comparisons.

    The other operand may be a :class:`Doubled`, a Python number (split exactly at
    trace time) or a JAX/NumPy array (integers split exactly). Results are
    :class:`Doubled`; comparisons give boolean arrays.
    """

    __slots__ = ("hi", "lo")
    # NumPy defers its operators to this class (``np.float32(2) * d``).
    __array_priority__ = 1000
    # unhashable, as a tracer is: no static (hashed) part of a jit takes one
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, hi, lo) -> None:
        self.hi = hi
        self.lo = lo

    def __repr__(self) -> str:
        return f"Doubled({self.hi!r}, {self.lo!r})"

    def tree_flatten(self):
        return (self.hi, self.lo), None

    @classmethod
    def tree_unflatten(cls, aux, children) -> Doubled:
        return cls(*children)

    def __bool__(self) -> bool:
        raise TypeError("a Doubled has no truth value; compare it instead")

    # --- arithmetic ------------------------------------------------------------

    def __neg__(self) -> Doubled:
        return Doubled(-self.hi, -self.lo)

    def __add__(self, other: Any) -> Doubled:
        """Joldes, Muller and Popescu's accurate sums (2017): with a float32
        ``b``, ``s + e = hi + b`` then ``lo + e`` (within ``2 u**2``); with a pair,
        both parts' two-sums (within ``3 u**2``), ``u = 2**-24``."""
        single = _single(other)
        if single is not None:
            s, e = _two_sum(self.hi, single)
            return Doubled(*_fast_two_sum(s, self.lo + e))
        other = of(other)
        s, e = _two_sum(self.hi, other.hi)
        t, f = _two_sum(self.lo, other.lo)
        s, e = _fast_two_sum(s, e + t)
        return Doubled(*_fast_two_sum(s, e + f))

    __radd__ = __add__

    def __sub__(self, other: Any) -> Doubled:
        return self + -other

    def __rsub__(self, other: Any) -> Doubled:
        return -self + other

    def __mul__(self, other: Any) -> Doubled:
        """``hi b_hi`` exactly (:func:`_two_prod`) plus the cross terms, which are
        ``2**-24`` of it, in float32; by a Python power of two, both parts scaled
        (exactly)."""
        if isinstance(other, (int, float)) and other != 0:
            mantissa, _ = math.frexp(other)
            if abs(mantissa) == 0.5:
                return Doubled(self.hi * other, self.lo * other)
        single = _single(other)
        if single is not None:
            s, e = _two_prod(self.hi, single)
            return Doubled(*_fast_two_sum(s, e + self.lo * single))
        other = of(other)
        s, e = _two_prod(self.hi, other.hi)
        return Doubled(*_fast_two_sum(s, e + (self.hi * other.lo + self.lo * other.hi)))

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Doubled:
        """``q + r / b_hi`` for a float32 quotient ``q`` (``a_hi`` times the
        reciprocal of ``b_hi``, corrected once to within an ulp): the residual ``r
        = a - b q`` is computed exactly to ``2**-48`` of ``a`` (``b_hi q``
        exactly; ``a_hi`` minus it is exact, the two within an ulp or so)."""
        if isinstance(other, (int, float)) and other != 0:
            mantissa, _ = math.frexp(other)
            if abs(mantissa) == 0.5:  # by a power of two: exactly, as a product
                return self * (1 / other)
        other = of(other)
        y = _reciprocal(other.hi)
        q = self.hi * y
        q = q + (self.hi - other.hi * q) * y
        s, e = _two_prod(other.hi, q)
        r = ((self.hi - s) - e) + (self.lo - other.lo * q)
        return Doubled(*_fast_two_sum(q, r * y))

    def __rtruediv__(self, other: Any) -> Doubled:
        return of(other) / self

    def __pow__(self, exponent: Any) -> Doubled:
        """``self ** exponent`` for ``self >= 0``: ``0.5`` is :func:`sqrt`, as
        Python's correctly rounded ``pow(x, 0.5)``, and ``0.25`` and ``0.75``
        (ASGD's default) are roots of it, a fifth of ``exp(e log x)``'s ops;
        otherwise ``exp(e log x)``."""
        if isinstance(exponent, (int, float)) and exponent in (0.25, 0.5, 0.75):
            root = sqrt(self)
            if exponent == 0.5:
                return root
            quartic = sqrt(root)
            return quartic if exponent == 0.25 else root * quartic
        result = exp(log(self) * exponent)
        return where(self.hi == 0, of(0.0), result)

    def __rpow__(self, base: Any) -> Doubled:
        """``base ** self`` for a Python ``base > 0`` (NAdam's ``0.96 ** x``)."""
        if not isinstance(base, (int, float)):
            return of(base) ** self
        return exp(self * _decimal_constant(_log(float(base))))

    # --- comparisons -------------------------------------------------------------

    def __gt__(self, other: Any):
        other = of(other)
        return (self.hi > other.hi) | ((self.hi == other.hi) & (self.lo > other.lo))

    def __lt__(self, other: Any):
        return of(other) > self

    def __ge__(self, other: Any):
        return ~(self < other)

    def __le__(self, other: Any):
        return ~(self > other)


def _decimal_constant(value: decimal.Decimal) -> Doubled:
    return Doubled(*_opaque(*_decimal_pair(value)))


def of(x: Any) -> Doubled:
    """``x`` as a :class:`Doubled`: a Python number (or an exact decimal) split
    exactly (to 48 bits), an integer array split exactly, a float array as ``(x,
    0)``."""
    if isinstance(x, Doubled):
        return x
    if isinstance(x, (int, float, decimal.Decimal)):
        return _decimal_constant(decimal.Decimal(x))
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        # 19 and 12 bits: each part is exact in float32, and so their sum's pair
        x = x.astype(jnp.int32)
        low = x & 0xFFF
        return Doubled(*_two_sum((x - low).astype(_F32), low.astype(_F32)))
    return Doubled(x.astype(_F32), jnp.zeros(x.shape, _F32))


def exact(x: Any) -> Any:
    """``x`` as torch's Python double for scalar arithmetic: with x64 off a
    :class:`Doubled` (a step count or a float32 scalar exactly); with x64 on ``x``
    itself (the arithmetic promotes it to float64)."""
    if scalar_dtype() != _F32 or isinstance(x, (int, float)):
        return x
    return of(x)


def rounded(x: Any) -> Any:
    """``x`` rounded once to float32 where it is a :class:`Doubled` (its ``hi``: the
    float32 nearest ``hi + lo``; a :class:`Float`'s weakly typed, as its Python
    float would be); anything else as it is."""
    return x.hi if isinstance(x, Doubled) else x


def _weak(x):
    """``x`` weakly typed, as a Python float passed to jit is: it takes the dtype
    of the array it meets (bfloat16 params stay bfloat16)."""
    return lax_internal._convert_element_type(x, weak_type=True)


def _like(x: Any, array: Any):
    """A float32 ``x`` as a Python float meets ``array``: in the array's dtype
    where that is inexact (JAX's weak typing; torch's kernels round a double
    scalar so), else as it is."""
    dtype = getattr(array, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.inexact):
        return x.astype(dtype)
    return x


def _number(x: Any) -> bool:
    return isinstance(x, (int, float, Float)) and not isinstance(x, bool)


@jax.tree_util.register_pytree_node_class
class Float(Doubled):
    """A Python float passed to a compiled step as a traced pair (the facade's
    hyperparameters with x64 off, so that changing lr never recompiles), which
    behaves as the Python float would: arithmetic with Python numbers and other
    :class:`Float` values is exact (a :class:`Float`), with a :class:`Doubled` it
    is pair arithmetic (a :class:`Doubled`), and with an array it is ``hi``'s,
    the float32 nearest the double, in the array's dtype (an array). So a rule's
    ``1 - beta`` and ``lr / (1 - beta ** step)`` round once, as torch's Python
    doubles do, and ``beta * exp_avg`` is float32's as before. JAX functions take
    ``rounded(x)``.

    A hyperparameter (:meth:`split`) also carries its natural logarithm as a
    pair (``log``, computed on the host), so that ``beta ** step`` is one
    :func:`exp` (:func:`power`), a third of ``exp(log(beta) step)``'s ops.
    """

    __slots__ = ("log",)

    def __init__(self, hi, lo, log: Doubled | None = None) -> None:
        super().__init__(hi, lo)
        self.log = log

    def tree_flatten(self):
        return (self.hi, self.lo, self.log), None

    @classmethod
    def tree_unflatten(cls, aux, children) -> Float:
        return cls(*children)

    @classmethod
    def split(cls, value: float | np.floating) -> Float:
        """``value`` (a Python float) as Python floats, computed on the host:
        ``hi`` the float32 nearest, ``lo`` the float32 nearest the (exact) rest,
        and its logarithm's pair (NaN where ``value <= 0``); jit takes them as
        weakly typed float32 scalars."""
        return cls(*_split_float(float(value)))

    @classmethod
    def _of(cls, x: Doubled) -> Float:
        return cls(_weak(x.hi), _weak(x.lo))

    @classmethod
    def of_pair(cls, x: Doubled) -> Float:
        """The pair ``x`` (a computed double, such as a schedule's value) as a
        Python float passed traced: weakly typed parts, computing as a
        :class:`Float` does (no logarithm carried)."""
        return cls._of(x)

    def _binary(self, op, other: Any, reflected: bool = False) -> Any:
        if isinstance(other, Doubled) and not isinstance(other, Float):
            pair = Doubled(self.hi, self.lo)
            return op(other, pair) if reflected else op(pair, other)
        if _number(other):
            pair = Doubled(self.hi, self.lo)
            result = op(other, pair) if reflected else op(pair, other)
            return Float._of(result) if isinstance(result, Doubled) else result
        value = _like(self.hi, other)
        return op(other, value) if reflected else op(value, other)

    def __neg__(self) -> Float:
        return Float(-self.hi, -self.lo)

    def __add__(self, other: Any) -> Any:
        return self._binary(operator.add, other)

    def __radd__(self, other: Any) -> Any:
        return self._binary(operator.add, other, True)

    def __sub__(self, other: Any) -> Any:
        return self._binary(operator.sub, other)

    def __rsub__(self, other: Any) -> Any:
        return self._binary(operator.sub, other, True)

    def __mul__(self, other: Any) -> Any:
        return self._binary(operator.mul, other)

    def __rmul__(self, other: Any) -> Any:
        return self._binary(operator.mul, other, True)

    def __truediv__(self, other: Any) -> Any:
        return self._binary(operator.truediv, other)

    def __rtruediv__(self, other: Any) -> Any:
        return self._binary(operator.truediv, other, True)

    def __pow__(self, other: Any) -> Any:
        return self._binary(operator.pow, other)

    def __rpow__(self, other: Any) -> Any:
        return self._binary(operator.pow, other, True)

    def __gt__(self, other: Any):
        return self._binary(operator.gt, other)

    def __lt__(self, other: Any):
        return self._binary(operator.lt, other)

    def __ge__(self, other: Any):
        return self._binary(operator.ge, other)

    def __le__(self, other: Any):
        return self._binary(operator.le, other)


@functools.lru_cache(maxsize=1024)
def _split_float(value: float) -> tuple[float, float, Doubled]:
    with np.errstate(over="ignore"):
        hi = np.float32(value)
    lo = np.float32(value - float(hi)) if np.isfinite(hi) else np.float32(0)
    if value > 0 and math.isfinite(value):
        log = _decimal_pair(decimal.Decimal(value).ln(_CONTEXT))
    else:
        log = (np.float32(np.nan), np.float32(0))
    return float(hi), float(lo), Doubled(float(log[0]), float(log[1]))


def float_powers(terms: Sequence[tuple[Doubled, Any]]) -> list[Doubled]:
    """``base ** count`` of each ``(base, count)``: a traced pair ``base >= 0`` (a
    :class:`Float`) and an integer count ``>= 1``, as ``exp(count log(base))``
    with the logarithm the host's where the base carries it
    (:meth:`Float.split`); within a few units of ``2**-48`` of ``|count
    log(base)|`` relative (:func:`powers` is cheaper where the base is a Python
    number). One :func:`exp` of a vector computes them all (each is about a
    hundred ops)."""
    logarithms = []
    for base, _ in terms:
        logarithm = getattr(base, "log", None)
        if logarithm is None:
            logarithm = log(Doubled(base.hi, base.lo))
        logarithms.append(logarithm)
    exponent = Doubled(
        jnp.stack([jnp.asarray(x.hi, _F32) for x in logarithms]),
        jnp.stack([jnp.asarray(x.lo, _F32) for x in logarithms]),
    ) * of(jnp.stack([jnp.asarray(count, jnp.int32) for _, count in terms]))
    result = exp(exponent)
    return [
        where(base.hi == 0, of(0.0), Doubled(result.hi[i], result.lo[i]))
        for i, (base, _) in enumerate(terms)
    ]


def rounded_values(scalars: Any, new_scalars: dict) -> tuple[Any, dict]:
    """:func:`rounded` of each of a rule's per-step scalars (a NamedTuple, see
    :mod:`functorch_optim.rule`; None fields stay None) and new scalar state (the
    arrays its per-leaf part and the runner take); with x64 off, their float32
    and boolean scalars :func:`_computed_once`, together (the per-step scalars'
    fields in order, then the scalar state's entries)."""
    values = [rounded(v) for v in (*scalars, *new_scalars.values())]
    if scalar_dtype() == _F32:
        once_at = [
            i
            for i, v in enumerate(values)
            if isinstance(v, jax.Array)
            and v.shape == ()
            and v.dtype in (_F32, jnp.bool_)
        ]
        if once_at:
            once = _computed_once(*(values[i].astype(_F32) for i in once_at))
            for i, value in zip(once_at, once, strict=True):
                values[i] = value.astype(values[i].dtype)
    count = len(scalars)
    return type(scalars)(*values[:count]), dict(
        zip(new_scalars, values[count:], strict=True)
    )


def lookup(values: Sequence[Any], index) -> Doubled:
    """``values[index]`` for Python numbers (or exact decimals) ``values`` and a
    traced integer ``index``: the pairs nearest them, in a table computed at trace
    time (opaque to XLA's simplifier, as every constant of pair arithmetic)."""
    table_hi, table_lo = _opaque(*_pair_columns(decimal.Decimal(v) for v in values))
    return Doubled(table_hi[index], table_lo[index])


def where(condition, x: Any, y: Any) -> Doubled:
    """``jnp.where`` of two :class:`Doubled` values."""
    x, y = of(x), of(y)
    return Doubled(jnp.where(condition, x.hi, y.hi), jnp.where(condition, x.lo, y.lo))


def maximum(x: Any, y: Any) -> Any:
    """``jnp.maximum``, also of :class:`Doubled` values (as Python's ``max``)."""
    if not (isinstance(x, Doubled) or isinstance(y, Doubled)):
        return jnp.maximum(x, y)
    return where(of(y) > x, y, x)


def minimum(x: Any, y: Any) -> Any:
    """``jnp.minimum``, also of :class:`Doubled` values (as Python's ``min``: ``x``
    unless ``y < x``)."""
    if not (isinstance(x, Doubled) or isinstance(y, Doubled)):
        return jnp.minimum(x, y)
    return where(of(y) < x, y, x)


def floor(x: Doubled) -> Doubled:
    """The largest integer ``<= x``: ``floor(hi)``, or where ``hi`` is an integer
    ``hi + floor(lo)`` (``|lo|`` is at most half an ulp of ``hi``, so the pair
    crosses no other integer); exact, 5 ops."""
    x = of(x)
    high = jnp.floor(x.hi)
    low = jnp.where(high == x.hi, jnp.floor(x.lo), 0.0)
    return Doubled(*_fast_two_sum(high, low))


# --- functions ----------------------------------------------------------------


def sqrt(x: Doubled) -> Doubled:
    """The square root of ``x >= 0``: a float32 root ``s`` (``x_hi`` times its
    reciprocal root, corrected once to within an ulp) plus ``(x - s**2) / 2s``,
    with ``s**2`` exact (one Newton step)."""
    positive = x.hi > 0
    safe = jnp.where(positive, x.hi, 1.0)
    y = _reciprocal_sqrt(safe)
    root = safe * y
    root = root + (safe - root * root) * (0.5 * y)
    p, e = _square(root)
    residual = ((safe - p) - e) + x.lo
    result = Doubled(*_fast_two_sum(root, residual * (0.5 * y)))
    zero = jnp.zeros_like(x.hi)
    return Doubled(
        jnp.where(positive, result.hi, jnp.where(x.hi == 0, zero, jnp.nan)),
        jnp.where(positive, result.lo, zero),
    )


# exp's table: 2**(j / 128), so the reduced argument is within log(2) / 256
_EXP_STEPS = 128
_LN2 = decimal.Decimal(2).ln(_CONTEXT)


@functools.cache
def _exp_constants() -> tuple[np.ndarray, ...]:
    """The table of ``2**(j / 128)`` (pairs), and ``log(2) / 128`` in three parts:
    9 significant bits (a product with ``|k| < 2**15`` is exact), 24, and the
    rest, under ``2**-33`` of it."""
    step = _CONTEXT.divide(_LN2, _EXP_STEPS)
    exponent = math.frexp(float(step))[1]
    first = math.ldexp(round(math.ldexp(float(step), 9 - exponent)), exponent - 9)
    second = np.float32(float(step - decimal.Decimal(first)))
    third = step - decimal.Decimal(first) - decimal.Decimal(float(second))
    return (
        *_pair_columns(
            _CONTEXT.power(2, _CONTEXT.divide(j, _EXP_STEPS)) for j in range(_EXP_STEPS)
        ),
        np.array([first, second, float(third)], np.float32),
    )


def _power_of_two(k):
    """``2.0 ** k`` as float32, for integer ``-126 <= k <= 127``."""
    return jax.lax.bitcast_convert_type((k + 127) << 23, _F32)


def exp(x: Doubled) -> Doubled:
    """``e ** x = 2**(k / 128) e**r`` with ``r = x - k log(2) / 128``, ``|r| <=
    log(2) / 256``: ``2**(j / 128)`` from a table of pairs, ``e**r = 1 + r + r**2/2
    + r**3 (1/6 + r/24 + r**2/120)``, the last part in float32 (at most ``3e-9``,
    so its rounding is ``2**-52``) and the rest in pairs; the higher terms are under
    ``2**-58``."""
    # beyond: 0 and inf in float32; k // 128 splits into two normal powers of two
    hi = jnp.clip(x.hi, -170.0, 89.0)
    k = jnp.round(hi * float(_EXP_STEPS / _LN2))
    table_hi, table_lo, (first, second, third) = _opaque(*_exp_constants())
    # Cody and Waite's reduction: hi - k first is exact (the two within a factor
    # 2, or k = 0), and k second exact as a pair
    r = (
        Doubled(*_two_sum(hi - k * first, jnp.where(hi == x.hi, x.lo, 0.0)))
        - Doubled(*_two_prod(k, second))
        - k * third
    )
    cubic = r.hi * r.hi * r.hi * (1 / 6 + r.hi * (1 / 24 + r.hi * (1 / 120)))
    square = r * r
    series = (r + (square * 0.5 + cubic)) + 1
    k = k.astype(jnp.int32)
    j = k & (_EXP_STEPS - 1)
    result = series * Doubled(table_hi[j], table_lo[j])
    # 2**(k // 128) in two factors, each within float32's normal range
    n = k >> 7
    half = n >> 1
    scale = _power_of_two(half) * _power_of_two(n - half)
    return Doubled(result.hi * scale, result.lo * scale)


def _log32(x):
    """The natural logarithm of a float32 ``x > 0`` to about float32's accuracy,
    without a logarithm (see :func:`_reciprocal`): ``x = m 2**k`` with ``m`` within
    ``sqrt(2)`` of 1, and ``log(m) = 2 atanh(t)``, ``t = (m - 1) / (m + 1)``,
    ``|t| < 0.172``, to ``t**7`` (the rest under ``3e-8``)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    # the significand's bits with the exponent of 1, or of 1/2 above sqrt(2)
    high = (bits & 0x7FFFFF) > 0x3504F3
    m = jax.lax.bitcast_convert_type(
        (bits & 0x7FFFFF) | jnp.where(high, 0x3F000000, 0x3F800000), _F32
    )
    k = ((bits >> 23) - jnp.where(high, 126, 127)).astype(_F32)
    t = (m - 1) * _reciprocal(m + 1)
    t2 = t * t
    return k * float(_LN2) + 2 * t * (1 + t2 * (1 / 3 + t2 * (1 / 5 + t2 * (1 / 7))))


def log(x: Doubled) -> Doubled:
    """The natural logarithm of ``x > 0``: a float32 ``y`` (:func:`_log32`), then
    ``y + log(1 + d)`` with ``1 + d = x e**-y`` to ``2**-48`` and ``log(1 + d) = d
    - d**2/2`` (``|d|`` is under ``2**-20``, so ``d**3/3`` is under ``2**-61``)."""
    y = _log32(x.hi)
    d = x * exp(Doubled(-y, jnp.zeros_like(y))) - 1
    return (d + y) - d.hi * d.hi * 0.5


# pi to 60 digits: 1 + cos(pi x)'s constants are computed from it on the host
_PI = decimal.Decimal("3.14159265358979323846264338327950288419716939937510582097494")


@functools.cache
def _sine_constants() -> tuple[np.ndarray, ...]:
    """``sin(y) / y = 1 + c_1 z + c_2 z**2 + ...`` (``z = y**2``, ``c_n =
    (-1)**n / (2n + 1)!``): ``c_1 .. c_4`` and ``pi / 2`` as pairs (``hi`` and
    ``lo`` rows), ``c_5 .. c_7`` in float32."""
    coefficients, factorial = [], 1
    for n in range(1, 8):
        factorial *= (2 * n) * (2 * n + 1)
        coefficients.append(_CONTEXT.divide((-1) ** n, factorial))
    return (
        *_pair_columns([*coefficients[:4], _CONTEXT.divide(_PI, 2)]),
        np.array([float(c) for c in coefficients[4:]], np.float32),
    )


def _is_integer(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.integer)


def one_plus_cos_pi(numerator: Any, denominator: Any = 1) -> Doubled:
    """``1 + cos(pi n / d)`` (cosine annealing's factor) to a few units of
    ``2**-48`` relative, also where it nears 0 (``n / d`` near an odd integer).

    The argument is reduced in half-turns, exactly, so no multi-part constant of
    ``pi`` is needed: ``n / d = k + r`` with ``k`` the nearest integer and ``r =
    (n - k d) / d``, ``|r| <= 1/2``, whose numerator is exact (integers: an int32
    difference; pairs: exact wherever ``n`` and ``k d`` have at most 48
    significant bits together). Then ``1 + cos(pi x) = 2 - 2 sin(y)**2`` for an
    even ``k`` and ``2 sin(y)**2`` for an odd one, ``y = pi r / 2``, ``|y| <= pi /
    4``, with ``sin(y) = y (1 + z P(z))``, ``z = y**2``: the series' terms to
    ``z**4`` in pairs and ``z**5 .. z**7`` in float32 (under ``2**-28`` of the sum,
    so their rounding is ``2**-52``; ``z**8`` is under ``2**-53``). Relative
    accuracy holds through the zero: ``r`` is relative to 1 there, and so are
    ``sin(y)`` and its square; measured within 9 units of ``2**-48``. About 300
    float32 ops (the series' Horner steps fused, :func:`_multiply_add`; squares
    :func:`_pair_square`), and 85 more where ``d`` is traced (a quotient); a
    Python ``d`` gives ``pi / 2d`` as a constant.

    ``numerator`` and ``denominator``: Python numbers, integer arrays (a step
    count) or :class:`Doubled` values.
    """
    pairs_hi, pairs_lo, tail = _opaque(*_sine_constants())
    python_d = isinstance(denominator, (int, float)) and not isinstance(
        denominator, bool
    )
    if _is_integer(numerator) and _is_integer(denominator):
        count = jnp.asarray(numerator, jnp.int32)
        length = denominator if python_d else jnp.asarray(denominator, jnp.int32)
        inverse = np.float32(1 / length) if python_d else _reciprocal(length * 1.0)
        k = jnp.round(count.astype(_F32) * inverse).astype(jnp.int32)
        reduced = of(count - k * length)
    else:
        pair = of(numerator)
        inverse = (
            np.float32(1 / denominator) if python_d else _reciprocal(of(denominator).hi)
        )
        nearest = jnp.round(pair.hi * inverse)
        reduced = pair - of(denominator) * nearest
        k = nearest.astype(jnp.int32)
    if python_d:
        y = reduced * _decimal_constant(
            _CONTEXT.divide(_PI, 2 * decimal.Decimal(denominator))
        )
    else:
        y = reduced / of(denominator) * Doubled(pairs_hi[4], pairs_lo[4])
    z = _pair_square(y)
    zh = z.hi
    series = Doubled(pairs_hi[3], pairs_lo[3]) + zh * (
        tail[0] + zh * (tail[1] + zh * tail[2])
    )
    for i in (2, 1, 0):
        series = _multiply_add(z, series, Doubled(pairs_hi[i], pairs_lo[i]))
    sine = y * _multiply_add(z, series, Doubled(*_opaque(1.0, 0.0)))
    twice_square = _pair_square(sine) * 2
    return where((k & 1) == 1, twice_square, 2 - twice_square)


def _pair_square(x: Doubled) -> Doubled:
    """``x * x``: ``hi**2`` exactly (:func:`_square`, one split) and ``2 hi lo``
    in float32; 16 ops to a product's 27."""
    s, e = _square(x.hi)
    return Doubled(*_fast_two_sum(s, e + 2 * x.hi * x.lo))


def _multiply_add(a: Doubled, b: Doubled, c: Doubled) -> Doubled:
    """``a * b + c`` for ``|c|`` well above ``|a b|`` (a series' Horner step):
    ``a_hi b_hi`` exactly, ``c_hi`` added exactly, the rest in float32; 34 ops to
    a product and a sum's 47."""
    p, e = _two_prod(a.hi, b.hi)
    s, f = _two_sum(c.hi, p)
    rest = (e + f) + ((a.hi * b.lo + a.lo * b.hi) + c.lo)
    return Doubled(*_fast_two_sum(s, rest))


@functools.cache
def _log(base: float) -> decimal.Decimal:
    return decimal.Decimal(base).ln(_CONTEXT)


def constant_power(base: float, exponent: float) -> decimal.Decimal:
    """``base ** exponent`` of Python numbers, exactly (50 digits): a base for
    :func:`powers` (NAdam's ``0.96 ** (t psi)`` is ``(0.96 ** psi) ** t``)."""
    return _CONTEXT.power(decimal.Decimal(base), decimal.Decimal(exponent))


# beta ** count: the count's bits in chunks of at most 7 bits (8 for counts that
# need more than 28), at most 4: each chunk's factor a table lookup
_WIDTH = 7
_CHUNKS = 4


def _bits(base: decimal.Decimal) -> int:
    """How many low bits of a count reach ``base ** count`` at float32's normal
    range: the fewest ``b`` with ``base ** 2**b`` under ``2**-126``, at most 31 (an
    int32 count)."""
    if base >= 1:
        return 31
    if base <= 0:
        return 0
    # base ** 2**b < 2**-126 once 2**b log2(1 / base) > 126
    scale = float(_CONTEXT.divide(-base.ln(_CONTEXT), _LN2))
    return min(31, max(0, math.floor(math.log2(126 / scale)) + 1))


@functools.cache
def _power_table(base: decimal.Decimal) -> tuple[int, int, int, np.ndarray]:
    """The bits of a count that reach ``base ** count`` (:func:`_bits`), the
    number ``n`` and width ``w`` of their chunks, and ``base ** (v 2**(w j))`` for
    ``v < 2**w``, ``j < n``: the pairs nearest the exact values (rows ``(hi,
    lo)``), chunk ``j``'s from row ``j 2**w``."""
    bits = _bits(base)
    chunks = min(_CHUNKS, max(1, -(-bits // _WIDTH)))
    width = -(-bits // chunks)
    rows = []
    for j in range(chunks):
        factor = _CONTEXT.power(base, 2 ** (width * j))
        value = decimal.Decimal(1)
        for _ in range(2**width):
            rows.append(_decimal_pair(value))
            value = _CONTEXT.multiply(value, factor)
    return bits, chunks, width, np.array(rows, np.float32)


def powers(terms: Sequence[tuple[float | decimal.Decimal, Any]]) -> list[Doubled]:
    """``base ** count`` of each ``(base, count)``: a Python (or exact decimal)
    ``base >= 0`` and an integer count ``>= 0`` (a traced int32).

    The count's low ``b`` bits (:func:`_bits`; a higher bit makes the power a
    float32 zero) split into at most four chunks of at most 7 bits (two for
    Adam's 0.9, three for 0.999), and ``base ** (v 2**(w j))`` for every chunk
    value ``v`` is a pair computed at trace time (:func:`_power_table`), so the
    power is the product of a table entry per chunk. Each entry is the pair
    nearest its exact value, so the error is a few units of ``2**-48`` whatever
    the count (a product of ``count`` factors would grow with it).
    """
    tables = [_power_table(decimal.Decimal(base)) for base, _ in terms]
    (table,) = _opaque(np.concatenate([rows for _, _, _, rows in tables]))
    results, start = [], 0
    for (_, count), (bits, chunks, width, rows) in zip(terms, tables, strict=True):
        count = jnp.asarray(count, jnp.int32)
        factors = []
        for j in range(chunks):
            chunk = (count >> (width * j)) & (2**width - 1)
            entry = jax.lax.dynamic_index_in_dim(
                table,
                chunk + (start + (j << width)),
                keepdims=False,
                allow_negative_indices=False,
            )
            factors.append(Doubled(entry[0], entry[1]))
        start += len(rows)
        product = functools.reduce(operator.mul, factors)
        if bits < 31:
            beyond = (count >> bits) != 0
            product = Doubled(
                jnp.where(beyond, 0.0, product.hi), jnp.where(beyond, 0.0, product.lo)
            )
        results.append(product)
    return results

"""The torch-exact kernels and step pieces the per-leaf rules share.

Each function computes as one of torch's CPU kernels does (scalars and arithmetic in
:func:`opmath_dtype`, float32 for bfloat16/float16 tensors, one rounding per op) and
says which torch path it reproduces. torch repeats the Adam-style moment updates and
the weight-decay branches in each algorithm's file; here they are written once. Kept
apart from :mod:`functorch_optim.rule` (what a rule is, which options are valid)
because this is the numerics, which the rules and :mod:`functorch_optim.swa_utils`
call; it reads options through :mod:`functorch_optim.rule`, never the reverse.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import doubled
from .core import scalar_dtype
from .rule import Array, Options, nonzero

# The dtype of torch's scalar state tensors other than ``step`` (ASGD's ``eta`` and
# ``mu``, NAdam's ``mu_product``): ``_get_scalar_dtype()``, float32 under torch's
# default dtype. torch reads them back with ``.item()`` every step, so their float32
# rounding is part of its trajectory, for float64 parameters too.
TORCH_SCALAR_DTYPE = jnp.float32


def tensor_scalar(x):
    """A hyperparameter as torch's capturable path holds it: a Python number as a
    float32 scalar tensor (torch's scalar dtype), a tensor as it is."""
    if isinstance(x, (int, float, doubled.Float)):
        return jnp.asarray(doubled.rounded(x), TORCH_SCALAR_DTYPE)
    return x


def rdiv(number, tensor):
    """torch's ``number / tensor`` for a scalar tensor: a Python number divides as
    ``tensor.reciprocal() * number`` (torch's ``__rtruediv__``), a tensor truly."""
    if isinstance(number, (int, float, doubled.Float)):
        return (1 / tensor) * number
    return number / tensor


def step_powers(*terms: tuple[Any, Array]) -> tuple[Any, ...]:
    """``base ** step`` of each ``(base, step)`` for a step count, as torch computes
    ``beta ** step`` (Python's float ``pow``).

    With x64 on, as a float power: ``jnp.power`` unrolls a concrete integer
    exponent into ``integer_pow``, which compiles anew for every step value and
    rounds apart from ``pow``; ``step * 1.0`` is a weakly typed float, so the
    result has the dtype ``base ** step`` has. With x64 off, the powers of Python
    (or exact decimal) bases are pairs to double accuracy
    (:func:`~functorch_optim.doubled.powers`, all from one lookup), and so are
    those of a facade's traced Python float (a
    :class:`~functorch_optim.doubled.Float`:
    :func:`~functorch_optim.doubled.float_powers`, by its logarithm, all from one
    ``exp``); another traced base (a JAX scalar, which torch would hold as a
    tensor) and a float step (torch's capturable float32 tensor) give the float32
    power, as before the pairs."""
    paired = [
        i
        for i, (base, step) in enumerate(terms)
        if scalar_dtype() == jnp.float32
        and isinstance(base, (int, float, decimal.Decimal))
        and jnp.issubdtype(jnp.result_type(step), jnp.integer)
    ]
    of_floats = [
        i
        for i, (base, step) in enumerate(terms)
        if isinstance(base, doubled.Float)
        and jnp.issubdtype(jnp.result_type(step), jnp.integer)
    ]
    results: dict[int, Any] = {}
    if of_floats:
        pairs = doubled.float_powers([terms[i] for i in of_floats])
        results.update(zip(of_floats, pairs, strict=True))
    if paired:
        pairs = doubled.powers([terms[i] for i in paired])
        results.update(zip(paired, pairs, strict=True))
    for i, (base, step) in enumerate(terms):
        if i not in results:
            if jnp.issubdtype(jnp.result_type(step), jnp.integer):
                step = step * 1.0
            results[i] = doubled.rounded(base) ** step
    return tuple(results[i] for i in range(len(terms)))


def step_power(base: Any, step: Array) -> Any:
    """``base ** step`` for a step count (:func:`step_powers`)."""
    return step_powers((base, step))[0]


def bias_corrections(
    step: Array, *betas: Any, capturable: bool = False, powers: Sequence[Any] = ()
) -> tuple[Any, ...]:
    """torch's bias corrections ``1 - beta ** step`` of each of ``betas``, then
    the powers ``base ** step`` of each of ``powers`` (those a rule reads
    besides: RAdam's ``beta2 ** step``, NAdam's momentum decay), all computed
    together (a base given twice, as the same object, once). ``step`` is the
    count after this step (an int32 scalar).

    torch's single-tensor path computes them in Python double from the count
    (Adam's and the others' float32 step tensor read with ``.item()``,
    SparseAdam's Python int: the same double below ``2**24`` steps): here by
    :func:`step_powers`, in float64 with x64 on and in float32 pairs with it
    off. With ``capturable``, torch's capturable path: the step a float32
    tensor and each base a float32 scalar tensor (:func:`tensor_scalar`), so
    the powers and corrections are float32 tensors."""
    bases: list[Any] = []
    for base in (*betas, *powers):
        if not any(base is b for b in bases):
            bases.append(base)
    if capturable:
        step = step.astype(TORCH_SCALAR_DTYPE)
        values = [tensor_scalar(base) ** step for base in bases]
    else:
        values = list(step_powers(*((base, step) for base in bases)))

    def power(base: Any) -> Any:
        return next(v for b, v in zip(bases, values, strict=True) if b is base)

    return (*(1 - power(beta) for beta in betas), *(power(base) for base in powers))


def lerp(start: Array, end: Array, weight: Any) -> Array:
    """``torch.lerp`` with a scalar weight, with torch's two-sided formula.

    torch computes ``start + w * (end - start)`` for ``|w| < 0.5`` and
    ``end - (end - start) * (1 - w)`` otherwise, which keeps ``w = 1`` exact.
    """
    diff = end - start
    if isinstance(weight, (int, float)):
        if abs(weight) < 0.5:
            return start + weight * diff
        return end - diff * (1 - weight)
    return jnp.where(
        jnp.abs(weight) < 0.5, start + weight * diff, end - diff * (1 - weight)
    )


def to_real(x: Array | None) -> Array | None:
    """``torch.view_as_real``: a complex array as a real one with a trailing axis 2."""
    if x is None or not jnp.iscomplexobj(x):
        return x
    return jnp.stack([x.real, x.imag], axis=-1)


def to_complex(x: Array | None, like: Array | None) -> Array | None:
    """Inverse of :func:`to_real` for an array that was complex like ``like``."""
    if x is None or like is None or not jnp.iscomplexobj(like):
        return x
    return jax.lax.complex(x[..., 0], x[..., 1]).astype(like.dtype)


def opmath_dtype(dtype):
    """The dtype torch's CPU kernels compute in: float32 for bfloat16/float16
    tensors (rounded once at the end), the tensor's own dtype otherwise."""
    return jnp.promote_types(dtype, jnp.float32)


def cast(x: Any, dtype) -> Any:
    """``x`` in ``dtype``. No conversion is traced where ``x`` has it already, nor
    for a Python number (kept weakly typed): a tree of thousands of leaves traces
    every op of every leaf."""
    if isinstance(x, (int, float, complex, doubled.Float)) or x.dtype == dtype:
        return x
    return x.astype(dtype)


def _times(value: Any, x: Array, op) -> Array:
    """``value * x``, with no multiplication traced for torch's default ``1``."""
    if isinstance(value, int) and value == 1:
        return x
    return scalar(value, op) * x


def lerp_kernel(start: Array, end: Array, weight: Any) -> Array:
    """``torch.lerp`` exactly as torch's CPU kernel runs it: inputs and weight in
    :func:`opmath_dtype` (so ``1 - weight`` is rounded as torch rounds it), one
    rounding back to ``start``'s dtype at the end."""
    dtype, opmath = start.dtype, opmath_dtype(start.dtype)
    start, end = cast(start, opmath), cast(end, opmath)
    w = jnp.asarray(doubled.rounded(weight), opmath)
    if isinstance(weight, (int, float)):
        # torch's branch, on the rounded weight, chosen now: one formula traced
        if abs(float(np.asarray(weight, opmath))) < 0.5:
            return cast(start + w * (end - start), dtype)
        return cast(end - (end - start) * (1 - w), dtype)
    return cast(lerp(start, end, w), dtype)


def mul(x: Array, factor: Any) -> Array:
    """``x.mul(factor)`` for a scalar factor: torch keeps the factor in
    :func:`opmath_dtype` (JAX would round a Python float to bfloat16 first)."""
    op = opmath_dtype(x.dtype)
    return cast(cast(x, op) * scalar(factor, op), x.dtype)


class Increment(NamedTuple):
    """A rule's new parameter as torch's last in-place op on it writes it:
    ``param + delta``, added in :func:`opmath_dtype` and rounded once to the
    parameter's dtype (:meth:`applied`). ``delta`` is in the opmath dtype where a
    torch kernel computes it (:func:`add_step`, :func:`addcdiv_step`), in the
    parameter's dtype where the rule writes plain arithmetic (SGD, Rprop).

    A rule that returns its new parameter so lets the functional path return
    ``delta`` itself as the update (where ``param`` is the leaf it was given and
    its dtype is its opmath dtype), so ``apply_updates`` performs torch's last op
    exactly, with no ``new - old`` per leaf to compile (see
    :func:`functorch_optim.runner.run_rule`).
    """

    param: Array
    delta: Array

    def applied(self) -> Array:
        """``param + delta``, rounded once to the parameter's dtype."""
        op = opmath_dtype(self.param.dtype)
        return cast(cast(self.param, op) + self.delta, self.param.dtype)


def add_step(x: Array, y: Any, alpha: Any = 1) -> Increment:
    """``torch.add(x, y, alpha=alpha)`` as an :class:`Increment` of ``x``:
    ``alpha * y`` in :func:`opmath_dtype`; ``y`` may be a tensor or a scalar.

    This is torch's scalar CPU path. Its vectorized bfloat16 path first rounds
    ``alpha`` to bfloat16, so torch's own bfloat16 results depend on where an
    element falls in a SIMD vector; they agree with this to about one bfloat16 ulp.
    """
    op = opmath_dtype(x.dtype)
    if isinstance(y, (int, float, doubled.Float)):
        y = scalar(y, op)
    else:
        y = cast(jnp.asarray(y), op)
    return Increment(x, _times(alpha, y, op))


def addcdiv_step(x: Array, t1: Array, t2: Array, value: Any = 1) -> Increment:
    """``torch.addcdiv(x, t1, t2, value=value)`` as an :class:`Increment` of
    ``x``: ``value * t1 / t2`` (left to right) in :func:`opmath_dtype`."""
    op = opmath_dtype(x.dtype)
    return Increment(x, _times(value, cast(t1, op), op) / cast(t2, op))


def add(x: Array, y: Any, alpha: Any = 1) -> Array:
    """``torch.add(x, y, alpha=alpha)``: ``x + alpha * y`` in :func:`opmath_dtype`,
    rounded once (:func:`add_step`, applied)."""
    return add_step(x, y, alpha).applied()


def addcmul(x: Array, t1: Array, t2: Array, value: Any = 1) -> Array:
    """``torch.addcmul``: ``x + value * t1 * t2`` (left to right) in
    :func:`opmath_dtype`, rounded once."""
    op = opmath_dtype(x.dtype)
    return cast(cast(x, op) + _times(value, cast(t1, op), op) * cast(t2, op), x.dtype)


def addcdiv(x: Array, t1: Array, t2: Array, value: Any = 1) -> Array:
    """``torch.addcdiv``: ``x + value * t1 / t2`` (left to right) in
    :func:`opmath_dtype`, rounded once (:func:`addcdiv_step`, applied)."""
    return addcdiv_step(x, t1, t2, value).applied()


def scalar(x: Any, dtype) -> Any:
    """A scalar hyperparameter in ``dtype``, leaving Python numbers weakly typed
    (a :class:`~functorch_optim.doubled.Float` rounded once, as torch rounds its
    double)."""
    if isinstance(x, (int, float)):
        return x
    return jnp.asarray(doubled.rounded(x), dtype)


# --- step pieces ----------------------------------------------------------------


def div(x, divisor):
    """``tensor / scalar``: torch divides in :func:`opmath_dtype` (JAX would round
    the divisor to bfloat16 first).

    A traced divisor (a step's bias correction) multiplies by its reciprocal. XLA's
    CPU simplifier rewrites ``x / broadcast(b)`` so wherever ``b`` has one user,
    which depends on the program around it: how many leaves share ``b``, whether
    CSE merged their conversions of it first (a partitioned program runs CSE
    earlier), whether the leaves are packed. Written out, every program (sharded or
    not, packed or per leaf, functional or facade) rounds the same way, within a
    float32 ulp of torch's true division.
    """
    op = opmath_dtype(x.dtype)
    if isinstance(divisor, (int, float)):
        return cast(cast(x, op) / divisor, x.dtype)
    return cast(cast(x, op) * (1 / scalar(divisor, op)), x.dtype)


def apply_weight_decay(param, grad, o: Options):
    """torch's coupled (``grad + wd * param``) or decoupled (``param * (1 - lr wd)``)
    weight decay, as NAdam and RAdam choose with ``decoupled_weight_decay``."""
    if nonzero(o.weight_decay):
        if o.decoupled_weight_decay:
            param = mul(param, 1 - o.lr * o.weight_decay)
        else:
            grad = add(grad, param, o.weight_decay)
    return param, grad


def adam_moments(state: dict, grad, beta1, beta2):
    """torch's ``exp_avg.lerp_(grad, 1 - beta1)`` and
    ``exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)``."""
    exp_avg = lerp_kernel(state["exp_avg"], grad, 1 - beta1)
    exp_avg_sq = addcmul(mul(state["exp_avg_sq"], beta2), grad, grad, 1 - beta2)
    return exp_avg, exp_avg_sq

"""torch's averaging functions: ``get_ema_multi_avg_fn``, ``get_swa_multi_avg_fn``,
``get_ema_avg_fn`` and ``get_swa_avg_fn``, each computed as torch's CPU kernels
compute it, with the errors torch's tensor arithmetic raises for integer and bool
leaves; and the leaf and function types the other modules of the package share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..kernels import lerp_kernel, mul

PyTree = Any
Array = jax.Array
AvgFn = Callable[[Array, Array, Array], Array]
MultiAvgFn = Callable[[list, list, Array], Sequence[Array]]

# torch raises these from the tensor arithmetic of its SWA averaging functions.
_INTEGER_ADDCDIV_ERROR = (
    "Integer division with addcdiv is no longer supported, and in a future  release "
    "addcdiv will perform a true division of tensor1 and tensor2. The historic "
    "addcdiv behavior can be implemented as (input + value * "
    "torch.trunc(tensor1 / tensor2)).to(input.dtype) for integer inputs and as "
    "(input + value * tensor1 / tensor2) for float inputs. The future addcdiv "
    "behavior is just the latter implementation: (input + value * tensor1 / "
    "tensor2), for all dtypes."
)
_BOOL_SUBTRACTION_ERROR = (
    "Subtraction, the `-` operator, with two bool tensors is not supported. Use the "
    "`^` or `logical_xor()` operator instead."
)


def _is_inexact(x: Array) -> bool:
    # torch.is_floating_point(x) or torch.is_complex(x)
    return bool(jnp.issubdtype(x.dtype, jnp.inexact))


def _default_float():
    """torch's default dtype as JAX's default float dtype: float64 with x64 on (as
    torch's after ``torch.set_default_dtype(torch.float64)``), float32 otherwise."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _as_torch_default_float(x: Array) -> Array:
    """An integer leaf as torch computes with it in float arithmetic: in its
    default dtype (the cast back to the leaf then truncates)."""
    return x.astype(_default_float())


def _integer_ema(averaged: Array, current: Array, decay: float) -> Array:
    """torch's ``averaged * decay + current * (1 - decay)`` for an integer leaf, in
    torch's default dtype. Under jit XLA fuses the two products and the sum into one
    fma, so the truncation back to an integer can differ from torch's by one."""
    return _as_torch_default_float(averaged) * decay + _as_torch_default_float(
        current
    ) * (1 - decay)


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] "
            "range."
        )


def _difference(current: Array, averaged: Array) -> Array:
    if current.dtype == jnp.bool_:
        raise RuntimeError(_BOOL_SUBTRACTION_ERROR)
    return current - averaged


def get_ema_multi_avg_fn(decay: float = 0.999) -> MultiAvgFn:
    r"""torch's exponential moving average over a list of leaves:

    .. math::
        W^{EMA}_0 = W^{model}_0, \qquad
        W^{EMA}_{t+1} = \text{decay}\, W^{EMA}_t + (1 - \text{decay})\, W^{model}_{t+1}

    computed as torch's ``_foreach_lerp_(ema, model, 1 - decay)`` for floating-point
    and complex leaves (:func:`~functorch_optim.kernels.lerp_kernel`), and as
    ``ema * decay + model * (1 - decay)`` for the others (their cast back truncates,
    as torch's ``copy_``).

    Args:
      decay: the decay rate, in ``[0, 1]``.

    Returns:
      ``multi_avg_fn(averaged, current, num_averaged) -> list``: the new averages of
      the ``averaged`` leaves, for :class:`AveragedModel` and :func:`averaged`.

    Example:
      >>> ema_fn = fo.swa_utils.get_ema_multi_avg_fn(0.99)
      >>> ema = fo.swa_utils.AveragedModel(params, multi_avg_fn=ema_fn)
    """
    _check_decay(decay)

    def ema_update(averaged: list, current: list, num_averaged: Array) -> list:
        if averaged and _is_inexact(averaged[0]):
            return [lerp_kernel(a, c, 1 - decay) for a, c in zip(averaged, current)]
        return [_integer_ema(a, c, decay) for a, c in zip(averaged, current)]

    return ema_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    r"""torch's equally weighted (SWA) average over a list of leaves:

    .. math::
        W^{SWA}_{n+1} = W^{SWA}_n + \frac{W^{model} - W^{SWA}_n}{n + 1}

    computed as torch's ``_foreach_lerp_(swa, model, 1 / (n + 1))``, whose weight
    ``1 / (n + 1)`` torch rounds to its default dtype (the reciprocal of its integer
    count tensor). Here that is JAX's default float dtype: float64 with x64 on, as
    torch's after ``torch.set_default_dtype(torch.float64)`` (with its default
    float32, torch rounds the weight of a float64 average to float32, which then
    agrees with :func:`get_swa_avg_fn` to float32's precision only); float32
    otherwise. Integer and boolean leaves raise torch's ``RuntimeError``.

    Returns:
      ``multi_avg_fn(averaged, current, num_averaged) -> list``.

    Example:
      >>> swa_fn = fo.swa_utils.get_swa_multi_avg_fn()
      >>> swa = fo.swa_utils.AveragedModel(params, multi_avg_fn=swa_fn)
    """

    def swa_update(averaged: list, current: list, num_averaged: Array) -> list:
        if averaged and not _is_inexact(averaged[0]):
            _difference(current[0], averaged[0])
            raise RuntimeError(_INTEGER_ADDCDIV_ERROR)
        weight = 1 / _as_torch_default_float(jnp.asarray(num_averaged) + 1)
        return [lerp_kernel(a, c, weight) for a, c in zip(averaged, current)]

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> AvgFn:
    r"""torch's exponential moving average of one leaf,

    .. math::
        W^{EMA}_{t+1} = \text{decay}\, W^{EMA}_t + (1 - \text{decay})\, W^{model}_{t+1}

    computed as torch's ``decay * ema + (1 - decay) * model`` (each scalar product
    in the kernel's compute dtype, as :func:`~functorch_optim.kernels.mul`).

    Args:
      decay: the decay rate, in ``[0, 1]``.

    Returns:
      ``avg_fn(averaged, current, num_averaged) -> array``.

    Example:
      >>> ema_fn = fo.swa_utils.get_ema_avg_fn(0.99)
      >>> ema = fo.swa_utils.AveragedModel(params, avg_fn=ema_fn)
    """
    _check_decay(decay)

    def ema_update(averaged: Array, current: Array, num_averaged: Array) -> Array:
        if _is_inexact(averaged):
            return mul(averaged, decay) + mul(current, 1 - decay)
        return _integer_ema(averaged, current, decay)

    return ema_update


def get_swa_avg_fn() -> AvgFn:
    r"""torch's equally weighted (SWA) average of one leaf,
    :math:`W^{SWA}_{n+1} = W^{SWA}_n + (W^{model} - W^{SWA}_n) / (n + 1)`, computed
    as written (the division by the integer count is exact in the leaf's dtype;
    an integer leaf computes in torch's default dtype, as in
    :func:`get_swa_multi_avg_fn`).
    This is also what :class:`AveragedModel` does without an averaging function,
    as torch does on the CPU (on CUDA torch takes :func:`get_swa_multi_avg_fn`'s
    path).

    Returns:
      ``avg_fn(averaged, current, num_averaged) -> array``.

    Example:
      >>> swa = fo.swa_utils.AveragedModel(params, avg_fn=fo.swa_utils.get_swa_avg_fn())
    """

    def swa_update(averaged: Array, current: Array, num_averaged: Array) -> Array:
        difference = _difference(current, averaged)
        if _is_inexact(averaged):
            return averaged + difference / (num_averaged + 1)
        # In torch's default dtype, as torch (XLA multiplies by the reciprocal of
        # the count, so a truncated result can differ from torch's by one).
        count = _as_torch_default_float(jnp.asarray(num_averaged) + 1)
        return _as_torch_default_float(averaged) + (
            _as_torch_default_float(difference) / count
        )

    return swa_update

"""Validation, state conventions and step pieces that several algorithms share.

torch repeats the same constructor checks (``Invalid learning rate: ...``), the
same step-time flag check and the Adam-style moment updates in each algorithm's
file; here they are written once.
"""

from __future__ import annotations

import jax.numpy as jnp

from .base import (
    Options,
    add,
    addcmul,
    cast,
    lerp_kernel,
    mul,
    nonzero,
    opmath_dtype,
    require,
    scalar,
)

# The dtype of torch's scalar state tensors other than ``step`` (ASGD's ``eta`` and
# ``mu``, NAdam's ``mu_product``): ``_get_scalar_dtype()``, float32 under torch's
# default dtype. torch reads them back with ``.item()`` every step, so their float32
# rounding is part of its trajectory, for float64 parameters too.
TORCH_SCALAR_DTYPE = jnp.float32

# How torch's messages name a hyperparameter when not as "<name> value".
_LABELS = {"lr": "learning rate", "eps": "epsilon value"}


def tensor_scalar(x):
    """A hyperparameter as torch's capturable path holds it: a Python number as a
    float32 scalar tensor (torch's scalar dtype), a tensor as it is."""
    return jnp.asarray(x, TORCH_SCALAR_DTYPE) if isinstance(x, (int, float)) else x


def rdiv(number, tensor):
    """torch's ``number / tensor`` for a scalar tensor: a Python number divides as
    ``tensor.reciprocal() * number`` (torch's ``__rtruediv__``), a tensor truly."""
    if isinstance(number, (int, float)):
        return (1 / tensor) * number
    return number / tensor


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


# --- step pieces ----------------------------------------------------------------
# Written with base's kernel helpers, which compute as torch's CPU kernels do
# (scalars and arithmetic in float32 for bfloat16 tensors, one rounding per op).


def div(x, divisor):
    """``tensor / python_scalar``: torch divides in :func:`opmath_dtype` (JAX would
    round the divisor to bfloat16 first)."""
    op = opmath_dtype(x.dtype)
    return cast(cast(x, op) / scalar(divisor, op), x.dtype)


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

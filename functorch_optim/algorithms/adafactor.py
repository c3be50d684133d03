"""Adafactor with a factored second moment (torch.optim.Adafactor)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation, scalar_dtype
from ..doubled import rounded
from ..functional import make_transform
from ..kernels import add_step, lerp_kernel, mul, opmath_dtype
from ..rule import Algorithm, Array, Hyperparameter, Options, nonzero, require


def _validate(o: Options) -> None:
    eps1, eps2 = o.eps
    require(lambda v: 0.0 <= v, o.lr, f"Learning rate should be >= 0 but is: {o.lr}")
    require(
        lambda v: 0.0 >= v,
        o.beta2_decay,
        f"beta2_decay should be <= 0 but is: {o.beta2_decay}",
    )
    require(lambda v: 0.0 <= v, eps1, f"epsilon1 should be >= 0 but is: {eps1}")
    require(lambda v: 0.0 <= v, eps2, f"epsilon2 should be >= 0 but is: {eps2}")
    require(
        lambda v: 1.0 <= v, o.d, f"Clipping threshold d should be >= 1 but is: {o.d}"
    )
    require(
        lambda v: 0.0 <= v,
        o.weight_decay,
        f"weight_decay should be >= 0 but is: {o.weight_decay}",
    )


def _factored(param) -> bool:
    return param.ndim > 1


def _init(param, o: Options) -> dict:
    if not _factored(param):
        return {"row_var": None, "col_var": None, "variance": jnp.zeros_like(param)}
    row_shape = param.shape[:-1] + (1,)
    col_shape = param.shape[:-2] + (1,) + param.shape[-1:]
    return {
        "row_var": jnp.zeros(row_shape, param.dtype),
        "col_var": jnp.zeros(col_shape, param.dtype),
        "variance": None,
    }


def _norm(x):
    """``x.norm(2).item()``: the norm in x's dtype, read as a Python double."""
    return (
        jnp.linalg.norm(x.astype(opmath_dtype(x.dtype)))
        .astype(x.dtype)
        .astype(scalar_dtype())
    )


def _mean_square(grad, axis: int):
    """``torch.norm(grad, dim=axis, keepdim=True).square_().div_(grad.size(axis))``."""
    wide = grad.astype(opmath_dtype(grad.dtype))
    norm = jnp.sqrt(jnp.sum(wide * wide, axis=axis, keepdims=True)).astype(grad.dtype)
    return norm * norm / grad.shape[axis]


def _python_max(first, second):
    """Python's ``max(first, second)``, which torch takes of ``.item()`` values:
    ``second`` only where it is greater, so a NaN ``second`` gives ``first``
    (``jnp.maximum`` would propagate it)."""
    return jnp.where(second > first, second, first)


class AdafactorStepScalars(NamedTuple):
    """The per-step scalars of Adafactor's rule, torch's ``one_minus_beta2_t``
    (``step ** beta2_decay``) and ``rho_t`` (``min(lr, 1 / sqrt(step))``)."""

    one_minus_beta2_t: Any
    rho_t: Any


def _scalars(step, scalar_state, o: Options):
    # Scalars in Python double, as torch computes them from .item() values.
    step_float = step.astype(scalar_dtype())
    return AdafactorStepScalars(
        one_minus_beta2_t=step_float**o.beta2_decay,
        rho_t=jnp.minimum(rounded(o.lr), 1 / jnp.sqrt(step_float)),
    ), {}


def _step(param, grad, state, o: Options, s: AdafactorStepScalars):
    if jnp.iscomplexobj(param):
        raise RuntimeError("Adafactor does not support complex parameters")
    if param.size == 0:
        # torch divides the parameter norm by sqrt(numel) in Python.
        raise ZeroDivisionError("float division by zero")
    dtype, opmath = param.dtype, opmath_dtype(param.dtype)
    grad = -grad if o.maximize else grad
    eps1, eps2 = map(rounded, o.eps)
    if eps1 is None:
        eps1 = float(jnp.finfo(dtype).eps)
    lr = o.lr
    one_minus_beta2_t = s.one_minus_beta2_t
    # One NaN entry makes the norm NaN and alpha eps2 * rho_t: the other entries
    # still step, as in torch
    alpha = _python_max(eps2, _norm(param) / param.size**0.5) * s.rho_t

    if nonzero(o.weight_decay):
        param = mul(param, 1 - lr * o.weight_decay)

    row_var, col_var, variance = state["row_var"], state["col_var"], state["variance"]
    if _factored(param):
        row_var = lerp_kernel(row_var, _mean_square(grad, -1), one_minus_beta2_t)
        col_var = lerp_kernel(col_var, _mean_square(grad, -2), one_minus_beta2_t)
        var_estimate = row_var @ col_var
        row_mean = jnp.mean(row_var.astype(opmath), axis=-2, keepdims=True)
        var_estimate = var_estimate / jnp.maximum(row_mean.astype(dtype), eps1)
    else:
        variance = lerp_kernel(variance, grad * grad, one_minus_beta2_t)
        var_estimate = variance

    # torch's rsqrt_: 1 / sqrt in the compute dtype, one rounding.
    clamped = jnp.maximum(var_estimate, eps1 * eps1).astype(opmath)
    update = (1 / jnp.sqrt(clamped)).astype(dtype) * grad
    denom = _python_max(1.0, _norm(update) / (update.size**0.5 * o.d))
    new_param = add_step(param, update, -alpha / denom)
    return new_param, {
        "row_var": row_var,
        "col_var": col_var,
        "variance": variance,
    }


class AdafactorState(NamedTuple):
    """The state of :func:`adafactor`: the step count and torch's per-parameter
    entries, each a tree shaped like the params (``row_var`` and ``col_var`` for
    leaves of 2 or more dims, ``variance`` for the others, None elsewhere)."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    row_var: Any
    col_var: Any
    variance: Any


def adafactor(
    lr: Hyperparameter = 1e-2,
    beta2_decay: Hyperparameter = -0.8,
    eps: tuple[Hyperparameter | None, Hyperparameter] = (None, 1e-3),
    d: Hyperparameter = 1.0,
    weight_decay: Hyperparameter = 0.0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
) -> GradientTransformation[AdafactorState]:
    r"""Adafactor (``torch.optim.Adafactor``).

    With :math:`G_t` the gradient (negated when ``maximize``), :math:`\tau` the
    ``beta2_decay``, :math:`(\epsilon_1, \epsilon_2)` the ``eps`` and :math:`d` the
    clipping threshold:

    .. math::
        \hat\beta_{2,t} &\leftarrow 1 - t^{\tau}, \quad
        \rho_t \leftarrow \min(\gamma, 1/\sqrt t), \quad
        \alpha_t \leftarrow \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1})) \rho_t \\
        \theta_{t-1} &\leftarrow \theta_{t-1} (1 - \gamma\lambda) \\
        R_t &\leftarrow \hat\beta_{2,t} R_{t-1}
            + (1 - \hat\beta_{2,t}) \mathrm{mean}_{\text{last}}(G_t^2), \quad
        C_t \leftarrow \hat\beta_{2,t} C_{t-1}
            + (1 - \hat\beta_{2,t}) \mathrm{mean}_{\text{second-last}}(G_t^2) \\
        \hat V_t &\leftarrow \frac{R_t C_t}{\max(\mathrm{mean}(R_t), \epsilon_1)}
            \quad\text{(tensors of 2 or more dims; otherwise }
            \hat V_t \leftarrow \hat\beta_{2,t} \hat V_{t-1}
            + (1 - \hat\beta_{2,t}) G_t^2) \\
        U_t &\leftarrow G_t / \sqrt{\max(\hat V_t, \epsilon_1^2)} \\
        \theta_t &\leftarrow \theta_{t-1}
            - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t) / d)} U_t

    (:math:`\hat\beta_{2,t}` here is written as torch writes it: the weight of the
    new term is :math:`t^{\tau}`.) The two maxima of an RMS are Python's ``max``, as
    torch takes them of ``.item()`` values: a NaN RMS (from a NaN entry) gives
    :math:`\epsilon_2` and 1, an inf RMS gives inf. Complex parameters raise torch's
    RuntimeError, and so do size-0 parameters (torch divides by their zero element
    count).

    Args:
      lr: learning rate :math:`\gamma`, an upper bound of the relative step.
      beta2_decay: decay rate :math:`\tau \le 0` of the second-moment weight.
      eps: :math:`(\epsilon_1, \epsilon_2)`; ``None`` for :math:`\epsilon_1` uses
        the machine epsilon of the parameter's dtype.
      d: clipping threshold :math:`d \ge 1` of the update's RMS.
      weight_decay: decoupled weight decay coefficient :math:`\lambda`.
      maximize: ascend the objective instead of descending it.
      foreach: torch's implementation flag, accepted.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is an
      :class:`AdafactorState`.

    Example:
      >>> tx = fo.adafactor(lr=1e-2)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(ADAFACTOR, locals())


ADAFACTOR = Algorithm(
    name="Adafactor",
    functional=adafactor,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=AdafactorState,
    scalars=_scalars,
    complex_as_real=False,  # torch rejects complex parameters
    reads_params=lambda options: True,  # the step size scales with RMS(param)
)

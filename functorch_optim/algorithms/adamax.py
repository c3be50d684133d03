"""Adamax, Adam with the infinity norm (torch.optim.Adamax)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation
from ..doubled import rounded_values
from ..functional import make_transform
from ..kernels import (
    TORCH_SCALAR_DTYPE,
    add,
    addcdiv_step,
    lerp_kernel,
    mul,
    step_power,
    tensor_scalar,
)
from ..rule import (
    Algorithm,
    Array,
    Hyperparameter,
    Options,
    nonzero,
    validate_adam_like,
)


def _init(param, o: Options) -> dict:
    return {"exp_avg": jnp.zeros_like(param), "exp_inf": jnp.zeros_like(param)}


def _scalars(step, scalar_state, o: Options):
    if o.capturable:
        # torch's capturable path: a float32 step tensor, the negated bias
        # correction divided by lr folded into the denominator
        step = step.astype(TORCH_SCALAR_DTYPE)
        neg_bias_correction = tensor_scalar(o.betas[0]) ** step - 1
        return {"neg_bias_correction": neg_bias_correction / tensor_scalar(o.lr)}, {}
    return rounded_values({"clr": o.lr / (1 - step_power(o.betas[0], step))}, {})


def _step(param, grad, state, o: Options):
    beta1, beta2 = o.betas
    grad = -grad if o.maximize else grad
    if nonzero(o.weight_decay):
        grad = add(grad, param, o.weight_decay)
    exp_avg = lerp_kernel(state["exp_avg"], grad, 1 - beta1)
    exp_inf = jnp.maximum(mul(state["exp_inf"], beta2), add(jnp.abs(grad), o.eps))
    if o.capturable:
        new_param = addcdiv_step(param, exp_avg, mul(exp_inf, o.neg_bias_correction))
    else:
        new_param = addcdiv_step(param, exp_avg, exp_inf, -o.clr)
    return new_param, {"exp_avg": exp_avg, "exp_inf": exp_inf}


class AdamaxState(NamedTuple):
    """The state of :func:`adamax`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    exp_avg: Any
    exp_inf: Any


def adamax(
    lr: Hyperparameter = 2e-3,
    betas: tuple[Hyperparameter, Hyperparameter] = (0.9, 0.999),
    eps: Hyperparameter = 1e-8,
    weight_decay: Hyperparameter = 0,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
) -> GradientTransformation[AdamaxState]:
    r"""Adamax (``torch.optim.Adamax``): Adam with an infinity-norm second moment.

    With :math:`g_t` the gradient (negated when ``maximize``) and :math:`\lambda` the
    weight decay; :math:`m_0 = u_0 = 0`:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        u_t &\leftarrow \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}
            \frac{m_t}{u_t}

    Complex parameters are stepped as their real and imaginary parts, as torch does.

    Args:
      lr: learning rate :math:`\gamma` (float, JAX scalar or schedule
        ``count -> value``).
      betas: coefficients :math:`(\beta_1, \beta_2)` of the running average and of
        the decaying infinity norm.
      eps: term added to :math:`|g_t|` for numerical stability.
      weight_decay: L2 penalty :math:`\lambda`.
      maximize: ascend the objective instead of descending it.
      foreach, differentiable, capturable: torch's implementation flags, accepted
        and checked as torch checks them; XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is an
      :class:`AdamaxState`.

    Example:
      >>> tx = fo.adamax(lr=2e-3)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(ADAMAX, locals())


ADAMAX = Algorithm(
    name="Adamax",
    functional=adamax,
    init=_init,
    step=_step,
    validate=validate_adam_like,
    state_names=("step", "exp_avg", "exp_inf"),
    state_type=AdamaxState,
    scalars=_scalars,
    elementwise=True,
)

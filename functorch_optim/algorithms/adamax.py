"""Adamax, Adam with the infinity norm (torch.optim.Adamax)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation
from ..doubled import rounded_values
from ..functional import make_transform
from ..kernels import (
    add,
    addcdiv_step,
    bias_corrections,
    lerp_kernel,
    mul,
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


class AdamaxStepScalars(NamedTuple):
    """The per-step scalars of Adamax's rule: ``step_size`` (torch's ``clr``, ``lr
    / bias_correction1``); on torch's capturable path, which folds the step size
    into the denominator, ``neg_bias_correction1`` instead."""

    step_size: Any = None
    neg_bias_correction1: Any = None


def _scalars(step, scalar_state, o: Options):
    (bias_correction1,) = bias_corrections(step, o.betas[0], capturable=o.capturable)
    if o.capturable:
        # torch's capturable path: a float32 step tensor
        return AdamaxStepScalars(neg_bias_correction1=-bias_correction1), {}
    return rounded_values(AdamaxStepScalars(step_size=o.lr / bias_correction1), {})


def _step(param, grad, state, o: Options, s: AdamaxStepScalars):
    beta1, beta2 = o.betas
    grad = -grad if o.maximize else grad
    if nonzero(o.weight_decay):
        grad = add(grad, param, o.weight_decay)
    exp_avg = lerp_kernel(state["exp_avg"], grad, 1 - beta1)
    exp_inf = jnp.maximum(mul(state["exp_inf"], beta2), add(jnp.abs(grad), o.eps))
    if o.capturable:
        # the denominator times the negated bias correction over lr
        denom = mul(exp_inf, s.neg_bias_correction1 / tensor_scalar(o.lr))
        new_param = addcdiv_step(param, exp_avg, denom)
    else:
        new_param = addcdiv_step(param, exp_avg, exp_inf, -s.step_size)
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
    state_type=AdamaxState,
    scalars=_scalars,
    elementwise=True,
)

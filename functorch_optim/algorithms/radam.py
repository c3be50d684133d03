"""RAdam, Adam with a rectified adaptive learning rate (torch.optim.RAdam)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation
from ..doubled import exact, rounded, rounded_values
from ..functional import make_transform
from ..kernels import (
    TORCH_SCALAR_DTYPE,
    adam_moments,
    add,
    apply_weight_decay,
    bias_corrections,
    div,
    mul,
    opmath_dtype,
)
from ..rule import Algorithm, Array, Hyperparameter, Options, validate_adam_like


def _init(param, o: Options) -> dict:
    return {"exp_avg": jnp.zeros_like(param), "exp_avg_sq": jnp.zeros_like(param)}


class RAdamStepScalars(NamedTuple):
    """The per-step scalars of RAdam's rule: ``bias_correction1``,
    ``bias_correction2_sqrt``, whether to rectify (``rectify``: the length of the
    approximated moving average over 5) and torch's rectification term
    ``rect``."""

    bias_correction1: Any
    bias_correction2_sqrt: Any
    rectify: Any
    rect: Any


def _scalars(step, scalar_state, o: Options):
    beta1, beta2 = o.betas
    bias_correction1, bias_correction2, beta2_power = bias_corrections(
        step, beta1, beta2, capturable=o.capturable, powers=(beta2,)
    )
    if o.capturable:
        # torch's capturable path: the same formulas on a float32 step tensor
        count = step.astype(TORCH_SCALAR_DTYPE)
    else:
        count = exact(step)  # a Python int in torch

    # Length of the approximated simple moving average: its limit and its value now.
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * count * beta2_power / bias_correction2
    # The variance is tractable (rectify) only when rho_t > 5; the step count is
    # traced, so both branches are computed and one selected.
    rectify = rho_t > 5.0
    # Where not rectifying, the rectification term may be the root of a negative
    # number; a finite stand-in keeps NaN out of gradients taken through the step.
    rect = jnp.where(
        rectify,
        rounded(
            (
                (rho_t - 4)
                * (rho_t - 2)
                * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
            ** 0.5
        ),
        1.0,
    )
    return rounded_values(
        RAdamStepScalars(bias_correction1, bias_correction2**0.5, rectify, rect), {}
    )


def _step(param, grad, state, o: Options, s: RAdamStepScalars):
    beta1, beta2 = o.betas
    grad = -grad if o.maximize else grad
    param, grad = apply_weight_decay(param, grad, o)
    exp_avg, exp_avg_sq = adam_moments(state, grad, beta1, beta2)
    bias_corrected_exp_avg = div(exp_avg, s.bias_correction1)
    exp_avg_sq_sqrt = add(jnp.sqrt(exp_avg_sq), o.eps)
    # Both paths return the new param, not an Increment: with the increment as the
    # update, XLA CPU compiled ``param + delta`` so that a float64 leaf of 8
    # elements and its shards of 2 rounded apart by an ulp (tests/sharding_checks).
    if o.capturable:
        # a tensor over a tensor: a true division; the update selected, then
        # applied to the unrectified step
        opmath = opmath_dtype(exp_avg_sq_sqrt.dtype)
        adaptive_lr = (
            jnp.asarray(s.bias_correction2_sqrt, opmath)
            / exp_avg_sq_sqrt.astype(opmath)
        ).astype(exp_avg_sq_sqrt.dtype)
        update = jnp.where(
            s.rectify, mul(adaptive_lr, s.rect), jnp.ones((), adaptive_lr.dtype)
        )
        new_param = add(param, mul(bias_corrected_exp_avg, o.lr) * update, -1.0)
        return new_param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    # torch's ``float / tensor`` is ``tensor.reciprocal() * float``.
    adaptive_lr = mul(1 / exp_avg_sq_sqrt, s.bias_correction2_sqrt)
    unrectified = mul(bias_corrected_exp_avg, o.lr)
    rectified = mul(unrectified * adaptive_lr, s.rect)
    new_param = add(param, jnp.where(s.rectify, rectified, unrectified), -1.0)
    return new_param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


class RAdamState(NamedTuple):
    """The state of :func:`radam`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    exp_avg: Any
    exp_avg_sq: Any


def radam(
    lr: Hyperparameter = 1e-3,
    betas: tuple[Hyperparameter, Hyperparameter] = (0.9, 0.999),
    eps: Hyperparameter = 1e-8,
    weight_decay: Hyperparameter = 0,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
) -> GradientTransformation[RAdamState]:
    r"""RAdam (``torch.optim.RAdam``): Adam with a rectified adaptive learning rate.

    With :math:`g_t` the gradient (negated when ``maximize``) and :math:`\lambda` the
    weight decay:

    .. math::
        \theta &\leftarrow \theta (1 - \gamma\lambda)
            \text{ if decoupled, else } g_t \leftarrow g_t + \lambda\theta \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat m_t &\leftarrow m_t / (1 - \beta_1^t) \\
        \rho_\infty &\leftarrow 2 / (1 - \beta_2) - 1, \quad
        \rho_t \leftarrow \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t) \\
        \theta_t &\leftarrow \begin{cases}
            \theta - \gamma \hat m_t \, r_t \, \frac{\sqrt{1 - \beta_2^t}}
                {\sqrt{v_t} + \epsilon} & \rho_t > 5 \\
            \theta - \gamma \hat m_t & \text{otherwise} \end{cases} \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
            {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}

    The switch on :math:`\rho_t > 5` is taken at run time, so the transform jits.

    Args:
      lr: learning rate :math:`\gamma` (float, JAX scalar or schedule
        ``count -> value``).
      betas: coefficients of the running averages of the gradient and its square.
      eps: term added to the denominator for numerical stability.
      weight_decay: weight decay coefficient :math:`\lambda`.
      decoupled_weight_decay: decay the parameters directly (RAdamW) instead of
        adding the decay to the gradient.
      maximize: ascend the objective instead of descending it.
      foreach, capturable, differentiable: torch's implementation flags, accepted
        and checked as torch checks them; XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is a
      :class:`RAdamState`.

    Example:
      >>> tx = fo.radam(lr=1e-3, weight_decay=0.01, decoupled_weight_decay=True)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(RADAM, locals())


RADAM = Algorithm(
    name="RAdam",
    functional=radam,
    init=_init,
    step=_step,
    validate=validate_adam_like,
    state_type=RAdamState,
    scalars=_scalars,
    elementwise=True,
)

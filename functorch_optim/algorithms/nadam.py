"""NAdam, Adam with Nesterov momentum (torch.optim.NAdam)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation, scalar_dtype
from ..doubled import constant_power, exact, rounded, rounded_values
from ..functional import make_transform
from ..kernels import (
    TORCH_SCALAR_DTYPE,
    adam_moments,
    add,
    addcdiv,
    apply_weight_decay,
    bias_corrections,
    div,
    mul,
)
from ..rule import (
    Algorithm,
    Array,
    Hyperparameter,
    Options,
    ScalarEntry,
    validate_adam_like,
)


def _validate(o: Options) -> None:
    validate_adam_like(o, "momentum_decay")


def _init(param, o: Options) -> dict:
    return {"exp_avg": jnp.zeros_like(param), "exp_avg_sq": jnp.zeros_like(param)}


def _init_scalars(o: Options) -> dict:
    return {"mu_product": jnp.ones((), TORCH_SCALAR_DTYPE)}


def _momentum_cache(beta1, step, momentum_decay):
    r"""Momentum cache :math:`\mu_t = \beta_1 (1 - 0.5 \cdot 0.96^{t \psi})`."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def _number(x, lr):
    """``x``, a Python double in torch, as it meets ``lr``: a tensor lr keeps its
    own dtype in torch's ``tensor / float``."""
    return jnp.asarray(rounded(x), lr.dtype) if hasattr(lr, "dtype") else x


class NAdamStepScalars(NamedTuple):
    """The per-step scalars of NAdam's rule: ``bias_correction2`` and the negated
    step sizes of its two directions, ``neg_grad_step_size`` (``-lr (1 - mu_t) /
    (1 - mu_product)``) and ``neg_exp_avg_step_size`` (``-lr mu_{t+1} / (1 -
    mu_product mu_{t+1})``)."""

    bias_correction2: Any
    neg_grad_step_size: Any
    neg_exp_avg_step_size: Any


def _scalars(step, scalar_state, o: Options):
    beta1, beta2 = o.betas
    lr = o.lr
    if o.capturable:
        # torch's capturable path: a float32 step tensor, and mu_product kept and
        # read as a float32 tensor, so every coefficient is a float32 tensor
        (bias_correction2,) = bias_corrections(step, beta2, capturable=True)
        step = step.astype(TORCH_SCALAR_DTYPE)
        mu = _momentum_cache(beta1, step, o.momentum_decay)
        mu_next = _momentum_cache(beta1, step + 1, o.momentum_decay)
        mu_product = scalar_state["mu_product"] * mu
        mu_product_next = mu_product * mu_next
        return NAdamStepScalars(
            bias_correction2,
            neg_grad_step_size=-lr * (1.0 - mu) / (1.0 - mu_product),
            neg_exp_avg_step_size=-lr * mu_next / (1.0 - mu_product_next),
        ), {"mu_product": mu_product}
    count = exact(step)  # a Python int in torch
    psi = o.momentum_decay
    if scalar_dtype() == jnp.float32 and isinstance(psi, (int, float)):
        # 0.96 ** (t psi) is (0.96 ** psi) ** t: a power of a constant, as beta2's
        # (exp and log of pairs would cost ten times more), and the next step's
        # is one product more
        decay = constant_power(0.96, psi)
        bias_correction2, decay_power = bias_corrections(step, beta2, powers=(decay,))
        mu = beta1 * (1.0 - 0.5 * decay_power)
        mu_next = beta1 * (1.0 - 0.5 * (decay_power * decay))
    else:
        (bias_correction2,) = bias_corrections(step, beta2)
        mu = _momentum_cache(beta1, count, psi)
        mu_next = _momentum_cache(beta1, count + 1, psi)
    # torch multiplies its float32 mu_product tensor in place (in float32, mu
    # rounded to it; also when mu is a float64 array, as optax.inject_hyperparams
    # makes of momentum_decay), then reads it back with .item() for Python
    # arithmetic.
    mu_product = scalar_state["mu_product"] * jnp.asarray(
        rounded(mu), TORCH_SCALAR_DTYPE
    )
    mu_product_value = exact(mu_product.astype(scalar_dtype()))
    mu_product_next = mu_product_value * mu_next
    return rounded_values(
        NAdamStepScalars(
            bias_correction2,
            neg_grad_step_size=-lr * (1.0 - mu) / _number(1.0 - mu_product_value, lr),
            neg_exp_avg_step_size=(-lr * mu_next) / _number(1.0 - mu_product_next, lr),
        ),
        {"mu_product": mu_product},
    )


def _step(param, grad, state, o: Options, s: NAdamStepScalars):
    beta1, beta2 = o.betas
    grad = -grad if o.maximize else grad
    param, grad = apply_weight_decay(param, grad, o)
    exp_avg, exp_avg_sq = adam_moments(state, grad, beta1, beta2)
    denom = add(jnp.sqrt(div(exp_avg_sq, s.bias_correction2)), o.eps)
    if o.capturable:  # torch scales the tensors, then divides
        param = addcdiv(param, mul(grad, s.neg_grad_step_size), denom)
        return addcdiv(param, mul(exp_avg, s.neg_exp_avg_step_size), denom), {
            "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq,
        }
    param = addcdiv(param, grad, denom, s.neg_grad_step_size)
    param = addcdiv(param, exp_avg, denom, s.neg_exp_avg_step_size)
    return param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


class NAdamState(NamedTuple):
    """The state of :func:`nadam`: the step count, torch's ``mu_product`` (a
    float32 scalar, once: torch's per-parameter values are all equal) and the
    moments, trees shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    mu_product: ScalarEntry
    exp_avg: Any
    exp_avg_sq: Any


def nadam(
    lr: Hyperparameter = 2e-3,
    betas: tuple[Hyperparameter, Hyperparameter] = (0.9, 0.999),
    eps: Hyperparameter = 1e-8,
    weight_decay: Hyperparameter = 0,
    momentum_decay: Hyperparameter = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
) -> GradientTransformation[NAdamState]:
    r"""NAdam (``torch.optim.NAdam``): Adam with Nesterov momentum.

    With :math:`g_t` the gradient (negated when ``maximize``), :math:`\lambda` the
    weight decay, :math:`\psi` the momentum decay and :math:`\Pi_0 = 1`:

    .. math::
        \theta &\leftarrow \theta (1 - \gamma\lambda)
            \text{ if decoupled, else } g_t \leftarrow g_t + \lambda\theta \\
        \mu_t &\leftarrow \beta_1 (1 - \tfrac12 0.96^{t\psi}), \quad
            \Pi_t \leftarrow \Pi_{t-1} \mu_t \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        d_t &\leftarrow \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
        \theta_t &\leftarrow \theta - \gamma \frac{1 - \mu_t}{1 - \Pi_t} \frac{g_t}{d_t}
            - \gamma \frac{\mu_{t+1}}{1 - \Pi_t \mu_{t+1}} \frac{m_t}{d_t}

    :math:`\Pi_t` (``mu_product``) is a float32 scalar, as torch keeps it, and its
    rounding is part of torch's trajectory.

    Args:
      lr: learning rate :math:`\gamma` (float, JAX scalar or schedule
        ``count -> value``).
      betas: coefficients of the running averages of the gradient and its square.
      eps: term added to the denominator for numerical stability.
      weight_decay: weight decay coefficient :math:`\lambda`.
      momentum_decay: momentum decay :math:`\psi`.
      decoupled_weight_decay: decay the parameters directly (NAdamW) instead of
        adding the decay to the gradient.
      maximize: ascend the objective instead of descending it.
      foreach, capturable, differentiable: torch's implementation flags, accepted
        and checked as torch checks them; XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is a
      :class:`NAdamState`.

    Example:
      >>> tx = fo.nadam(lr=2e-3, weight_decay=0.01, decoupled_weight_decay=True)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(NADAM, locals())


NADAM = Algorithm(
    name="NAdam",
    functional=nadam,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=NAdamState,
    scalars=_scalars,
    init_scalars=_init_scalars,
    elementwise=True,
)

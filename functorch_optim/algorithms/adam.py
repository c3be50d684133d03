"""Adam and AdamW (torch.optim.Adam, torch.optim.AdamW): one rule, two defaults."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation
from ..doubled import rounded_values
from ..functional import make_transform
from ..kernels import (
    adam_moments,
    add,
    addcdiv_step,
    apply_weight_decay,
    bias_corrections,
    div,
    rdiv,
)
from ..rule import (
    Algorithm,
    Array,
    Hyperparameter,
    Options,
    check_foreach_differentiable,
    check_fused_flags,
    require_betas,
    require_nonnegative,
)


def _is_tensor_like(x) -> bool:
    return hasattr(x, "shape") or callable(x)


def _validate(o: Options) -> None:
    if _is_tensor_like(o.lr) and o.foreach and not o.capturable:
        raise ValueError(
            "lr as a Tensor is not supported for capturable=False and foreach=True"
        )
    require_nonnegative(o, "lr", "eps")
    require_betas(o)
    require_nonnegative(o, "weight_decay")
    beta1, beta2 = o.betas
    both_floats = isinstance(beta1, float) and isinstance(beta2, float)
    if not (both_floats or (_is_tensor_like(beta1) and _is_tensor_like(beta2))):
        raise ValueError("betas must be either both floats or both Tensors")
    for index, beta in enumerate(o.betas):
        if hasattr(beta, "shape"):
            if not o.capturable and o.foreach:
                raise ValueError(
                    f"betas[{index}] as a Tensor is not supported for "
                    "capturable=False and foreach=True"
                )
            if beta.size != 1:
                raise ValueError(f"Tensor betas[{index}] must be 1-element")
    check_fused_flags(o)
    check_foreach_differentiable(o)


def _init(param, o: Options) -> dict:
    return {
        "exp_avg": jnp.zeros_like(param),
        "exp_avg_sq": jnp.zeros_like(param),
        "max_exp_avg_sq": jnp.zeros_like(param) if o.amsgrad else None,
    }


class AdamStepScalars(NamedTuple):
    """The per-step scalars of Adam's rule: ``neg_step_size`` (``-lr /
    bias_correction1``) and ``bias_correction2_sqrt``."""

    neg_step_size: Any
    bias_correction2_sqrt: Any


def _scalars(step, scalar_state, o: Options):
    bias_correction1, bias_correction2 = bias_corrections(
        step, *o.betas, capturable=o.capturable
    )
    if o.capturable:
        # torch's capturable path keeps the step a float32 tensor, so the bias
        # corrections and the step size are float32 tensors
        return AdamStepScalars(
            -rdiv(o.lr, bias_correction1), jnp.sqrt(bias_correction2)
        ), {}
    return rounded_values(
        AdamStepScalars(-(o.lr / bias_correction1), bias_correction2**0.5), {}
    )


def _step(param, grad, state, o: Options, s: AdamStepScalars):
    beta1, beta2 = o.betas
    grad = -grad if o.maximize else grad
    param, grad = apply_weight_decay(param, grad, o)
    exp_avg, exp_avg_sq = adam_moments(state, grad, beta1, beta2)

    max_exp_avg_sq = state["max_exp_avg_sq"]
    if o.amsgrad:
        max_exp_avg_sq = jnp.maximum(max_exp_avg_sq, exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    if o.capturable:
        # torch's capturable path folds the step size into the denominator
        denom_scale = s.bias_correction2_sqrt * s.neg_step_size
        denom_eps = rdiv(o.eps, s.neg_step_size)
        denom = add(div(jnp.sqrt(second_moment), denom_scale), denom_eps)
        new_param = addcdiv_step(param, exp_avg, denom)
    else:
        denom = add(div(jnp.sqrt(second_moment), s.bias_correction2_sqrt), o.eps)
        new_param = addcdiv_step(param, exp_avg, denom, s.neg_step_size)
    return new_param, {
        "exp_avg": exp_avg,
        "exp_avg_sq": exp_avg_sq,
        "max_exp_avg_sq": max_exp_avg_sq,
    }


class AdamState(NamedTuple):
    """The state of :func:`adam` and :func:`adamw`: the step count and torch's
    per-parameter moments, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    exp_avg: Any
    exp_avg_sq: Any
    max_exp_avg_sq: Any  # None without amsgrad


# torch's AdamW is Adam with another default: one state type for both.
AdamWState = AdamState


_MATH = r"""
    With :math:`g_t` the gradient (negated when ``maximize``):

    .. math::
        \theta &\leftarrow \theta (1 - \gamma\lambda)
            \text{ if decoupled, else } g_t \leftarrow g_t + \lambda\theta \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t &\leftarrow \max(\hat v_{t-1}, v_t) \text{ if amsgrad, else } v_t \\
        \theta_t &\leftarrow \theta - \frac{\gamma}{1 - \beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}
"""

_ARGS = """
    Args:
      lr: learning rate (float, JAX scalar or schedule ``count -> value``).
      betas: coefficients of the running averages of the gradient and its square.
      eps: term added to the denominator for numerical stability.
      weight_decay: weight decay coefficient.
      amsgrad: use the maximum of past second moments (AMSGrad).
      maximize: ascend the objective instead of descending it.
      foreach, capturable, differentiable, fused: torch's implementation flags,
        accepted and checked as torch checks them; XLA compiles one fused step
        either way.
"""


def adam(
    lr: Hyperparameter = 1e-3,
    betas: tuple[Hyperparameter, Hyperparameter] = (0.9, 0.999),
    eps: Hyperparameter = 1e-8,
    weight_decay: Hyperparameter = 0,
    amsgrad: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation[AdamState]:
    return make_transform(ADAM, locals())


def adamw(
    lr: Hyperparameter = 1e-3,
    betas: tuple[Hyperparameter, Hyperparameter] = (0.9, 0.999),
    eps: Hyperparameter = 1e-8,
    weight_decay: Hyperparameter = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
) -> GradientTransformation[AdamWState]:
    return make_transform(ADAMW, locals())


adam.__doc__ = (
    "Adam (``torch.optim.Adam``).\n"
    + _MATH
    + _ARGS
    + """      decoupled_weight_decay: decay the parameters directly (AdamW) instead of
        adding the decay to the gradient.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is an
      :class:`AdamState` (``count``, ``exp_avg``, ``exp_avg_sq``,
      ``max_exp_avg_sq`` with amsgrad).

    Example:
      >>> tx = fo.adam(lr=1e-3)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
)

adamw.__doc__ = (
    "AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay.\n"
    + _MATH
    + _ARGS
    + """
    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is an
      :class:`AdamState`.

    Example:
      >>> tx = fo.chain(fo.clip_grad_norm(1.0), fo.adamw(lr=3e-4, weight_decay=0.1))
    """
)


def _sparse_grad_message(o: Options) -> str:
    # AdamW is a subclass of Adam in torch: both say "Adam".
    return "Adam does not support sparse gradients, please consider SparseAdam instead"


ADAM = Algorithm(
    name="Adam",
    functional=adam,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=AdamState,
    scalars=_scalars,
    sparse_grad_message=_sparse_grad_message,
    elementwise=True,
)

# torch's AdamW is Adam with another default and decoupled weight decay fixed
ADAMW = dataclasses.replace(
    ADAM, name="AdamW", functional=adamw, fixed={"decoupled_weight_decay": True}
)

"""RMSprop, optionally centered and with momentum (torch.optim.RMSprop)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation
from ..functional import make_transform
from ..kernels import add, add_step, addcdiv, addcdiv_step, addcmul, lerp_kernel, mul
from ..rule import (
    Algorithm,
    Array,
    Hyperparameter,
    Options,
    nonzero,
    require_nonnegative,
)


def _validate(o: Options) -> None:
    require_nonnegative(o, "lr", "eps", "momentum", "weight_decay", "alpha")


def _init(param, o: Options) -> dict:
    # torch keeps a momentum buffer when momentum > 0; momentum is validated >= 0,
    # so "nonzero" is the same test (and a traced momentum keeps the buffer).
    return {
        "square_avg": jnp.zeros_like(param),
        "momentum_buffer": jnp.zeros_like(param) if nonzero(o.momentum) else None,
        "grad_avg": jnp.zeros_like(param) if o.centered else None,
    }


def _step(param, grad, state, o: Options, s: None):
    # The kernel helpers compute as torch's CPU kernels do (scalars and sums in
    # float32 for bfloat16 tensors, one rounding per torch op).
    alpha = o.alpha
    grad = -grad if o.maximize else grad
    if nonzero(o.weight_decay):
        grad = add(grad, param, o.weight_decay)

    square_avg = addcmul(mul(state["square_avg"], alpha), grad, grad, 1 - alpha)
    grad_avg = state["grad_avg"]
    if o.centered:
        grad_avg = lerp_kernel(grad_avg, grad, 1 - alpha)
        avg = jnp.sqrt(addcmul(square_avg, grad_avg, grad_avg, -1))
    else:
        avg = jnp.sqrt(square_avg)
    avg = add(avg, o.eps)

    buf = state["momentum_buffer"]
    if nonzero(o.momentum):
        buf = addcdiv(mul(buf, o.momentum), grad, avg)
        new_param = add_step(param, buf, -o.lr)
    else:
        new_param = addcdiv_step(param, grad, avg, -o.lr)
    return new_param, {
        "square_avg": square_avg,
        "momentum_buffer": buf,
        "grad_avg": grad_avg,
    }


class RMSpropState(NamedTuple):
    """The state of :func:`rmsprop`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    square_avg: Any
    momentum_buffer: Any  # None without momentum
    grad_avg: Any  # None unless centered


def rmsprop(
    lr: Hyperparameter = 1e-2,
    alpha: Hyperparameter = 0.99,
    eps: Hyperparameter = 1e-8,
    weight_decay: Hyperparameter = 0,
    momentum: Hyperparameter = 0,
    centered: bool = False,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
) -> GradientTransformation[RMSpropState]:
    r"""RMSprop (``torch.optim.RMSprop``).

    With :math:`g_t` the gradient (negated when ``maximize``), :math:`\alpha` the
    smoothing constant, :math:`\lambda` the weight decay and :math:`\mu` the momentum:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        v_t &\leftarrow \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t &\leftarrow \alpha \bar g_{t-1} + (1 - \alpha) g_t
            \quad\text{(centered only)} \\
        d_t &\leftarrow \sqrt{v_t - \bar g_t^2} + \epsilon
            \text{ if centered, else } \sqrt{v_t} + \epsilon \\
        b_t &\leftarrow \mu b_{t-1} + g_t / d_t, \quad
            \theta_t \leftarrow \theta_{t-1} - \gamma b_t
            \quad\text{if } \mu > 0, \text{ else }
            \theta_t \leftarrow \theta_{t-1} - \gamma g_t / d_t

    Complex parameters are treated as pairs of real numbers, as torch does.

    Args:
      lr: learning rate :math:`\gamma` (float, JAX scalar or schedule).
      alpha: smoothing constant :math:`\alpha` of the squared-gradient average.
      eps: term added to the denominator for numerical stability.
      weight_decay: L2 penalty :math:`\lambda`.
      momentum: momentum factor :math:`\mu`; 0 keeps no buffer, as torch.
      centered: normalise by an estimate of the gradient's variance instead of its
        second moment.
      maximize: ascend the objective instead of descending it.
      capturable, foreach, differentiable: torch's implementation flags, accepted;
        XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is a
      :class:`RMSpropState`.

    Example:
      >>> tx = fo.rmsprop(lr=1e-2, momentum=0.9, centered=True)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(RMSPROP, locals())


RMSPROP = Algorithm(
    name="RMSprop",
    functional=rmsprop,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=RMSpropState,
    elementwise=True,
)

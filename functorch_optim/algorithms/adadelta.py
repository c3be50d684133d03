"""Adadelta (torch.optim.Adadelta)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation
from ..functional import make_transform
from ..kernels import add, add_step, addcmul, mul
from ..rule import (
    Algorithm,
    Array,
    Hyperparameter,
    Options,
    check_foreach_differentiable,
    nonzero,
    require,
    require_nonnegative,
)


def _validate(o: Options) -> None:
    require_nonnegative(o, "lr")
    require(lambda v: 0.0 <= v <= 1.0, o.rho, f"Invalid rho value: {o.rho}")
    require_nonnegative(o, "eps", "weight_decay")
    check_foreach_differentiable(o)


def _init(param, o: Options) -> dict:
    return {"square_avg": jnp.zeros_like(param), "acc_delta": jnp.zeros_like(param)}


def _step(param, grad, state, o: Options, s: None):
    # The kernel helpers compute as torch's CPU kernels do, one rounding per op.
    rho, eps = o.rho, o.eps
    grad = -grad if o.maximize else grad
    if nonzero(o.weight_decay):
        grad = add(grad, param, o.weight_decay)
    square_avg = addcmul(mul(state["square_avg"], rho), grad, grad, 1 - rho)
    std = jnp.sqrt(add(square_avg, eps))
    delta = jnp.sqrt(add(state["acc_delta"], eps)) / std * grad
    acc_delta = addcmul(mul(state["acc_delta"], rho), delta, delta, 1 - rho)
    new_param = add_step(param, delta, -o.lr)
    return new_param, {"square_avg": square_avg, "acc_delta": acc_delta}


class AdadeltaState(NamedTuple):
    """The state of :func:`adadelta`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    square_avg: Any
    acc_delta: Any


def adadelta(
    lr: Hyperparameter = 1.0,
    rho: Hyperparameter = 0.9,
    eps: Hyperparameter = 1e-6,
    weight_decay: Hyperparameter = 0,
    foreach: bool | None = None,
    *,
    capturable: bool = False,
    maximize: bool = False,
    differentiable: bool = False,
) -> GradientTransformation[AdadeltaState]:
    r"""Adadelta (``torch.optim.Adadelta``).

    With :math:`g_t` the gradient (negated when ``maximize``), :math:`\rho` the decay
    and :math:`\lambda` the weight decay; :math:`v_0 = u_0 = 0`:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        v_t &\leftarrow \rho v_{t-1} + (1 - \rho) g_t^2 \\
        \Delta x_t &\leftarrow \frac{\sqrt{u_{t-1} + \epsilon}}
            {\sqrt{v_t + \epsilon}} g_t \\
        u_t &\leftarrow \rho u_{t-1} + (1 - \rho) \Delta x_t^2 \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma \Delta x_t

    Complex parameters are stepped as their real and imaginary parts, as torch does.

    Args:
      lr: coefficient :math:`\gamma` that scales the delta (float, JAX scalar or
        schedule ``count -> value``).
      rho: decay :math:`\rho` of the running averages, in [0, 1].
      eps: term added inside the square roots for numerical stability.
      weight_decay: L2 penalty :math:`\lambda`.
      maximize: ascend the objective instead of descending it.
      foreach, capturable, differentiable: torch's implementation flags, accepted
        and checked as torch checks them; XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is an
      :class:`AdadeltaState`.

    Example:
      >>> tx = fo.adadelta(lr=1.0, rho=0.9)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(ADADELTA, locals())


ADADELTA = Algorithm(
    name="Adadelta",
    functional=adadelta,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=AdadeltaState,
    elementwise=True,
)

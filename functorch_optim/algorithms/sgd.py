"""SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation
from ..functional import make_transform
from ..rule import (
    Algorithm,
    Array,
    Options,
    check_fused_flags,
    known_value,
    nonzero,
    require,
)


def _validate(o: Options) -> None:
    require(lambda v: not v < 0.0, o.lr, f"Invalid learning rate: {o.lr}")
    require(lambda v: not v < 0.0, o.momentum, f"Invalid momentum value: {o.momentum}")
    require(
        lambda v: not v < 0.0,  # torch tests `x < 0`: nan passes
        o.weight_decay,
        f"Invalid weight_decay value: {o.weight_decay}",
    )
    momentum, dampening = known_value(o.momentum), known_value(o.dampening)
    if o.nesterov and (
        (momentum is not None and momentum <= 0)
        or (dampening is not None and dampening != 0)
    ):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    check_fused_flags(o)


def _init(param, o: Options) -> dict:
    # torch creates the buffer from the first gradient; until then it is unused.
    return {"momentum_buffer": jnp.zeros_like(param) if nonzero(o.momentum) else None}


def _scalars(step, scalar_state, o: Options):
    return {"first_step": step == 1}, {}


def _step(param, grad, state, o: Options):
    grad = -grad if o.maximize else grad
    if nonzero(o.weight_decay):
        grad = grad + o.weight_decay * param
    buf = state["momentum_buffer"]
    if nonzero(o.momentum):
        # torch's first step copies the gradient into the buffer, undampened.
        buf = jnp.where(o.first_step, grad, buf * o.momentum + (1 - o.dampening) * grad)
        grad = grad + o.momentum * buf if o.nesterov else buf
    new_param = param - o.lr * grad
    return new_param, {"momentum_buffer": buf}


class SGDState(NamedTuple):
    """The state of :func:`sgd`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    momentum_buffer: Any  # None without momentum


def sgd(
    lr=1e-3,
    momentum=0,
    dampening=0,
    weight_decay=0,
    nesterov=False,
    *,
    maximize=False,
    foreach=None,
    differentiable=False,
    fused=None,
) -> GradientTransformation:
    r"""Stochastic gradient descent, optionally with momentum (``torch.optim.SGD``).

    With :math:`g_t` the gradient (negated when ``maximize``), :math:`\lambda` the
    weight decay, :math:`\mu` the momentum and :math:`\tau` the dampening:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        b_t &\leftarrow \begin{cases} g_t & t = 1 \\
                        \mu b_{t-1} + (1 - \tau) g_t & t > 1 \end{cases} \\
        g_t &\leftarrow g_t + \mu b_t \text{ if nesterov else } b_t \\
        \theta_t &\leftarrow \theta_{t-1} - \gamma g_t

    Args:
      lr: learning rate :math:`\gamma` (float, JAX scalar or schedule).
      momentum: momentum factor :math:`\mu`; 0 keeps no buffer, as torch.
      dampening: dampening :math:`\tau` of the momentum.
      weight_decay: L2 penalty :math:`\lambda`.
      nesterov: use Nesterov momentum (needs momentum > 0 and zero dampening).
      maximize: ascend the objective instead of descending it.
      foreach, differentiable, fused: torch's implementation flags, accepted and
        checked as torch checks them; XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is a
      :class:`SGDState`.

    Example:
      >>> tx = fo.sgd(lr=0.1, momentum=0.9, nesterov=True)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
    """
    return make_transform(SGD, locals())


SGD = Algorithm(
    name="SGD",
    functional=sgd,
    init=_init,
    step=_step,
    validate=_validate,
    state_names=("momentum_buffer",),
    state_type=SGDState,
    scalars=_scalars,
    elementwise=True,
    complex_as_real=False,  # every operation of the rule is linear
    sparse_grads="densify",
    sparse_grad_message=lambda o: (
        "add(sparse, dense) is not supported. Use add(dense, sparse) instead."
        if nonzero(o.weight_decay)
        else None
    ),
)

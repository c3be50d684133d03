"""SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation
from ..doubled import rounded
from ..functional import make_transform
from ..kernels import Increment
from ..rule import (
    Algorithm,
    Array,
    Hyperparameter,
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
    # torch creates the buffer at the first step, as a copy of the gradient. Until
    # then it holds -0.0, the exact identity of addition: for a finite momentum mu,
    # mu * -0.0 + g is g for every g (signed zeros, inf and nan included), so the
    # first step needs no branch of its own.
    if not nonzero(o.momentum):
        return {"momentum_buffer": None}
    return {"momentum_buffer": jnp.full_like(param, -0.0)}


class SGDStepScalars(NamedTuple):
    """The per-step scalar of SGD's rule: ``grad_factor``, the gradient's weight
    in the momentum buffer (None without dampening)."""

    grad_factor: Any = None


def _scalars(step, scalar_state, o: Options):
    if not nonzero(o.dampening):
        return SGDStepScalars(), {}
    # torch's first step is undampened: (1 - tau) g from the second step on
    return SGDStepScalars(jnp.where(step == 1, 1.0, rounded(1 - o.dampening))), {}


def _step(param, grad, state, o: Options, s: SGDStepScalars):
    grad = -grad if o.maximize else grad
    if nonzero(o.weight_decay):
        grad = grad + o.weight_decay * param
    buf = state["momentum_buffer"]
    if nonzero(o.momentum):
        new_grad = s.grad_factor * grad if nonzero(o.dampening) else grad
        buf = buf * o.momentum + new_grad
        grad = grad + o.momentum * buf if o.nesterov else buf
    # param - lr g, as the increment (-lr) g: the same rounding, and the
    # functional update is the increment itself
    return Increment(param, -o.lr * grad), {"momentum_buffer": buf}


class SGDState(NamedTuple):
    """The state of :func:`sgd`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    momentum_buffer: Any  # None without momentum


def sgd(
    lr: Hyperparameter = 1e-3,
    momentum: Hyperparameter = 0,
    dampening: Hyperparameter = 0,
    weight_decay: Hyperparameter = 0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    differentiable: bool = False,
    fused: bool | None = None,
) -> GradientTransformation[SGDState]:
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
    state_type=SGDState,
    keeps_step=False,  # torch's SGD keeps no step
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

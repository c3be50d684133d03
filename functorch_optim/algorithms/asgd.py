"""Averaged stochastic gradient descent (torch.optim.ASGD)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..core import GradientTransformation, scalar_dtype
from ..doubled import exact, maximum, rounded, rounded_values
from ..functional import make_transform
from ..kernels import TORCH_SCALAR_DTYPE, add, addcmul, mul, rdiv
from ..rule import (
    Algorithm,
    Array,
    Hyperparameter,
    Options,
    ScalarEntry,
    check_foreach_differentiable,
    nonzero,
    require_nonnegative,
)


def _validate(o: Options) -> None:
    require_nonnegative(o, "lr", "weight_decay")
    check_foreach_differentiable(o)


def _init(param, o: Options) -> dict:
    return {"ax": jnp.zeros_like(param)}


def _init_scalars(o: Options) -> dict:
    # torch keeps eta and mu as scalar tensors per parameter, eta starting at the
    # group's lr when the state is created.
    return {
        "eta": jnp.reshape(jnp.asarray(o.lr, TORCH_SCALAR_DTYPE), ()),
        "mu": jnp.ones((), TORCH_SCALAR_DTYPE),
    }


class ASGDStepScalars(NamedTuple):
    """The per-step scalars of ASGD's rule: ``eta`` and ``mu`` as torch reads them
    this step (its state's, before the step updates them) and ``decay`` (``1 -
    lambd * eta``, the parameter's factor)."""

    eta: Any
    decay: Any
    mu: Any


def _scalars(step, scalar_state, o: Options):
    lr, lambd = o.lr, o.lambd
    if o.capturable:
        # torch's capturable path computes eta and mu from a float32 step tensor
        # and reads them as float32 tensors, not as .item() doubles
        step = step.astype(TORCH_SCALAR_DTYPE)
        one = jnp.ones((), TORCH_SCALAR_DTYPE)
        eta, mu = scalar_state["eta"], scalar_state["mu"]
        return ASGDStepScalars(eta, 1 - lambd * eta, mu), {
            "eta": rdiv(lr, (1 + lambd * lr * step) ** o.alpha),
            "mu": rdiv(1, jnp.maximum(step - o.t0, one)),
        }
    count = exact(step)  # a Python int in torch
    new_eta = lr / ((1 + lambd * lr * count) ** o.alpha)
    new_mu = 1 / maximum(1, count - o.t0)
    # torch reads eta with .item(): the float32 value, then Python arithmetic.
    eta = exact(scalar_state["eta"].astype(scalar_dtype()))
    return rounded_values(
        ASGDStepScalars(eta, 1 - lambd * eta, scalar_state["mu"]),
        {
            "eta": jnp.asarray(rounded(new_eta), TORCH_SCALAR_DTYPE),
            "mu": jnp.asarray(rounded(new_mu), TORCH_SCALAR_DTYPE),
        },
    )


def _step(param, grad, state, o: Options, s: ASGDStepScalars):
    grad = -grad if o.maximize else grad
    if nonzero(o.weight_decay):
        grad = add(grad, param, o.weight_decay)
    param = mul(param, s.decay)
    ax = state["ax"]
    if o.capturable:  # torch multiplies by the eta tensor and always averages
        param = addcmul(param, grad, s.eta, -1)
        return param, {"ax": add(ax, mul(param - ax, s.mu))}
    param = add(param, grad, -s.eta)
    # torch copies the parameter while mu is exactly 1 (before t0) and averages
    # after; the copy is not the same bits as ax + (param - ax) * 1.
    ax = jnp.where(s.mu != 1, add(ax, mul(param - ax, s.mu)), param)
    return param, {"ax": ax}


class ASGDState(NamedTuple):
    """The state of :func:`asgd`: the step count, torch's ``eta`` and ``mu``
    (float32 scalars, once: torch's per-parameter values are all equal) and the
    average ``ax``, a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    eta: ScalarEntry
    mu: ScalarEntry
    ax: Any


def asgd(
    lr: Hyperparameter = 1e-2,
    lambd: Hyperparameter = 1e-4,
    alpha: Hyperparameter = 0.75,
    t0: Hyperparameter = 1e6,
    weight_decay: Hyperparameter = 0,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
) -> GradientTransformation[ASGDState]:
    r"""Averaged SGD (``torch.optim.ASGD``).

    With :math:`g_t` the gradient (negated when ``maximize``), :math:`\lambda` the
    weight decay, :math:`\eta_0 = \gamma` and :math:`\mu_0 = 1`:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        \theta_t &\leftarrow \theta_{t-1} (1 - \lambda_d \eta_{t-1})
            - \eta_{t-1} g_t \\
        a_t &\leftarrow \begin{cases} \theta_t & \mu_{t-1} = 1 \\
            a_{t-1} + \mu_{t-1} (\theta_t - a_{t-1}) & \text{otherwise} \end{cases} \\
        \eta_t &\leftarrow \gamma / (1 + \lambda_d \gamma t)^\alpha \\
        \mu_t &\leftarrow 1 / \max(1, t - t_0)

    :math:`a_t` (``ax``) is the running average of the iterates; the parameters
    themselves follow the SGD path. ``eta`` and ``mu`` are float32 scalars, as torch
    keeps them (its default scalar dtype), and their rounding is part of
    torch's trajectory.

    Args:
      lr: learning rate :math:`\gamma` (float, JAX scalar or schedule
        ``count -> value``).
      lambd: decay term :math:`\lambda_d`.
      alpha: power :math:`\alpha` of the eta update.
      t0: step :math:`t_0` at which averaging starts.
      weight_decay: L2 penalty :math:`\lambda`.
      maximize: ascend the objective instead of descending it.
      foreach, differentiable, capturable: torch's implementation flags, accepted
        and checked as torch checks them; XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is an
      :class:`ASGDState`.

    Example:
      >>> tx = fo.asgd(lr=0.01, t0=100.0)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
      >>> averaged = state.ax
    """
    return make_transform(ASGD, locals())


ASGD = Algorithm(
    name="ASGD",
    functional=asgd,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=ASGDState,
    scalars=_scalars,
    init_scalars=_init_scalars,
    elementwise=True,
    reads_params=lambda options: True,  # the decay term and ax read the parameters
)

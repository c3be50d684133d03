"""Resilient backpropagation (torch.optim.Rprop)."""

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
    known_value,
    require_nonnegative,
)


def _validate(o: Options) -> None:
    require_nonnegative(o, "lr")
    etaminus, etaplus = (known_value(eta) for eta in o.etas)
    if (
        etaminus is not None
        and etaplus is not None
        and not 0.0 < etaminus < 1.0 < etaplus
    ):
        raise ValueError(f"Invalid eta values: {o.etas[0]}, {o.etas[1]}")


def _init(param, o: Options) -> dict:
    # torch fills step_size with lr when it creates the state; a complex parameter
    # gets lr on both its real and imaginary part (it is two real numbers).
    fill = o.lr * (1 + 1j) if jnp.iscomplexobj(param) else o.lr
    return {"prev": jnp.zeros_like(param), "step_size": jnp.full_like(param, fill)}


def _torch_sign(x):
    """``torch.sign``: 0 for NaN (``jnp.sign`` gives NaN), so a NaN gradient leaves
    its step size and parameter alone, as in torch."""
    return (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)


def _step(param, grad, state, o: Options, s: None):
    etaminus, etaplus = map(rounded, o.etas)
    step_size_min, step_size_max = map(rounded, o.step_sizes)
    dtype = param.dtype
    grad = -grad if o.maximize else grad
    prev, step_size = state["prev"], state["step_size"]

    # torch writes the etas into a tensor of the parameter's dtype and then compares
    # it with etaminus, so the comparisons are made after rounding to that dtype.
    etaminus_t = jnp.asarray(etaminus, dtype)
    sign = _torch_sign(grad * prev)
    factor = jnp.where(sign > 0, jnp.asarray(etaplus, dtype), sign)
    factor = jnp.where(factor < 0, etaminus_t, factor)
    factor = jnp.where(factor == 0, jnp.ones((), dtype), factor)

    step_size = jnp.clip(step_size * factor, step_size_min, step_size_max)
    # After a sign change the gradient is forgotten: no move now, no sign next time.
    grad = jnp.where(factor == etaminus_t, jnp.zeros((), dtype), grad)
    # param - sign(g) step_size: the increment, negated exactly
    return Increment(param, -(_torch_sign(grad) * step_size)), {
        "prev": grad,
        "step_size": step_size,
    }


class RpropState(NamedTuple):
    """The state of :func:`rprop`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    prev: Any
    step_size: Any


def rprop(
    lr: Hyperparameter = 1e-2,
    etas: tuple[Hyperparameter, Hyperparameter] = (0.5, 1.2),
    step_sizes: tuple[Hyperparameter, Hyperparameter] = (1e-6, 50),
    *,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
) -> GradientTransformation[RpropState]:
    r"""Rprop (``torch.optim.Rprop``): per-coordinate step sizes driven by signs.

    With :math:`g_t` the gradient (negated when ``maximize``), :math:`\eta_-,
    \eta_+` the etas and :math:`[s_{min}, s_{max}]` the step-size bounds, per
    coordinate:

    .. math::
        \eta &\leftarrow \begin{cases} \eta_+ & g_t g_{t-1} > 0 \\
                                       \eta_- & g_t g_{t-1} < 0 \\
                                       1 & \text{otherwise} \end{cases} \\
        s_t &\leftarrow \mathrm{clip}(\eta\, s_{t-1}, s_{min}, s_{max}) \\
        g_t &\leftarrow 0 \text{ where } \eta = \eta_- \\
        \theta_t &\leftarrow \theta_{t-1} - \mathrm{sign}(g_t)\, s_t

    :math:`s_0 = \gamma` (the learning rate when the state is created; later changes
    of ``lr`` do not affect the step sizes, as in torch). Complex parameters are
    treated as pairs of real numbers.

    Args:
      lr: learning rate :math:`\gamma`, the initial step size.
      etas: multiplicative decrease and increase factors :math:`(\eta_-, \eta_+)`,
        with :math:`0 < \eta_- < 1 < \eta_+`.
      step_sizes: minimal and maximal step sizes :math:`(s_{min}, s_{max})`.
      maximize: ascend the objective instead of descending it.
      capturable, foreach, differentiable: torch's implementation flags, accepted;
        XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is a
      :class:`RpropState`.

    Example:
      >>> tx = fo.rprop(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50))
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(RPROP, locals())


RPROP = Algorithm(
    name="Rprop",
    functional=rprop,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=RpropState,
    elementwise=True,
    # The step needs grad * prev, not the parameter values.
    reads_params=lambda options: False,
)

"""Adagrad (torch.optim.Adagrad)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core import GradientTransformation
from ..doubled import exact, rounded_values
from ..functional import make_transform
from ..kernels import add, addcdiv_step, addcmul
from ..rule import (
    Algorithm,
    Array,
    Hyperparameter,
    Options,
    check_foreach_differentiable,
    check_fused_flags,
    nonzero,
    require_nonnegative,
)

# torch's ``_get_fused_kernels_supported_devices()``, quoted by its fused-dtype error.
_FUSED_DEVICES = ["mps", "cuda", "xpu", "hpu", "cpu", "mtia", "privateuseone"]


def _validate(o: Options) -> None:
    require_nonnegative(
        o, "lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"
    )
    check_fused_flags(o)
    check_foreach_differentiable(o)


def _check_fused_dtype(param) -> None:
    """torch's fused kernel takes real floating point parameters only."""
    if jnp.iscomplexobj(param):
        device = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
        raise RuntimeError(
            "`fused=True` requires all the params to be floating point Tensors of "
            f"supported devices: {_FUSED_DEVICES} but torch.{param.dtype} and {device}"
        )


def _init(param, o: Options) -> dict:
    if o.fused:
        _check_fused_dtype(param)
    # torch fills the accumulator at construction; a complex parameter's real and
    # imaginary parts each start at the initial value.
    value = o.initial_accumulator_value
    if jnp.iscomplexobj(param):
        value = value * (1 + 1j)
    return {"sum": jnp.full_like(param, value)}


class AdagradStepScalars(NamedTuple):
    """The per-step scalar of Adagrad's rule: ``step_size`` (torch's ``clr``, the
    decayed learning rate)."""

    step_size: Any


def _scalars(step, scalar_state, o: Options):
    step_size = o.lr / (1 + (exact(step) - 1) * o.lr_decay)
    return rounded_values(AdagradStepScalars(step_size), {})


def _step(param, grad, state, o: Options, s: AdagradStepScalars):
    grad = -grad if o.maximize else grad
    if nonzero(o.weight_decay):
        grad = add(grad, param, o.weight_decay)
    state_sum = addcmul(state["sum"], grad, grad)
    std = add(jnp.sqrt(state_sum), o.eps)
    new_param = addcdiv_step(param, grad, std, -s.step_size)
    return new_param, {"sum": state_sum}


class AdagradState(NamedTuple):
    """The state of :func:`adagrad`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    sum: Any


def adagrad(
    lr: Hyperparameter = 1e-2,
    lr_decay: Hyperparameter = 0,
    weight_decay: Hyperparameter = 0,
    initial_accumulator_value: Hyperparameter = 0,
    eps: Hyperparameter = 1e-10,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
) -> GradientTransformation[AdagradState]:
    r"""Adagrad (``torch.optim.Adagrad``).

    With :math:`g_t` the gradient (negated when ``maximize``), :math:`\eta` the lr
    decay, :math:`\lambda` the weight decay and :math:`s_0 = \tau` the initial
    accumulator value:

    .. math::
        \tilde\gamma &\leftarrow \gamma / (1 + (t - 1) \eta) \\
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        s_t &\leftarrow s_{t-1} + g_t^2 \\
        \theta_t &\leftarrow \theta_{t-1}
            - \tilde\gamma \frac{g_t}{\sqrt{s_t} + \epsilon}

    Complex parameters are stepped as their real and imaginary parts, as torch does
    (so a complex ``sum`` starts at :math:`\tau + i\tau`).

    Args:
      lr: learning rate :math:`\gamma` (float, JAX scalar or schedule
        ``count -> value``).
      lr_decay: learning rate decay :math:`\eta`.
      weight_decay: L2 penalty :math:`\lambda`.
      initial_accumulator_value: the starting value :math:`\tau` of ``sum``.
      eps: term added to the denominator for numerical stability.
      maximize: ascend the objective instead of descending it.
      foreach, differentiable, fused: torch's implementation flags, accepted and
        checked as torch checks them (``fused`` rejects complex parameters, as
        torch's fused kernel does); XLA compiles one fused step either way.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is an
      :class:`AdagradState`.

    Example:
      >>> tx = fo.adagrad(lr=0.1, lr_decay=1e-3, initial_accumulator_value=0.1)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(ADAGRAD, locals())


ADAGRAD = Algorithm(
    name="Adagrad",
    functional=adagrad,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=AdagradState,
    scalars=_scalars,
    elementwise=True,
    state_at_construction=True,
    sparse_grads="densify",
    sparse_grad_message=lambda o: (
        "weight_decay option is not compatible with sparse gradients"
        if nonzero(o.weight_decay)
        else None
    ),
)

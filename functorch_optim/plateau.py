r"""``ReduceLROnPlateau`` as a gradient transformation.

The state machine (best metric, bad epochs, cooldown) is
:mod:`functorch_optim.schedule_math`'s, the one torch's class in
:mod:`functorch_optim.lr_scheduler` runs too; here it runs on traced scalars, so the
transformation works under ``jax.jit`` and inside ``optax.chain``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import schedule_math as sm
from .core import GradientTransformation, scalar_dtype


class ReduceLROnPlateauState(NamedTuple):
    """The state of :func:`reduce_on_plateau`, with torch's attribute names."""

    scale: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array
    last_epoch: jax.Array


def reduce_on_plateau(
    mode="min",
    factor=0.1,
    patience=10,
    threshold=1e-4,
    threshold_mode="rel",
    cooldown=0,
    min_scale=0.0,
    eps=1e-8,
) -> GradientTransformation:
    r"""``ReduceLROnPlateau`` as a transformation that scales the updates.

    Each ``update(updates, state, params, value=loss)`` is one
    ``scheduler.step(loss)`` of torch's scheduler on an lr of 1.0 followed by the
    optimizer step: the loss is compared with the best seen (``threshold`` relative
    or absolute, per ``threshold_mode``); after more than ``patience`` calls
    without improvement the scale becomes :math:`\max(s \cdot f, s_{min})` (unless
    that changes it by less than ``eps``) and ``cooldown`` calls are ignored. The
    updates are multiplied by the scale. For an optimizer whose update is linear
    in lr (SGD, Adam, AdamW, ...) this equals torch's loop of
    ``scheduler.step(loss); optimizer.step()`` with ``min_lr = min_scale * lr``.

    Chain it after the optimizer: ``fo.chain(fo.adam(1e-3), fo.reduce_on_plateau())``.

    The scale is state in the scalar dtype: with x64 off, float32, each reduction
    rounding once (``factor**k`` within about ``k / 2`` ulps of torch's double).
    Its product with the updates is a rounding torch's loop does not make (torch
    scales the lr inside the optimizer's double arithmetic), so a double-accurate
    scale would not make the updates torch's; the scale stays one float32.

    Args:
      mode: 'min' (the loss should decrease) or 'max'.
      factor: the factor :math:`f < 1` of a reduction.
      patience: the number of calls without improvement tolerated.
      threshold: the improvement that counts as one.
      threshold_mode: 'rel' (``best * (1 -/+ threshold)``) or 'abs'
        (``best -/+ threshold``).
      cooldown: calls to wait after a reduction before counting bad ones again.
      min_scale: the lower bound of the scale (torch's ``min_lr`` over the lr).
      eps: reductions smaller than this are skipped.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose ``update`` needs
      the keyword ``value``; its state is a :class:`ReduceLROnPlateauState`.

    Example:
      >>> tx = fo.chain(fo.sgd(lr=0.1), fo.reduce_on_plateau(patience=5))
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params, value=loss_fn(params))
    """
    sm.check_plateau_factor(factor)
    sm.check_plateau_modes(mode, threshold_mode)

    def init(params):
        del params
        dtype = scalar_dtype()
        return ReduceLROnPlateauState(
            scale=jnp.ones((), dtype),
            best=jnp.asarray(sm.plateau_worst(mode), dtype),
            num_bad_epochs=jnp.zeros((), jnp.int32),
            cooldown_counter=jnp.zeros((), jnp.int32),
            last_epoch=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(
                "reduce_on_plateau's update needs the loss: update(..., value=loss)"
            )
        counted = sm.plateau_count(
            sm.PlateauCounters(
                state.best, state.num_bad_epochs, state.cooldown_counter
            ),
            jnp.asarray(value).astype(state.best.dtype),
            mode,
            threshold,
            threshold_mode,
            sm.JAX,
        )
        counters, reduce = sm.plateau_decide(counted, patience, cooldown, sm.JAX)
        reduced, changes = sm.plateau_reduced(
            state.scale, factor, min_scale, eps, sm.JAX
        )
        scale = jnp.where(reduce & changes, reduced, state.scale)
        new_state = ReduceLROnPlateauState(
            scale=scale, **counters._asdict(), last_epoch=state.last_epoch + 1
        )
        scaled = jax.tree.map(
            lambda u: None if u is None else (u * scale).astype(u.dtype),
            updates,
            is_leaf=lambda x: x is None,
        )
        return scaled, new_state

    return GradientTransformation(init, update)

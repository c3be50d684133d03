"""torch's ``update_bn``: recompute the running statistics of a flax ``nnx`` model's
BatchNorm layers from data, as torch's cumulative averages (of the batch means and
the unbiased batch variances)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import interop
from .averaged_model import AveragedModel


class _BatchCount(nnx.Variable):
    """The batches a BatchNorm has normalized during :func:`update_bn` (torch's
    ``num_batches_tracked``)."""


def _cumulative_call(base: type) -> Callable:
    def __call__(self, x, use_running_average=None, *, mask=None):
        # Train mode, as torch's model.train(): normalize with the batch statistics.
        running_mean, running_var = self.mean[...], self.var[...]
        out = base.__call__(self, x, use_running_average=False, mask=mask)
        feature_axes = {a % x.ndim for a in np.atleast_1d(self.axis)}
        axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        dtype = jnp.promote_types(x.dtype, running_mean.dtype)
        x = x.astype(dtype)
        if mask is None:
            n = math.prod(x.shape[i] for i in axes)
            if n <= 1:
                raise ValueError(
                    "Expected more than 1 value per channel when training, got "
                    f"input size {x.shape}"
                )
        else:
            n = jnp.sum(jnp.broadcast_to(mask, x.shape), axes).astype(dtype)
        mean = jnp.mean(x, axes, where=mask)
        var_sum = jnp.sum((x - jnp.expand_dims(mean, axes)) ** 2, axes, where=mask)
        # momentum=None: the factor 1 / (batches seen) makes the running values
        # the mean over batches of the batch mean and of the unbiased variance.
        self.num_batches_tracked[...] += 1
        factor = 1 / self.num_batches_tracked[...].astype(dtype)
        self.mean[...] = (
            factor * mean.reshape(running_mean.shape) + (1 - factor) * running_mean
        ).astype(running_mean.dtype)
        unbiased = (var_sum / (n - 1)).reshape(running_var.shape)
        self.var[...] = (factor * unbiased + (1 - factor) * running_var).astype(
            running_var.dtype
        )
        return out

    return __call__


_CUMULATIVE_CLASSES: dict[type, type] = {}


def _cumulative_class(cls: type) -> type:
    """``cls`` (an ``nnx.BatchNorm`` class) with torch's cumulative statistics;
    one per class, so the jitted forward pass is reused across calls."""
    if cls not in _CUMULATIVE_CLASSES:
        _CUMULATIVE_CLASSES[cls] = type(
            f"Cumulative{cls.__name__}", (cls,), {"__call__": _cumulative_call(cls)}
        )
    return _CUMULATIVE_CLASSES[cls]


@nnx.jit
def _forward(model: nnx.Module, x: Any) -> None:
    model(x)


def update_bn(loader: Iterable[Any], model: Any, device: Any = None) -> None:
    r"""torch's ``update_bn``: recompute the running statistics of every
    ``nnx.BatchNorm`` of ``model`` with one pass over ``loader``.

    As torch does: the statistics are reset (mean 0, variance 1), the model runs in
    train mode (batch statistics; dropout on) on each batch, and each BatchNorm
    accumulates with momentum ``None``, so after :math:`K` batches

    .. math::
        \mu = \frac1K \sum_k \bar x_k, \qquad
        \sigma^2 = \frac1K \sum_k \frac{1}{n_k - 1} \sum_i (x_{k,i} - \bar x_k)^2

    per feature, with torch's *unbiased* batch variances (flax's own BatchNorm
    update uses the biased one and a momentum). ``model``'s attributes (its
    ``use_running_average``/``deterministic`` mode, each BatchNorm's ``momentum``)
    are left as they were: the pass runs on an ``nnx.view`` of it in train mode.
    A model without BatchNorm is left untouched.

    Args:
      loader: an iterable of batches: arrays (JAX, NumPy or torch), or lists /
        tuples whose first element is the model's input.
      model: an ``nnx.Module``, or an :class:`AveragedModel` of one.
      device: a ``jax.Device`` or ``Sharding`` to move each batch to, or None.

    Example:
      >>> swa_model = fo.swa_utils.AveragedModel(model)
      >>> # ... training, with swa_model.update_parameters(model)
      >>> fo.swa_utils.update_bn(train_batches, swa_model)
    """
    if isinstance(model, AveragedModel):
        model = model.module
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"update_bn needs an nnx.Module with BatchNorm layers, got "
            f"{type(model).__name__}"
        )
    norms = [
        node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)
    ]
    if not norms:
        return
    for norm in norms:
        if norm.axis_name is not None:
            raise ValueError(
                "update_bn computes each BatchNorm's statistics on its own input; "
                f"a BatchNorm with axis_name={norm.axis_name!r} is not supported"
            )
    for norm in norms:
        norm.mean[...] = jnp.zeros_like(norm.mean[...])
        norm.var[...] = jnp.ones_like(norm.var[...])
    view = nnx.view(
        model, deterministic=False, use_running_average=False, raise_if_not_found=False
    )
    for _, node in nnx.iter_graph(view):
        if isinstance(node, nnx.BatchNorm):
            counted: Any = node  # it becomes a subclass with a batch count
            counted.__class__ = _cumulative_class(type(node))
            counted.num_batches_tracked = _BatchCount(jnp.zeros((), jnp.int32))
    for batch in loader:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        batch = interop.to_jax(batch)
        if device is not None:
            batch = jax.device_put(batch, device)
        _forward(view, batch)

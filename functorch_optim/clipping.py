"""Gradient clipping with ``torch.nn.utils`` semantics, as chainable transforms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .core import GradientTransformation, is_concrete


def _nonfinite_message(norm_type: float) -> str:
    return (
        f"The total norm of order {norm_type} for gradients from `parameters` is "
        "non-finite, so it cannot be clipped. To disable this error and scale the "
        "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
    )


def _vector_norm(x: jax.Array, norm_type: float) -> jax.Array:
    """``torch.linalg.vector_norm`` of a flattened array."""
    # over every axis, not raveled: a reshape of an array sharded along explicit
    # mesh axes would have to gather it
    x = jnp.abs(x)
    if math.isinf(norm_type):
        if x.size == 0:
            raise RuntimeError(
                "_foreach_norm cannot compute the infinity norm on an empty tensor "
                "because the operation does not have an identity"
            )
        return jnp.max(x) if norm_type > 0 else jnp.min(x)
    if norm_type == 0:
        return jnp.sum(x != 0).astype(x.dtype)
    if norm_type == 1:
        return jnp.sum(x)
    if norm_type == 2:
        return jnp.sqrt(jnp.sum(x * x))
    return jnp.sum(x**norm_type) ** (1.0 / norm_type)


def global_norm(grads, norm_type: float = 2.0) -> jax.Array:
    """``torch.nn.utils.get_total_norm``: the norm of the per-leaf norms."""
    norm_type = float(norm_type)
    leaves = [g for g in jax.tree.leaves(grads)]
    if not leaves:
        return jnp.zeros(())
    dtype = jnp.result_type(leaves[0])
    norms = jnp.stack([_vector_norm(g, norm_type).astype(dtype) for g in leaves])
    return _vector_norm(norms, norm_type)


def _raise_if_nonfinite(total_norm: jax.Array, norm_type: float) -> None:
    def check(norm):
        if not math.isfinite(float(norm)):
            raise RuntimeError(_nonfinite_message(norm_type))

    if is_concrete(total_norm):
        check(total_norm)
    else:  # under jit: the error surfaces when the computation runs
        jax.debug.callback(check, total_norm)


def clip_grad_norm(
    max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> GradientTransformation:
    r"""Scale gradients so their total norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``:

    .. math::
        \|g\| = \big\| (\|g_1\|_p, \ldots, \|g_n\|_p) \big\|_p, \qquad
        g_i \leftarrow g_i \cdot \min\Big(\frac{\text{max\_norm}}{\|g\| + 10^{-6}},
        1\Big)

    Args:
      max_norm: the largest total norm kept.
      norm_type: the order ``p`` of the norms (``float('inf')`` for the max norm).
      error_if_nonfinite: raise torch's ``RuntimeError`` when the total norm is
        nan or infinite (under jit, when the compiled step runs).

    Returns:
      A stateless :class:`~functorch_optim.GradientTransformation`.

    Example:
      >>> tx = fo.chain(fo.clip_grad_norm(1.0), fo.sgd(lr=0.1))
    """
    norm_type = float(norm_type)

    def init(params):
        del params
        return ()

    def update(grads, state, params=None, **extra_args):
        del params, extra_args
        total_norm = global_norm(grads, norm_type)
        if error_if_nonfinite:
            _raise_if_nonfinite(total_norm, norm_type)
        coef = jnp.minimum(max_norm / (total_norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), grads), state

    return GradientTransformation(init, update)


def clip_grad_value(clip_value: float) -> GradientTransformation:
    r"""Clamp every gradient entry to ``[-clip_value, clip_value]``.

    As ``torch.nn.utils.clip_grad_value_``: :math:`g \leftarrow \min(\max(g, -c), c)`.

    Example:
      >>> tx = fo.chain(fo.clip_grad_value(0.5), fo.adam())
    """
    clip_value = float(clip_value)

    def init(params):
        del params
        return ()

    def update(grads, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(
            lambda g: jnp.clip(g, -clip_value, clip_value), grads
        ), state

    return GradientTransformation(init, update)

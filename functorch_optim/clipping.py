"""Gradient clipping with ``torch.nn.utils`` semantics: chainable transforms
(``clip_grad_norm``), and torch's in-place forms (``clip_grad_norm_``) for a facade's
stored grads or a tree of gradients."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from .core import GradientTransformation, is_concrete


def _nonfinite_message(norm_type: float) -> str:
    return (
        f"The total norm of order {norm_type} for gradients from `parameters` is "
        "non-finite, so it cannot be clipped. To disable this error and scale the "
        "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
    )


def _vector_norm(x: jax.Array, norm_type: float | jax.Array) -> jax.Array:
    """``torch.linalg.vector_norm`` of a flattened array.

    A traced ``norm_type`` (``optax.inject_hyperparams`` makes every float
    hyperparameter one) selects the same formula at run time."""
    # over every axis, not raveled: a reshape of an array sharded along explicit
    # mesh axes would have to gather it
    x = jnp.abs(x)
    if not is_concrete(norm_type):
        return _traced_order_norm(x, norm_type)
    norm_type = float(norm_type)
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


def _traced_order_norm(abs_x: jax.Array, norm_type: Any) -> jax.Array:
    """The norm of ``abs_x`` for an order known only at run time: each of
    :func:`_vector_norm`'s formulas is a branch, so every order rounds as it does
    with a Python float."""
    p = jnp.asarray(norm_type, abs_x.dtype)
    branches = [
        lambda x, p: jnp.max(x, initial=0),  # inf (|x| >= 0: 0 is no bound)
        lambda x, p: jnp.min(x, initial=jnp.inf),  # -inf
        lambda x, p: jnp.sum(x != 0).astype(x.dtype),
        lambda x, p: jnp.sum(x),
        lambda x, p: jnp.sqrt(jnp.sum(x * x)),
        lambda x, p: jnp.sum(x**p) ** (1 / p),
    ]
    special = [p == jnp.inf, p == -jnp.inf, p == 0, p == 1, p == 2]
    index = jnp.select(special, list(range(len(special))), len(special))
    return jax.lax.switch(index, branches, abs_x, p)


def global_norm(grads, norm_type: float | jax.Array = 2.0) -> jax.Array:
    """``torch.nn.utils.get_total_norm``: the norm of the per-leaf norms."""
    leaves = [g for g in jax.tree.leaves(grads)]
    if not leaves:
        return jnp.zeros(())
    dtype = jnp.result_type(leaves[0])
    norms = jnp.stack([_vector_norm(g, norm_type).astype(dtype) for g in leaves])
    return _vector_norm(norms, norm_type)


def _raise_if_nonfinite(total_norm: jax.Array, norm_type: float | jax.Array) -> None:
    def check(norm, order):
        if not math.isfinite(float(norm)):
            raise RuntimeError(_nonfinite_message(float(order)))

    if is_concrete(total_norm) and is_concrete(norm_type):
        check(total_norm, norm_type)
    else:  # under jit: the error surfaces when the computation runs
        jax.debug.callback(check, total_norm, norm_type)


def clip_by_total_norm(
    grads: Any,
    max_norm: float | jax.Array,
    norm_type: float | jax.Array = 2.0,
    error_if_nonfinite: bool = False,
) -> tuple[Any, jax.Array]:
    r"""``grads`` scaled so their total norm is at most ``max_norm``, and that norm.

    The arithmetic of ``torch.nn.utils.clip_grad_norm_``:

    .. math::
        \|g\| = \big\| (\|g_1\|_p, \ldots, \|g_n\|_p) \big\|_p, \qquad
        g_i \leftarrow g_i \cdot \min\Big(\frac{\text{max\_norm}}{\|g\| + 10^{-6}},
        1\Big)

    ``None`` leaves (params without a gradient) are skipped, as torch skips a
    ``None`` ``.grad``. Every argument may be traced.
    """
    total_norm = global_norm(grads, norm_type)
    if error_if_nonfinite:
        _raise_if_nonfinite(total_norm, norm_type)
    coef = jnp.minimum(max_norm / (total_norm + 1e-6), 1.0)
    return jax.tree.map(lambda g: (g * coef).astype(g.dtype), grads), total_norm


def clip_grad_norm(
    max_norm: float | jax.Array,
    norm_type: float | jax.Array = 2.0,
    error_if_nonfinite: bool = False,
) -> GradientTransformation:
    r"""Scale gradients so their total norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_`` (see :func:`clip_by_total_norm` for the
    math), as a chainable transform. ``max_norm`` and ``norm_type`` may be traced,
    so ``optax.inject_hyperparams(fo.clip_grad_norm)(1.0)`` works under jit.

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

    def init(params):
        del params
        return ()

    def update(grads, state, params=None, **extra_args):
        del params, extra_args
        clipped, _ = clip_by_total_norm(grads, max_norm, norm_type, error_if_nonfinite)
        return clipped, state

    return GradientTransformation(init, update)


def _clamp(grads: Any, clip_value: float | jax.Array) -> Any:
    return jax.tree.map(lambda g: jnp.clip(g, -clip_value, clip_value), grads)


def clip_grad_value(clip_value: float | jax.Array) -> GradientTransformation:
    r"""Clamp every gradient entry to ``[-clip_value, clip_value]``.

    As ``torch.nn.utils.clip_grad_value_``: :math:`g \leftarrow \min(\max(g, -c), c)`.

    Example:
      >>> tx = fo.chain(fo.clip_grad_value(0.5), fo.adam())
    """

    def init(params):
        del params
        return ()

    def update(grads, state, params=None, **extra_args):
        del params, extra_args
        return _clamp(grads, clip_value), state

    return GradientTransformation(init, update)


# --- torch.nn.utils's in-place forms ------------------------------------------------


def _holds_grads(target: Any) -> bool:
    """A torch-style optimizer of this library: it stores grads (``opt.grads``)."""
    return hasattr(target, "param_groups") and hasattr(type(target), "grads")


def clip_grad_norm_(
    parameters: Any,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Any:
    """``torch.nn.utils.clip_grad_norm_``: clip the gradients and return their
    total norm (before clipping), which training loops log.

    Args:
      parameters: a facade optimizer (``fo.AdamW(...)``): its stored grads
        (``opt.grads``, set by ``opt.grads = g`` or ``opt.accumulate_grad(g)``) are
        clipped in place, as torch clips each ``.grad``; or a tree of gradients,
        which JAX cannot change in place, so the clipped tree is returned too.
      max_norm, norm_type, error_if_nonfinite: as torch's.
      foreach: accepted for torch's signature; XLA fuses the loop either way.

    Returns:
      For an optimizer, the total norm (a scalar array, as torch's tensor); for a
      tree of gradients, ``(clipped_grads, total_norm)``.

    Example:
      >>> opt.grads = grads
      >>> norm = fo.clip_grad_norm_(opt, 1.0)
      >>> opt.step()
      >>> clipped, norm = fo.clip_grad_norm_(grads, 1.0)
    """
    del foreach
    if not _holds_grads(parameters):
        return clip_by_total_norm(parameters, max_norm, norm_type, error_if_nonfinite)
    clipped, total_norm = clip_by_total_norm(
        parameters.grads, max_norm, norm_type, error_if_nonfinite
    )
    parameters.grads = clipped
    return total_norm


def clip_grad_value_(
    parameters: Any, clip_value: float, foreach: bool | None = None
) -> Any:
    """``torch.nn.utils.clip_grad_value_``: clamp every gradient entry to
    ``[-clip_value, clip_value]``.

    Args:
      parameters: a facade optimizer, whose stored grads are clamped in place
        (returns ``None``, as torch); or a tree of gradients (returns the clamped
        tree).
      clip_value: the bound.
      foreach: accepted for torch's signature.

    Example:
      >>> fo.clip_grad_value_(opt, 0.5)
    """
    del foreach
    if not _holds_grads(parameters):
        return _clamp(parameters, clip_value)
    parameters.grads = _clamp(parameters.grads, clip_value)
    return None

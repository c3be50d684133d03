"""Checks on the arrays users hand in, with errors that name the bad leaf.

The functional transforms (through :mod:`functorch_optim.runner`) and the facade
(:mod:`functorch_optim.optim`) both check here, before any state is created or
changed, so a wrong input fails at once with the leaf's path and dtype or shape
instead of failing later inside XLA (or, worse, broadcasting silently).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.tree_util import keystr


def leaf_dtype(leaf: Any) -> Any:
    """The dtype of an array, a ``ShapeDtypeStruct`` or a Python number."""
    dtype = getattr(leaf, "dtype", None)
    return jnp.result_type(leaf) if dtype is None else dtype


def is_optimizable(dtype: Any) -> bool:
    """Floating-point and complex dtypes have gradients; integers and booleans do
    not (torch cannot even make them require grad)."""
    return jnp.issubdtype(dtype, jnp.inexact)


def holds_state(leaf: Any) -> bool:
    """Whether a leaf of a params tree is a parameter: an array (also abstract: a
    ``ShapeDtypeStruct``, a tracer) or a Python float or complex, as ``jax.grad``
    takes them. Other leaves (functions, Python ints and objects, None: a model's
    activation, its sizes, equinox's filtered-out leaves) keep no state and get
    None updates."""
    return (hasattr(leaf, "shape") and hasattr(leaf, "dtype")) or isinstance(
        leaf, (float, complex)
    )


def flatten_params(params: Any) -> tuple[list, Any]:
    """The leaves of ``params`` and its treedef, None leaves included (a None
    param, equinox's filtered-out leaf, is a leaf without state, so that its
    state and update, None, sit at a leaf of the same structure)."""
    return jax.tree.flatten(params, is_leaf=is_none)


def is_none(x: Any) -> bool:
    return x is None


def check_param_dtypes(params: Any, what: str = "params") -> None:
    """Raise TypeError naming the first parameter of ``params`` (see
    :func:`holds_state`) that is not floating point or complex.

    Args:
      params: a pytree of arrays (or ``ShapeDtypeStruct``).
      what: how the message names the tree (``params`` reads ``params['w']``).
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not holds_state(leaf):
            continue
        dtype = leaf_dtype(leaf)
        if not is_optimizable(dtype):
            raise TypeError(
                f"{what}{keystr(path)} has dtype {jnp.dtype(dtype).name}: only "
                "floating-point and complex parameters can be optimized"
            )


def check_grads(
    params: Sequence[Any], grads: Sequence[Any], names: Sequence[str]
) -> None:
    """Each gradient has its parameter's shape and a floating-point (or, for a
    complex parameter, complex) dtype; ``None`` gradients are skipped.

    Args:
      params, grads: parallel leaves.
      names: each leaf's name in messages (``grads['w']``).
    """
    for param, grad, name in zip(params, grads, names, strict=True):
        if grad is None or not holds_state(param):
            continue
        shape, expected = _shape(grad), _shape(param)
        if shape != expected:
            raise ValueError(
                f"{name} has shape {shape}, but its parameter has shape {expected}"
            )
        dtype, param_dtype = leaf_dtype(grad), leaf_dtype(param)
        if not is_optimizable(dtype) or (
            jnp.issubdtype(dtype, jnp.complexfloating)
            and not jnp.issubdtype(param_dtype, jnp.complexfloating)
        ):
            raise TypeError(
                f"{name} has dtype {jnp.dtype(dtype).name}, which is not a gradient "
                f"of a {jnp.dtype(param_dtype).name} parameter"
            )


def _shape(leaf: Any) -> tuple:
    # sparse (BCOO) gradients have a shape but are not array-likes for jnp.shape
    shape = getattr(leaf, "shape", None)
    return tuple(jnp.shape(leaf) if shape is None else shape)


def leaf_names(tree: Any, what: str, is_leaf: Any = None) -> list[str]:
    """``what`` followed by each leaf's path, in flattening order (with
    ``is_leaf=is_none``, that of :func:`flatten_params`)."""
    paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return [what + keystr(path) for path, _ in paths]

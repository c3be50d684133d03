"""The functional form of weight averaging: :func:`averaged`, an ``(init, update)``
pair of pure functions over pytrees (jit, scan, vmap, shardings kept), and its
state. :class:`~functorch_optim.swa_utils.AveragedModel` runs this same rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from ..checks import leaf_names
from .avg_fns import (
    Array,
    AvgFn,
    MultiAvgFn,
    PyTree,
    get_swa_avg_fn,
)


class AveragedState(NamedTuple):
    """The state of :func:`averaged`, with torch's count name.

    Attributes:
      n_averaged: int32 scalar, the number of models averaged so far.
      params: the averaged params, a tree shaped like the params.
    """

    n_averaged: Array
    params: PyTree


class Averaging(NamedTuple):
    """An ``(init, update)`` pair of pure functions averaging params over steps.

    ``init(params) -> AveragedState`` and ``update(params, state) -> AveragedState``
    (see :func:`averaged`).
    """

    init: Callable[[PyTree], AveragedState]
    update: Callable[[PyTree, AveragedState], AveragedState]


def _average_leaves(
    averaged: list,
    current: list,
    num_averaged: Array,
    avg_fn: AvgFn | None,
    multi_avg_fn: MultiAvgFn | None,
) -> list:
    """The averaged leaves after one more model, by torch's dispatch (before the
    cast back to each leaf's dtype)."""
    if multi_avg_fn is None:
        per_leaf = get_swa_avg_fn() if avg_fn is None else avg_fn
        return [per_leaf(a, c, num_averaged) for a, c in zip(averaged, current)]
    # torch calls multi_avg_fn once per (device, dtype) group of the averaged leaves,
    # the groups in order of first appearance, each in the leaves' order.
    groups: dict[Any, list[int]] = {}
    for i, leaf in enumerate(averaged):
        groups.setdefault(leaf.dtype, []).append(i)
    new = list(averaged)
    for indices in groups.values():
        results = list(
            multi_avg_fn(
                [averaged[i] for i in indices],
                [current[i] for i in indices],
                num_averaged,
            )
        )
        if len(results) != len(indices):
            raise ValueError(
                f"multi_avg_fn returned {len(results)} arrays for a group of "
                f"{len(indices)} leaves"
            )
        for i, result in zip(indices, results):
            new[i] = result
    return new


def _cast_like(results: Sequence[Any], leaves: Sequence[Array], names: list) -> list:
    """torch's ``copy_`` into the averaged leaf: cast to its dtype (a float into an
    integer leaf truncates), never a change of shape."""
    out = []
    for result, leaf, name in zip(results, leaves, names):
        result = jnp.asarray(result)
        if result.shape != leaf.shape:
            raise ValueError(
                f"the average of {name} has shape {result.shape}, but the leaf "
                f"has shape {leaf.shape}"
            )
        out.append(result.astype(leaf.dtype))
    return out


def averaged(
    avg_fn: AvgFn | None = None, multi_avg_fn: MultiAvgFn | None = None
) -> Averaging:
    r"""A running average of params: torch's ``AveragedModel`` as pure functions.

    With :math:`n` models averaged so far (``state.n_averaged``), ``update`` gives

    .. math::
        \bar W \leftarrow \begin{cases} W & n = 0 \\
        \text{avg}(\bar W, W, n) & n > 0 \end{cases}, \qquad n \leftarrow n + 1

    where avg is ``avg_fn`` leaf by leaf, or ``multi_avg_fn`` on the list of leaves
    of each dtype, or (neither given) the equal-weight average
    :math:`\bar W + (W - \bar W) / (n + 1)` (SWA). Each result is cast to its leaf's
    dtype. ``update`` is traceable: ``jax.jit``, ``lax.scan`` and ``vmap`` apply,
    and the averaged leaves keep the params' shardings.

    Args:
      avg_fn: ``avg_fn(averaged, current, num_averaged) -> array`` for one leaf
        (e.g. :func:`get_ema_avg_fn`), or None.
      multi_avg_fn: ``multi_avg_fn(averaged, current, num_averaged) -> list`` for
        lists of leaves (e.g. :func:`get_ema_multi_avg_fn`), or None.

    Returns:
      An :class:`Averaging`: ``init(params)`` (the averaged params start as a copy
      of ``params``, ``n_averaged`` 0) and ``update(params, state)``.

    Raises:
      AssertionError: both ``avg_fn`` and ``multi_avg_fn`` are given (torch's).

    Example:
      >>> swa = fo.swa_utils.averaged()                    # equal weights (SWA)
      >>> swa_state = swa.init(params)
      >>> swa_state = jax.jit(swa.update)(params, swa_state)   # once per epoch
    """
    if avg_fn is not None and multi_avg_fn is not None:
        raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")

    def init(params: PyTree) -> AveragedState:
        return AveragedState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.copy, params))

    def update(params: PyTree, state: AveragedState) -> AveragedState:
        leaves, treedef = jax.tree.flatten(state.params)
        treedef = cast(Any, treedef)  # the stubs do not know PyTreeDef's methods
        if jax.tree.structure(params) != treedef:
            raise ValueError(
                f"params have the structure {jax.tree.structure(params)}, but the "
                f"averaged params have {treedef}"
            )
        current = treedef.flatten_up_to(params)
        names = leaf_names(state.params, "params")
        for name, leaf, new in zip(names, leaves, current):
            if jnp.shape(new) != leaf.shape:
                raise ValueError(
                    f"{name} has shape {jnp.shape(new)}, but the averaged leaf has "
                    f"shape {leaf.shape}"
                )
        n = state.n_averaged

        def copy() -> list:
            return _cast_like(current, leaves, names)

        def average() -> list:
            results = _average_leaves(leaves, current, n, avg_fn, multi_avg_fn)
            return _cast_like(results, leaves, names)

        new_leaves = jax.lax.cond(n == 0, copy, average)
        return AveragedState(n + 1, treedef.unflatten(new_leaves))

    return Averaging(init, update)

"""Params in the order torch numbers them, and the names torch gives them.

torch numbers a model's params in ``model.parameters()`` order and names them as
``model.named_parameters()`` does: dicts in insertion order. JAX flattens dicts in
sorted key order. The facade (:mod:`functorch_optim.optim`) and the functional state
interchange (:mod:`functorch_optim.interop`) both walk params here.
"""

from __future__ import annotations

import copy
from typing import Any

import jax

from .core import is_bcoo


def key_name(key: Any) -> str:
    """One step of a key path as torch names it (``fc1``, ``0``, ``weight``)."""
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_name(path: tuple) -> str:
    """A leaf's torch name: its key path joined by ``.`` (``fc.weight``)."""
    return ".".join(map(key_name, path))


def _children(node: Any) -> list:
    """One level of a pytree: ``[((key entry,), child), ...]`` in JAX's order;
    ``[((), node)]`` for a leaf, ``[]`` for ``None`` or an empty container."""
    return jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[
        0
    ]


def given_order(tree: Any) -> tuple[list[tuple], Any]:
    """The key paths of ``tree``'s leaves (a sparse BCOO array is one leaf) in the
    order given: dicts in insertion order, other nodes in JAX's order.

    Returns the paths and how to put the dicts of a JAX-unflattened copy back in
    insertion order (for :func:`rebuilt`; None where JAX's order is already theirs).
    """
    paths: list[tuple] = []
    return paths, _walk(tree, (), paths)


def _walk(node: Any, path: tuple, paths: list) -> Any:
    items = _children(node)
    if is_bcoo(node) or (len(items) == 1 and items[0][0] == ()):
        paths.append(path)
        return None
    is_dict = isinstance(node, dict)
    if is_dict:
        position = {key: i for i, key in enumerate(node)}
        ordered = sorted(items, key=lambda item: position[item[0][0].key])
    else:
        ordered = items
    subs = {}
    for i, ((key,), child) in enumerate(ordered):
        sub = _walk(child, (*path, key), paths)
        if sub is not None:
            subs[key.key if is_dict else i] = sub
    reordered = is_dict and ordered != items
    if not subs and not reordered:
        return None
    return is_dict, [key.key for (key,), _ in ordered] if is_dict else None, subs


def rebuilt(node: Any, spec: Any) -> Any:
    """``node`` (unflattened by JAX: every dict in sorted key order) with its dicts
    in the insertion order ``spec`` (from :func:`given_order`) records."""
    if spec is None:
        return node
    is_dict, keys, subs = spec
    if is_dict:
        out = copy.copy(node)  # keeps a defaultdict's factory
        out.clear()
        out.update((key, rebuilt(node[key], subs.get(key))) for key in keys)
        return out
    children, treedef = jax.tree.flatten(node, is_leaf=lambda x: x is not node)
    return jax.tree.unflatten(
        treedef, [rebuilt(child, subs.get(i)) for i, child in enumerate(children)]
    )

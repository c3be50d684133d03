"""Param groups carved from one params tree, by name or by predicate.

torch recipes build their groups from one model: nanoGPT puts every param with
``p.dim() >= 2`` in a decayed group and the rest in an undecayed one; Hugging Face
exempts the names in ``no_decay = ["bias", "LayerNorm.weight"]``; layer-wise lr
decay gives each layer its own ``lr_scale``. Here a group is a dict whose
``"params"`` is a *selector* over the whole tree instead of a list of tensors:

* a predicate ``(name, leaf) -> bool``, ``name`` the leaf's torch name (its key
  path joined by ``.``, as ``model.named_parameters()`` names it);
* a list, tuple or set of names.

Each leaf belongs to the first group whose selector takes it, so a last group
``{"params": lambda name, leaf: True}`` collects the rest; a leaf that no group
takes is an error naming it (nothing given is silently left out), and so is a
selector that names a param the tree does not have.
The facade (:class:`~functorch_optim.Optimizer` given :func:`carve_groups`'s
result) and the functional :func:`~functorch_optim.with_param_groups` both read
groups here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from .names import given_order, path_name

Selector = Callable[[str, Any], bool] | Sequence[str] | set[str] | frozenset[str]


def leaf_names(params: Any) -> list[str]:
    """The torch names of ``params``' leaves, in ``jax.tree`` order."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [path_name(path) for path, _ in paths]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"params have repeated leaf names: {repeated}")
    return names


def _takes(selector: Any, g: int) -> Callable[[str, Any], bool]:
    if callable(selector):
        return lambda name, leaf: bool(selector(name, leaf))
    if isinstance(selector, (str, bytes)) or not all(
        isinstance(n, str) for n in selector
    ):
        raise TypeError(
            f"param group {g}'s 'params' must be a predicate (name, leaf) -> bool "
            f"or a list of param names, got {selector!r}"
        )
    wanted = set(selector)
    return lambda name, leaf: name in wanted


def checked_group(group: Any, g: int) -> Mapping[str, Any]:
    """``group`` (param group ``g``), which must be a dict with a ``"params"``
    selector (a TypeError naming it otherwise)."""
    if not isinstance(group, Mapping) or "params" not in group:
        raise TypeError(
            f"param group {g} must be a dict with a 'params' selector, got {group!r}"
        )
    return group


def assign_groups(params: Any, groups: Sequence[Mapping[str, Any]]) -> list[int]:
    """For each leaf of ``params`` (in ``jax.tree`` order), the index of the first
    group whose ``"params"`` selector takes it.

    Raises:
      TypeError: a group is not a dict with a ``"params"`` selector.
      ValueError: a leaf no group takes, or a selector naming a param ``params``
        does not have; each named. A group may take none (torch keeps empty
        groups), as a recipe's no-decay group of a model without biases.
    """
    names = leaf_names(params)
    leaves = jax.tree.leaves(params)
    takers = []
    for g, group in enumerate(groups):
        selector = checked_group(group, g)["params"]
        if not callable(selector):
            unknown = sorted(set(selector) - set(names))
            if unknown:
                raise ValueError(
                    f"param group {g} names params that are not in the tree: {unknown}"
                )
        takers.append(_takes(selector, g))
    assignment = []
    for name, leaf in zip(names, leaves, strict=True):
        taker = next((i for i, takes in enumerate(takers) if takes(name, leaf)), None)
        if taker is None:
            untaken = [
                n
                for n, x in zip(names, leaves, strict=True)
                if not any(takes(n, x) for takes in takers)
            ]
            raise ValueError(
                f"no param group takes the params {untaken}: add them to a group "
                "(a last group {'params': lambda name, leaf: True} takes the rest)"
            )
        assignment.append(taker)
    return assignment


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compared by identity
class CarvedGroups:
    """Param groups carved from one params tree, as :func:`carve_groups` makes
    them: what a facade's constructor takes as ``params`` to keep the tree whole
    (``opt.params`` is that tree, ``opt.step(grads)`` takes grads shaped like it).

    Attributes:
      params: the params tree, as given.
      groups: torch's param groups: each group's options and, as its
        ``"params"``, the ``(name, array)`` pairs it takes, in the tree's given
        order (dicts in insertion order, torch's ``named_parameters()`` order).
    """

    params: Any
    groups: tuple[dict[str, Any], ...]


def carve_groups(params: Any, groups: Sequence[Mapping[str, Any]]) -> CarvedGroups:
    """Param groups carved from the whole params tree by predicate or by names,
    for a facade optimizer that keeps the tree whole.

    Each group dict holds a selector as its ``"params"`` (see the module's
    docstring: a predicate ``(name, leaf) -> bool`` or a list of names; the first
    group that takes a leaf gets it) and any options: torch's (``lr``,
    ``weight_decay``, ``betas``, ...) and keys of its own, such as an
    ``lr_scale`` a scheduler reads, which the group dict keeps as torch's does.
    The optimizer numbers the params group by group, each group's in the tree's
    given order, as torch numbers groups built from ``model.named_parameters()``.

    Args:
      params: the whole params tree (a dict of a model's params, nested or flat
        with torch's names).
      groups: the group dicts, in the order of ``param_groups``.

    Returns:
      A :class:`CarvedGroups`, which ``fo.AdamW(...)`` and the other facade
      classes take as their ``params``.

    Raises:
      ValueError, TypeError: as :func:`assign_groups` (a leaf no group takes, a
        name not in the tree, a selector that is neither).

    Example:
      >>> groups = fo.carve_groups(params, [
      ...     {"params": lambda name, p: p.ndim >= 2, "weight_decay": 0.1},
      ...     {"params": lambda name, p: True, "weight_decay": 0.0},
      ... ])
      >>> opt = fo.AdamW(groups, lr=6e-4, betas=(0.9, 0.95))
      >>> opt.step(grads)               # grads shaped like the whole tree
      >>> sorted(opt.params) == sorted(params)
      True
    """
    group_of = assign_groups(params, groups)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    position = {path: i for i, (path, _) in enumerate(flat)}
    members: list[list] = [[] for _ in groups]
    for path in given_order(params)[0]:
        i = position[path]
        members[group_of[i]].append((path_name(path), flat[i][1]))
    return CarvedGroups(
        params,
        tuple(
            {**group, "params": taken}
            for group, taken in zip(groups, members, strict=True)
        ),
    )

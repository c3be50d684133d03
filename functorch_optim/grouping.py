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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from .names import path_name

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
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError(
                f"param group {g} must be a dict with a 'params' selector, got "
                f"{group!r}"
            )
        selector = group["params"]
        if not callable(selector):
            unknown = sorted(set(selector) - set(names))
            if unknown:
                raise ValueError(
                    f"param group {g} names params that are not in the tree: "
                    f"{unknown}"
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

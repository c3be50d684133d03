"""One param group of a facade optimizer: how its params were given, and per leaf
its state (per leaf, or packed with other small leaves) and stored gradient.

Steps keep the state of many small leaves of an elementwise algorithm packed in flat
buffers (:mod:`functorch_optim.packing`); ``state`` and ``state_dict`` read it per
leaf through :meth:`Group.snapshot`, leaving the packs in place.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .. import packing
from ..core import is_bcoo
from ..names import given_order, path_name, rebuilt
from ..rule import Algorithm, Options
from ..runner import init_leaf
from .compiles import committed
from .inputs import is_named


@dataclasses.dataclass(frozen=True)
class Structure:
    """How one group's params were given: their tree, order and names.

    The optimizer's order of the params (their ids in ``state_dict``) is torch's
    ``model.parameters()`` order: dicts in insertion order, other nodes in JAX's.
    JAX flattens dicts in sorted key order, so ``order`` maps between the two.

    Attributes:
      treedef: JAX's treedef of the params.
      order: each param's position in JAX's leaf order, in the optimizer's order;
        None when the two agree.
      paths: each param's key path, in the optimizer's order (for messages).
      names: torch's ``param_names``: the names of ``(name, array)`` pairs, or the
        key paths joined by ``.`` (``fc.weight``, a list index ``0``) when the tree
        has dict keys or attributes; None for a list or a single array, as torch
        has no names for ``model.parameters()``.
      pairs: given as ``(name, array)`` pairs (``params`` returns pairs).
      dicts: how to put unflattened dicts back in insertion order
        (:func:`functorch_optim.names.given_order`).
    """

    treedef: Any
    order: tuple[int, ...] | None
    paths: tuple[tuple, ...]
    names: list[str] | None
    pairs: bool
    dicts: Any

    @classmethod
    def of(cls, tree: Any, pair_names: list[str] | None) -> tuple[Structure, list]:
        """The structure of ``tree`` and its leaves in the optimizer's order."""
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_bcoo)
        paths, dicts = given_order(tree)
        position = {path: i for i, (path, _) in enumerate(flat)}
        order = tuple(position[path] for path in paths)
        leaves = [flat[i][1] for i in order]
        names = pair_names
        if names is None and any(
            isinstance(key, (jax.tree_util.DictKey, jax.tree_util.GetAttrKey))
            for path in paths
            for key in path
        ):
            names = [path_name(path) for path in paths]
        identity = order == tuple(range(len(order)))
        structure = cls(
            treedef,
            None if identity else order,
            tuple(paths),
            names,
            pair_names is not None,
            dicts,
        )
        return structure, leaves

    def flatten(self, tree: Any) -> list:
        """The leaves of ``tree`` (the params' structure, down to the params'
        leaves) in the optimizer's order; ValueError if the structure differs."""
        leaves = self.treedef.flatten_up_to(tree)
        return leaves if self.order is None else [leaves[i] for i in self.order]

    def unflatten(self, leaves: list) -> Any:
        """The params' tree (or pairs) holding ``leaves`` (in the optimizer's order),
        its dicts in the order they were given."""
        if self.order is not None:
            by_position = [None] * len(leaves)
            for leaf, i in zip(leaves, self.order, strict=True):
                by_position[i] = leaf
            leaves = by_position
        tree = rebuilt(jax.tree.unflatten(self.treedef, leaves), self.dicts)
        if self.pairs and self.names is not None:
            return list(zip(self.names, tree, strict=True))
        return tree

    def describe(self, i: int) -> str:
        """Param ``i``'s place, as indexing reads it (``['fc']['w']``; a pair's
        ``['name']``)."""
        if self.pairs and self.names is not None:
            return f"[{self.names[i]!r}]"
        return jax.tree_util.keystr(self.paths[i])


@dataclasses.dataclass(frozen=True)
class CarvedTree:
    """Where the params of groups carved from one tree
    (:func:`functorch_optim.carve_groups`) sit in that tree, which the optimizer's
    params, grads and closures then are.

    Attributes:
      structure: the tree's.
      places: each of the tree's params, in the tree's given order, as
        ``(group, position in the group)``.
    """

    structure: Structure
    places: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, tree: Any, groups: Sequence[Sequence[str]]) -> CarvedTree:
        """The tree's layout, given each group's param names (in the tree's
        given order, as :func:`functorch_optim.carve_groups` lists them)."""
        structure, _ = Structure.of(tree, None)
        place = {
            name: (g, i)
            for g, names in enumerate(groups)
            for i, name in enumerate(names)
        }
        return cls(structure, tuple(place[path_name(p)] for p in structure.paths))

    def join(self, per_group: list[list]) -> Any:
        """The tree holding each group's leaves (in the optimizer's order)."""
        return self.structure.unflatten([per_group[g][i] for g, i in self.places])

    def split(self, tree: Any, what: str, sizes: Sequence[int]) -> list[list]:
        """Each group's leaves (``sizes`` of them) of ``tree``, shaped like the
        params tree; ValueError where the structure differs. ``what`` names
        ``tree`` in the message."""
        try:
            leaves = self.structure.flatten(tree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{what} must have the structure of the params tree "
                f"{self.structure.treedef}: {e}"
            ) from e
        per_group: list[list] = [[None] * n for n in sizes]
        for (g, i), leaf in zip(self.places, leaves, strict=True):
            per_group[g][i] = leaf
        return per_group

    def describe(self, g: int, i: int) -> str:
        """Param ``i`` of group ``g``'s place in the tree (``['fc']['w']``)."""
        return jax.tree_util.keystr(self.structure.paths[self.places.index((g, i))])

    def __hash__(self) -> int:
        # the structure's list of names makes it unhashable; equal structures have
        # equal treedefs
        return hash((self.structure.treedef, self.places))


def new_state(algorithm: Algorithm, param: jax.Array, options: Options) -> dict:
    """A leaf's state as the algorithm initializes it, each buffer its own,
    committed to the param's devices (:func:`.compiles.committed`)."""
    if algorithm.elementwise and len(param.devices()) == 1:
        # filled on the host: a new shape compiles nothing
        values = _fill_values(algorithm, param.dtype, options)
        return packing.filled_state(values, param.shape, param.sharding)
    state = init_leaf(algorithm, param, options)
    # Every state buffer is donated: none may alias the param or another entry.
    seen = {id(param)}
    for k, v in state.items():
        if v is not None:
            if id(v) in seen:
                state[k] = jnp.array(v, copy=True)
            seen.add(id(state[k]))
    return dict(zip(state, committed(list(state.values())), strict=True))


def _fill_values(algorithm: Algorithm, dtype: Any, options: Options) -> dict:
    """:func:`~functorch_optim.packing.fill_values`, once per algorithm, dtype and
    options (running ``init`` took 1 ms a leaf: 2 s for 2,000 leaves)."""
    try:
        return _cached_fill_values(algorithm, dtype, options_key(options))
    except TypeError:  # an unhashable option (an array)
        return packing.fill_values(
            functools.partial(init_leaf, algorithm, options=options), dtype
        )


def options_key(options: Options) -> tuple:
    """``options`` as a cache key: with each value's type, as ``1``, ``1.0`` and
    ``True`` are equal keys."""
    return tuple((k, type(v), v) for k, v in options.items())


@functools.lru_cache(maxsize=256)
def _cached_fill_values(algorithm: Algorithm, dtype: Any, options: tuple) -> dict:
    init = functools.partial(
        init_leaf, algorithm, options=Options({k: v for k, _, v in options})
    )
    return packing.fill_values(init, dtype)


def committed_state(state: dict | None) -> dict | None:
    """A leaf's state with its arrays committed (:func:`.compiles.committed`)."""
    if state is None:
        return None
    return dict(zip(state, committed(list(state.values())), strict=True))


def _copied(tree: Any) -> Any:
    """``tree`` with its arrays copied, on their devices (a transfer, not a
    compiled copy: ``jnp.array(x, copy=True)`` compiled once per shape)."""
    return jax.tree.map(
        lambda x: (
            jax.device_put(x, x.sharding, may_alias=False)
            if isinstance(x, jax.Array)
            else x
        ),
        tree,
    )


def _refcount_when_only_listed() -> int:
    """What ``sys.getrefcount(items[i])`` reports for an object that only the list
    ``items`` holds: measured rather than assumed, as it depends on the
    interpreter."""
    items = [object()]
    return sys.getrefcount(items[0])


_ONLY_LISTED = _refcount_when_only_listed()


class Group:
    """One param group and what the optimizer keeps for it.

    Attributes:
      param_group: the group's dict in ``param_groups`` (its ``params`` and
        options).
      structure: how its params were given.
      states: each leaf's state: None until torch would create it, a dict, or the
        :class:`~functorch_optim.packing.Pack` holding it.
      packs: the group's packs.
      grads: each leaf's stored gradient (None: no gradient).
    """

    def __init__(
        self, algorithm: Algorithm, param_group: dict, structure: Structure
    ) -> None:
        self.algorithm = algorithm
        self.param_group = param_group
        self.structure = structure
        n = len(param_group["params"])
        self.states: list[Any] = [None] * n
        self.packs: list[packing.Pack] = []
        self.grads: list[Any] = [None] * n
        # leaves looked at for packing and left alone, until the packs change
        self._unpackable: set[int] = set()
        # the last step's arrangement: (static options, stepped leaves, those alone)
        self._arranged: tuple | None = None
        # the static options the states were last completed for
        self._static_seen: Any = None

    @property
    def params(self) -> list:
        """The group's param leaves, in the optimizer's order."""
        return self.param_group["params"]

    def params_to_donate(self, indices: list) -> list:
        """The params at ``indices``, for a step that donates (consumes) them.

        A leaf that only this group references is passed as it is; a leaf that
        something else references (an array the user gave or read from
        ``opt.params``, a NumPy view of it) is passed as a copy, so that it stays
        valid. The check is numpy's ``ndarray.resize`` one: the leaf's reference
        count. Donating saves the step a fresh output buffer per param, which on
        the CPU costs as much as the step itself for large leaves (new pages).
        """
        leaves = self.params
        held = [i for i in indices if sys.getrefcount(leaves[i]) > _ONLY_LISTED]
        if not held:  # the usual step: nothing to copy
            return [leaves[i] for i in indices]
        copies = jax.device_put(
            [leaves[i] for i in held],
            [leaves[i].sharding for i in held],
            may_alias=False,
        )
        copy_of = dict(zip(held, copies, strict=True))
        return [copy_of.get(i, leaves[i]) for i in indices]

    def options(self, names) -> Options:
        """The group's options named ``names`` (the optimizer's defaults)."""
        return Options({name: self.param_group[name] for name in names})

    def load(self, param_group: dict, states: list) -> None:
        """Take a loaded group dict and per-leaf states, unpacked."""
        self.param_group = param_group
        self.states = [committed_state(state) for state in states]
        self.packs = []
        self._unpackable = set()
        self._arranged = None
        self._static_seen = None

    def snapshot(self) -> list[Any]:
        """Each leaf's state to read, copied (the next step donates the
        optimizer's own buffers): packed ones are sliced out of their packs,
        which stay packed for the next step."""
        states = [
            None if isinstance(state, packing.Pack) else _copied(state)
            for state in self.states
        ]
        for pack in self.packs:
            for i, state in zip(pack.indices, packing.unpack(pack), strict=True):
                states[i] = state
        return states

    def unpack(self, packs: list | None = None) -> None:
        """Per-leaf states again for ``packs`` (default: all)."""
        packs = list(self.packs) if packs is None else packs
        for pack in packs:
            for i, state in zip(pack.indices, packing.unpack(pack), strict=True):
                self.states[i] = state
            self.packs.remove(pack)
        if packs:
            self._unpackable.clear()
            self._arranged = None

    def arrange(self, stepped: list, options: Options, static) -> list:
        """Prepare the states for a step of the ``stepped`` leaves; returns the
        leaves stepped alone (the others are in :attr:`packs`)."""
        grads, arranged = self.grads, self._arranged
        if (
            arranged is not None
            and arranged[0] == static
            and arranged[1] == tuple(stepped)
            and all(isinstance(grads[i], jax.Array) for i in stepped)
        ):
            return arranged[2]  # as the last step: nothing to create or repack
        alone = self._arranged_anew(stepped, options, static)
        self._arranged = (static, tuple(stepped), alone)
        return alone

    def _arranged_anew(self, stepped: list, options: Options, static) -> list:
        if self._static_seen != static:
            self.unpack()  # entries may be added: complete them per leaf
        grads = self.grads
        stepped_set = set(stepped)
        self.unpack(
            [
                pack
                for pack in self.packs
                if not stepped_set.issuperset(pack.indices)
                or not all(isinstance(grads[i], jax.Array) for i in pack.indices)
            ]
        )
        if self.algorithm.elementwise:
            # new states: created packed; then existing per-leaf ones
            self._pack_leaves(stepped, options, fresh=True)
            self._prepare_states(self.alone(stepped), options, static)
            self._pack_leaves(stepped, options, fresh=False)
        else:
            self._prepare_states(stepped, options, static)
        return self.alone(stepped)

    def alone(self, indices: list) -> list:
        """Those of ``indices`` whose leaves are not packed."""
        return [i for i in indices if not isinstance(self.states[i], packing.Pack)]

    def _pack_leaves(self, stepped: list, options: Options, fresh: bool) -> None:
        """Pack the stepped leaves that are alone and have (or, with ``fresh``,
        have not yet) a state, where :func:`packing.plan` finds packs."""
        leaves, grads = self.params, self.grads
        states, unpackable = self.states, self._unpackable
        candidates = [
            i
            for i in self.alone(stepped)
            if (states[i] is None) == fresh and i not in unpackable
        ]
        if len(candidates) < packing.MIN_PACKED_LEAVES:
            return
        init = functools.partial(init_leaf, self.algorithm, options=options)
        if fresh:
            known = packing.state_templates(init, [leaves[i] for i in candidates])
        else:
            known = [states[i] for i in candidates]
        for positions in packing.plan(
            [leaves[i] for i in candidates], [grads[i] for i in candidates], known
        ):
            indices = [candidates[k] for k in positions]
            # the packs committed, as the step's outputs that replace them
            params = committed([leaves[i] for i in indices])
            pack = (
                packing.pack_fresh(indices, params, init)
                if fresh
                else packing.pack(indices, params, [states[i] for i in indices])
            )
            self.packs.append(pack)
            for i in indices:
                states[i] = pack
        if not fresh:
            unpackable.update(self.alone(candidates))

    def _prepare_states(self, stepped: list, options: Options, static) -> None:
        """Create state torch would create now; complete states whose options changed.

        When a group's static options change (momentum from 0 to nonzero, amsgrad
        switched on), entries the rule now needs are created as at initialization.
        """
        leaves, states = self.params, self.states
        changed = self._static_seen != static
        for i in stepped:
            if states[i] is None:
                states[i] = new_state(self.algorithm, leaves[i], options)
            elif changed and any(v is None for v in states[i].values()):
                fresh = new_state(self.algorithm, leaves[i], options)
                states[i] = {
                    k: fresh.get(k) if v is None else v for k, v in states[i].items()
                }
        self._static_seen = static

    def took(self, alone: list, params: list, states: list, packs: list) -> None:
        """Take a compiled step's results: the new params and states of the leaves
        stepped ``alone``, and per pack its (flat params, params, state)."""
        leaves = self.params
        for k, i in enumerate(alone):
            leaves[i] = params[k]
            self.states[i] = states[k]
        for pack, (flat_params, pack_params, pack_state) in zip(
            self.packs, packs, strict=True
        ):
            pack.stepped(flat_params, pack_params, pack_state)
            for i, param in zip(pack.indices, pack_params, strict=True):
                leaves[i] = param

    def leaves_of(self, tree: Any, what: str, g: int) -> list:
        """The leaves of ``tree``, shaped like the group's params, in the
        optimizer's order (None for each, where ``tree`` is None); ValueError
        where the structure (or a name) differs. ``g`` is the group's index (for
        messages)."""
        if tree is None:
            return [None] * len(self.params)
        structure = self.structure
        if (
            structure.pairs
            and isinstance(tree, (list, tuple))
            and all(is_named(item) for item in tree)
        ):
            if [name for name, _ in tree] != structure.names:
                raise ValueError(
                    f"{what} of group {g} are named {[n for n, _ in tree]}, the "
                    f"params {structure.names}"
                )
            tree = [leaf for _, leaf in tree]
        try:
            return structure.flatten(tree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{what} of group {g} must have the structure of its params "
                f"{structure.treedef}: {e}"
            ) from e

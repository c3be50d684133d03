"""Packed state: many small leaves stepped as one flat buffer (by the facade on its
own, by the functional transforms through :func:`packed`).

XLA on CPU emits at least one kernel per output array and pays microseconds to run
each, so a tree of thousands of small leaves is all overhead: on 2 cores, 2000 leaves
of 1024 floats hold 8 MB that a kernel moves in well under a millisecond, yet an
elementwise op over them as 2000 arrays takes 8 ms, and Adam's per-leaf kernels
(three array passes and the step-count scalars) 30 ms.

A :class:`Pack` keeps the state of such leaves flat: every per-element entry
(``exp_avg``, ...) of the leaves, raveled and concatenated, is one buffer, and the
scalar entries (``step``, ASGD's ``eta`` and ``mu``, NAdam's ``mu_product``), equal
for all of them, are kept once (by :func:`packed`, with the one ``count``, outside
the packs). A step (:func:`step_pack`) concatenates the leaves'
grads, runs the algorithm's per-leaf rule once over the flat arrays and slices the
new params back out (:func:`split`). For an ``Algorithm.elementwise`` rule every
element then gets exactly the arithmetic of its own leaf's step, so packing
changes no result.

The params stay separate arrays (they are the user's, read every step), and XLA
writes each as a kernel of its own; that is the floor left (about 3 us per leaf on
2 cores). The facade also keeps each pack's params flat between steps
(:meth:`Pack.flat_params`): one more copy of the packed params held, one
2000-input concatenation per step saved. The slices start at offsets passed as
runtime scalars, so the kernels of same-shaped leaves are compiled once: at
constant offsets each slice is a kernel of its own, and 2000 of them take 17 s to
compile.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .checks import (
    check_param_dtypes,
    flatten_params,
    holds_state,
    is_none,
    leaf_names,
)
from .core import GradientTransformation, is_concrete
from .functional import AlgorithmUpdate, params_or_zeros
from .rule import Options
from .runner import (
    array_names,
    checked_leaves,
    evaluate_schedules,
    init_leaf,
    init_scalars,
    run_rule,
    step_scalars,
    taken_grad,
)

# Leaves with more elements than this are stepped alone: their kernels' launch cost
# is small next to their bytes, and packing copies their params and grads once more.
MAX_PACKED_SIZE = 1 << 16

# A pack needs this many leaves: below it, the concatenations cost as much as the
# per-leaf kernels they save.
MIN_PACKED_LEAVES = 8

# Offsets are int32 scalars: a pack holds at most this many elements.
MAX_PACK_ELEMENTS = 1 << 30

StepLeaf = Callable[[Any, Any, dict, Options], tuple[Any, dict]]


@dataclasses.dataclass(eq=False)
class Pack:
    """The state of some leaves of one param group, packed.

    Attributes:
      indices: the leaves' positions in their group, in packing order.
      shapes: their shapes (static: part of the compiled step's key).
      state: per-element entries as flat buffers, scalar entries once, None for
        entries no leaf has.
      offsets: each leaf's start in the flat buffers, an int32 device scalar.
      params: the leaves' params as one flat buffer, as of ``leaves`` (see
        :meth:`flat_params`); None until a step asks for it.
      leaves: the param arrays ``params`` holds.
    """

    indices: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    state: dict[str, Any]
    offsets: list[jax.Array]
    params: jax.Array | None = None
    leaves: tuple[jax.Array, ...] = ()

    def flat_params(self, leaves: Sequence[jax.Array]) -> jax.Array:
        """``leaves`` (the pack's params, in ``indices`` order) as one flat buffer.

        A step returns the new params both flat and split, and the facade keeps
        the flat buffer here: while the group's leaves are still the arrays that
        step returned (checked by identity), the next step starts from it instead
        of concatenating them again, which on 2 cores saves a third of a
        2000-leaf step. A leaf replaced by the user gets a new concatenation.
        """
        if (
            self.params is None
            or len(leaves) != len(self.leaves)
            or any(a is not b for a, b in zip(leaves, self.leaves, strict=True))
        ):
            host = jax.device_get(list(leaves))
            self.params = _on_device(_flat_host(host), leaves[0].sharding, True)
            self.leaves = tuple(leaves)
        return self.params

    def stepped(self, flat_params: jax.Array, leaves: list, state: dict) -> None:
        """Take a step's results: the new params, flat and split, and state."""
        self.params, self.leaves, self.state = flat_params, tuple(leaves), state


def _entry_kind(param: Any, value: Any) -> str | None:
    """'element' / 'scalar' / 'none' for a state entry; None: not packable."""
    if value is None:
        return "none"
    if not isinstance(value, (jax.Array, jax.ShapeDtypeStruct)):
        return None
    if value.shape == param.shape:
        return "element"
    if value.shape == ():
        return "scalar"
    return None


def _layout(param: Any, grad: Any, state: Any) -> tuple | None:
    """What leaves must share to be packed together (besides their scalars' values);
    None for a leaf that is stepped alone."""
    if not (
        isinstance(param, jax.Array)
        and isinstance(grad, jax.Array)
        and isinstance(state, dict)
        and is_concrete(param)
        and 0 < param.ndim
        and param.size <= MAX_PACKED_SIZE
        and len(param.devices()) == 1
    ):
        return None
    entries = []
    for name, value in sorted(state.items()):
        kind = _entry_kind(param, value)
        if kind is None:
            return None
        entries.append((name, kind, None if value is None else value.dtype))
    return param.dtype, grad.dtype, param.sharding, tuple(entries)


def plan(
    params: Sequence[Any], grads: Sequence[Any], states: Sequence[Any]
) -> list[list[int]]:
    """Positions (into the given lists) of leaves to pack together.

    Leaves are packed when their layouts match and their scalar state entries hold
    equal values (read from the device: one transfer for all leaves). A state may
    be a template (``jax.ShapeDtypeStruct`` entries, see :func:`pack_fresh`):
    states not created yet start equal.
    """
    layouts = [_layout(p, g, s) for p, g, s in zip(params, grads, states, strict=True)]
    candidates = [i for i, layout in enumerate(layouts) if layout is not None]
    scalars = jax.device_get(
        [
            [
                v
                for _, v in sorted(states[i].items())
                if isinstance(v, jax.Array) and v.shape == ()
            ]
            for i in candidates
        ]
    )
    by_key: dict[Hashable, list[int]] = {}
    for i, values in zip(candidates, scalars, strict=True):
        key = (layouts[i], tuple(np.asarray(v).item() for v in values))
        by_key.setdefault(key, []).append(i)
    packs = []
    for positions in by_key.values():
        chunk: list[int] = []
        size = 0
        for i in positions:
            if size + params[i].size > MAX_PACK_ELEMENTS:
                packs.append(chunk)
                chunk, size = [], 0
            chunk.append(i)
            size += params[i].size
        packs.append(chunk)
    return [p for p in packs if len(p) >= MIN_PACKED_LEAVES]


def state_templates(
    init: Callable[[Any], dict], params: Sequence[Any]
) -> list[dict | None]:
    """The state ``init(param)`` would create for each leaf, as ``ShapeDtypeStruct``
    entries for :func:`plan` (None for a leaf that is not a concrete array).

    Traced once per dtype: an elementwise algorithm's per-element entries take the
    leaf's shape, its scalar entries stay scalars.
    """
    per_dtype: dict[Any, dict] = {}
    templates: list[dict | None] = []
    for param in params:
        if not (isinstance(param, jax.Array) and is_concrete(param)):
            templates.append(None)
            continue
        if param.dtype not in per_dtype:
            one = jax.ShapeDtypeStruct((1,), param.dtype)
            per_dtype[param.dtype] = jax.eval_shape(init, one)
        templates.append(
            jax.tree.map(
                lambda t, shape=param.shape: jax.ShapeDtypeStruct(
                    shape if t.shape else (), t.dtype
                ),
                per_dtype[param.dtype],
            )
        )
    return templates


def _flat(arrays: Sequence[Any]) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a) for a in arrays])


# Packing and unpacking run on the host: the arrays are read into NumPy (a view of
# each buffer on the CPU, one transfer otherwise), cut or joined there, and put
# back on the device, committed to their params' device (see
# :func:`functorch_optim.optim.compiles.committed`). A compiled program would have
# one input or output per leaf and compile per tree: unpacking 5,000 leaves so
# compiled in 85 s and 3.4 GB, packing 500 loaded states in 6.8 s.


def _flat_host(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


def _on_device(host: Any, sharding: Any, fresh: bool = False) -> jax.Array:
    """``host`` (a NumPy array or scalar) on the device, committed to ``sharding``.

    Copied on the host first unless ``fresh`` (made here and held by nothing
    else): a transfer may run after it returns, and on the CPU ``host`` may be a
    view of a buffer that the next step donates. On the CPU the host array is
    then the device array's memory (no second copy).
    """
    return jax.device_put(host if fresh else np.array(host), sharding)


def _packed(indices: Sequence[int], params: Sequence[Any], state: dict) -> Pack:
    shapes = tuple(tuple(p.shape) for p in params)
    starts = np.cumsum([0] + [math.prod(s) for s in shapes[:-1]], dtype=np.int32)
    offsets = jax.device_put(list(starts), [_placement(params[0])] * len(starts))
    return Pack(tuple(indices), shapes, state, offsets)


def _placement(param: jax.Array) -> Any:
    """Where a pack's arrays go: committed to ``param``'s device where it is
    committed, else not (as ``jnp.zeros_like`` places). jit compiles a program per
    pattern of committed arguments, so a state placed otherwise than its params
    compiled a user's step twice: once for the first step's mix, once for the
    committed outputs the second step gets."""
    return param.sharding if param.committed else None


def pack(indices: Sequence[int], params: Sequence[Any], states: Sequence[dict]) -> Pack:
    """A :class:`Pack` of leaves (that :func:`plan` put together) and their states."""
    kinds = {name: _entry_kind(params[0], v) for name, v in states[0].items()}
    sharding = params[0].sharding
    element = [name for name, kind in kinds.items() if kind == "element"]
    host = jax.device_get([[s[name] for name in element] for s in states])
    state = {
        name: None
        if kind == "none"
        else _on_device(jax.device_get(states[0][name]), sharding)
        for name, kind in kinds.items()
    }
    for k, name in enumerate(element):
        state[name] = _on_device(_flat_host([h[k] for h in host]), sharding, True)
    return _packed(indices, params, state)


def fill_values(init: Callable[[Any], dict], dtype: Any) -> dict:
    """The state ``init(param)`` makes for a one-element param of ``dtype``, on
    the host: for an ``Algorithm.elementwise`` rule, whose state depends on the
    shape and dtype only, each per-element entry is one value repeated."""
    return jax.device_get(init(jnp.zeros((1,), dtype)))


def filled_state(values: dict, shape: tuple, sharding: Any) -> dict:
    """The state of a param of ``shape`` from its :func:`fill_values`, filled on
    the host and put on ``sharding`` (None: not committed to a device), so a new
    shape compiles nothing (eager ops compile once per shape: a tree of many
    shapes paid one compile for each)."""
    return {
        name: None
        if value is None
        else _on_device(value, sharding)
        if np.ndim(value) == 0
        else _on_device(
            np.full(shape, value.reshape(-1)[0], value.dtype), sharding, True
        )
        for name, value in values.items()
    }


def pack_fresh(
    indices: Sequence[int], params: Sequence[Any], init: Callable[[Any], dict]
) -> Pack:
    """A :class:`Pack` of leaves without state yet: their state as ``init(param)``,
    the per-leaf state constructor, makes it (:func:`filled_state`), flat."""
    param = params[0]
    size = sum(p.size for p in params)
    state = filled_state(fill_values(init, param.dtype), (size,), _placement(param))
    return _packed(indices, params, state)


def split(flat: jax.Array, shapes: Sequence[tuple], offsets: Sequence[Any]) -> list:
    """The leaves of a pack's flat buffer, cut at runtime ``offsets``."""
    return [
        jax.lax.dynamic_slice(
            flat, (start,), (math.prod(shape),), allow_negative_indices=False
        ).reshape(shape)
        for shape, start in zip(shapes, offsets, strict=True)
    ]


def unpack(pack: Pack) -> list[dict]:
    """The per-leaf states of a pack's leaves, in ``pack.indices`` order: copies,
    each entry a buffer of its own."""
    names = list(pack.state)
    host = jax.device_get([pack.state[name] for name in names])
    sharding = next(v for v in pack.state.values() if v is not None).sharding
    starts = np.cumsum([0] + [math.prod(s) for s in pack.shapes])
    pieces: list[Any] = []
    for k, shape in enumerate(pack.shapes):
        for value in host:
            if value is None:
                continue
            # each piece a host copy of its own (see _on_device)
            pieces.append(
                value.copy()
                if value.ndim == 0
                else value[starts[k] : starts[k + 1]].reshape(shape).copy()
            )
    put = iter(jax.device_put(pieces, [sharding] * len(pieces)))
    return [
        {name: None if value is None else next(put) for name, value in zip(names, host)}
        for _ in pack.shapes
    ]


def step_pack(
    step_leaf: StepLeaf,
    flat_param: jax.Array,
    grads: Sequence[Any],
    state: dict,
    options: Options,
) -> tuple[jax.Array, dict]:
    """One step of a pack's leaves (inside a compiled step): their new params, flat,
    and the pack's new state. ``flat_param`` holds the leaves' params raveled and
    concatenated in order, ``grads`` their gradients;
    ``step_leaf(param, grad, state, options)`` is the per-leaf rule, run once over
    the flat arrays. :func:`split` cuts the result back into leaves."""
    return step_leaf(flat_param, _flat(grads), state, options)


# --- the functional transforms, packed --------------------------------------------


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class PackLayout:
    """Which leaves each pack of a :class:`PackedState` holds (static: a pytree
    node without leaves, part of the compiled step's key)."""

    indices: tuple[tuple[int, ...], ...]


class PackedState(NamedTuple):
    """The state of :func:`packed`: one step count, the scalar entries once, and
    the array entries of packed leaves flat, of the others per leaf.

    Attributes:
      count: int32, steps taken (read by ``optax.tree_utils.tree_get``).
      scalars: the algorithm's scalar entries (ASGD's ``eta`` and ``mu``, NAdam's
        ``mu_product``), once.
      packs: each pack's array entries, as flat buffers (None where torch creates
        none).
      offsets: each pack's leaf offsets into its flat buffers (int32 scalars,
        carried as data so that the compiled step slices at runtime offsets).
      leaves: the array entries of each leaf stepped alone, None for packed
        leaves and leaves that are not parameters; in the params' leaf order
        (:func:`~functorch_optim.checks.flatten_params`).
      layout: each pack's leaf positions.
    """

    count: jax.Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    scalars: dict[str, jax.Array]
    packs: list[dict]
    offsets: list[list[jax.Array]]
    leaves: list[dict | None]
    layout: PackLayout


def packed(tx: Any) -> Any:
    """``tx`` (a transform of this library for an elementwise algorithm: ``sgd``,
    ``adam``, ``adamw``, ``adamax``, ``adagrad``, ``adadelta``, ``rmsprop``,
    ``rprop``, ``nadam``, ``radam``, ``asgd``) with its state packed.

    The updates are ``tx``'s, element for element; the state differs in layout: the
    small leaves' state lives in flat buffers (a :class:`PackedState`), so a step
    runs a few kernels over all of them instead of several per leaf, and compiles
    in a fraction of the time. For trees of many small leaves. ``init`` needs
    concrete params (it reads their devices; traced, as under ``jit`` or ``vmap``,
    every leaf stays alone, so for a batch of models call ``init`` under the same
    ``vmap`` as ``update``); every packed leaf needs a gradient at every step
    (a leaf stepped alone may have None, as with ``tx``, and leaves that are not
    arrays keep no state).

    Example::

      >>> tx = fo.packed(fo.adam(1e-3))
      >>> state = tx.init(params)             # params: a tree of many small arrays
      >>> updates, state = tx.update(grads, state, params)
      >>> state.count
      Array(1, dtype=int32)
    """
    update = getattr(tx, "update", None)
    if not isinstance(update, AlgorithmUpdate) or not update.algorithm.elementwise:
        raise TypeError(
            "packed takes a transform of an elementwise algorithm of this library "
            f"(fo.adam(...), fo.sgd(...), ...), got {tx!r}"
        )
    algorithm, options = update.algorithm, update.options
    names = array_names(algorithm)

    def arrays(state: dict) -> dict:
        return {name: state[name] for name in names}

    def init(params):
        check_param_dtypes(params)
        leaves = flatten_params(params)[0]
        init = partial(init_leaf, algorithm, options=options)
        groups = plan(leaves, leaves, state_templates(init, leaves))
        in_pack = {i for group in groups for i in group}
        new_packs = [
            pack_fresh(group, [leaves[i] for i in group], init) for group in groups
        ]
        zero = jnp.zeros((), jnp.int32)
        return PackedState(
            count=zero,
            scalars=init_scalars(algorithm, evaluate_schedules(options, zero)),
            packs=[arrays(p.state) for p in new_packs],
            offsets=[p.offsets for p in new_packs],
            leaves=[
                None if i in in_pack or not holds_state(p) else arrays(init(p))
                for i, p in enumerate(leaves)
            ],
            layout=PackLayout(tuple(p.indices for p in new_packs)),
        )

    def update_packed(grads, state, params=None, **extra_args):
        del extra_args
        params = params_or_zeros(algorithm, options, grads, params)
        leaves, grad_leaves, treedef = checked_leaves(params, grads)
        step_options, scalars, new_scalars = step_scalars(
            algorithm, state.count, state.scalars, options
        )
        updates: list[Any] = [None] * len(leaves)
        new_packs = []
        for indices, pack_state, offsets in zip(
            state.layout.indices, state.packs, state.offsets, strict=True
        ):
            for i in indices:
                grad = grad_leaves[i]
                if grad is None or grad.dtype != leaves[i].dtype:
                    # without params, a None gradient's param is None too
                    dtype = getattr(leaves[i], "dtype", "")
                    raise TypeError(
                        f"{leaf_names(params, 'grads', is_leaf=is_none)[i]} is "
                        f"{'None' if grad is None else grad.dtype}: a "
                        f"packed leaf needs a gradient of its dtype {dtype} "
                        "at every step"
                    )
            flat_param = _flat([leaves[i] for i in indices])
            flat_update, pack_state = run_rule(
                algorithm,
                flat_param,
                _flat([grad_leaves[i] for i in indices]),
                pack_state,
                step_options,
                scalars,
                as_update=True,
            )
            pack_updates = split(
                flat_update, [leaves[i].shape for i in indices], offsets
            )
            for i, update in zip(indices, pack_updates, strict=True):
                updates[i] = update
            new_packs.append(pack_state)
        leaf_states = list(state.leaves)
        for i, leaf_state in enumerate(state.leaves):
            if leaf_state is not None and grad_leaves[i] is not None:
                updates[i], leaf_states[i] = run_rule(
                    algorithm,
                    leaves[i],
                    taken_grad(algorithm, grad_leaves[i], options),
                    leaf_state,
                    step_options,
                    scalars,
                    as_update=True,
                )
        new = PackedState(
            state.count + 1,
            new_scalars,
            new_packs,
            state.offsets,
            leaf_states,
            state.layout,
        )
        return jax.tree.unflatten(treedef, updates), new

    return GradientTransformation(init, update_packed)

"""The facade's one jitted step: every group's step in one XLA program.

What decides the compiled program (and so triggers a compile when it changes): the
tree of arrays passed (which leaves have a gradient, their shapes and dtypes, which
state entries exist) and each group's *static* options: flags, integers, strings,
``None``, and zeros of the options that are 0 by default (weight decay, momentum:
torch branches on ``x != 0`` there). Every other float hyperparameter is passed as a
weakly typed traced scalar (:func:`split_option`), so editing
``param_groups[i]['lr']`` (or betas, momentum, a nonzero weight decay) between steps
reuses the compiled step; :func:`~.compiles.compile_count` shows it. Every array
passed is committed to its device (:func:`~.compiles.committed`), so the second
step finds the first one's program.

:func:`lowered` gives the program a step would run, for its cost and memory analysis
(``fo.Adam(...).lowered_step(grads)``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import packing
from ..core import scalar_dtype
from ..doubled import Float
from ..rule import Algorithm, Options
from ..runner import step_leaf, step_leaves
from ..sharding import constrain, static_sharding
from .compiles import committed
from .group import Group


def cache_size() -> int:
    """How many compiled programs the facade's jitted step keeps."""
    # jit's cache size, which the stubs of its wrapper do not declare
    return _jitted_step._cache_size()  # type: ignore[attr-defined]


class _Traced:
    """Marks an option passed as a traced scalar in a compiled step's static key."""

    def __repr__(self) -> str:
        return "<traced>"


_TRACED = _Traced()


def split_option(value: Any, traced: list, static_zero: bool = False) -> Any:
    """The static part of an option; its traced scalars are appended to ``traced``.

    Python floats (and arrays) travel as traced scalars: a Python float passed to
    jit is weakly typed, so it does not promote float32/bfloat16 params. With x64
    off a Python float travels as a :class:`~functorch_optim.doubled.Float`, two
    such float32 scalars (the float32 nearest it and the rest), so the rules
    compute ``1 - beta``, bias corrections and step sizes from it as torch does
    in Python double, rounded once. With
    ``static_zero`` a float equal to 0 stays static, so the rules' ``nonzero``
    skips the term (and the state) as torch's ``if x != 0`` does. Integers, flags,
    strings and None are static.
    """
    if value is None or isinstance(value, (bool, np.bool_, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if static_zero and value == 0:
            return float(value)
        # with x64 off, as a pair of float32s: the rules' scalar arithmetic is then
        # torch's Python double's, as with a Python float (doubled.Float)
        traced.append(
            Float.split(value) if scalar_dtype() == jnp.float32 else float(value)
        )
        return _TRACED
    if isinstance(value, (tuple, list)):
        return tuple(split_option(v, traced) for v in value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        array = jnp.asarray(value)
        (array,) = committed([array.reshape(()) if array.size == 1 else array])
        traced.append(array)
        return _TRACED
    return value  # schedules and other hashable values: part of the key


def _join_option(static: Any, traced: Iterator) -> Any:
    if static is _TRACED:
        return next(traced)
    if isinstance(static, tuple):
        return tuple(_join_option(v, traced) for v in static)
    return static


def _step_groups(spec, params, grads, states, packs, pack_inputs, traced):
    """All groups' steps in one program.

    ``spec`` = ((algorithm, static options, the shardings of the leaves stepped
    alone, the shapes of each pack's leaves),): every result stays on its
    parameter's shards. Per group, ``packs`` holds the (flat params, state) of each
    :class:`~functorch_optim.packing.Pack`, ``pack_inputs`` its (grads, offsets).
    """
    new_params, new_states, new_packs = [], [], []
    for group_spec, p, g, s, group_packs, inputs, t in zip(
        spec, params, grads, states, packs, pack_inputs, traced, strict=True
    ):
        algorithm, static, shardings, pack_shapes = group_spec
        values = iter(t)
        options = Options({k: _join_option(v, values) for k, v in static})
        group_new_packs = []
        for shapes, (flat_params, pack_state), (pack_grads, offsets) in zip(
            pack_shapes, group_packs, inputs, strict=True
        ):
            flat_params, pack_state = packing.step_pack(
                functools.partial(step_leaf, algorithm),
                flat_params,
                pack_grads,
                pack_state,
                options,
            )
            leaves = packing.split(flat_params, shapes, offsets)
            group_new_packs.append((flat_params, leaves, pack_state))
        new_packs.append(group_new_packs)
        group_params, group_states = step_leaves(algorithm, p, g, s, options)
        group_params = [
            constrain(new, sharding, old.shape)
            for new, old, sharding in zip(group_params, p, shardings, strict=True)
        ]
        group_states = [
            constrain(state, sharding, old.shape)
            for state, old, sharding in zip(group_states, p, shardings, strict=True)
        ]
        new_params.append(group_params)
        new_states.append(group_states)
    return new_params, new_states, new_packs


# Donated: the params (1), of which the step gets copies of those a user holds
# (:meth:`Group.params_to_donate`), the per-leaf states (3) and the packs' flat
# params and states (4), which only the optimizer holds (``state`` and
# ``state_dict`` hand out copies). Never the grads (2): a user may hold them
# (``opt.grads``, the arrays passed to ``step``), and they must stay valid.
_jitted_step = jax.jit(_step_groups, static_argnums=0, donate_argnums=(1, 3, 4))


def _operands(
    algorithm: Algorithm,
    groups: Sequence[Group],
    names: Sequence[str],
    static_zero: frozenset,
    donate: bool = True,
) -> tuple[tuple, tuple, list]:
    """The compiled step's arguments for the groups' stored gradients, their
    states prepared (created, completed, packed) as the step needs them; and per
    group stepped, ``(group, the leaves stepped alone)``. Without ``donate`` (to
    lower, not run) the params are passed as they are, held ones uncopied."""
    spec, params, grads, states, traced, where = [], [], [], [], [], []
    packs, pack_inputs = [], []
    for group in groups:
        stepped = [i for i, grad in enumerate(group.grads) if grad is not None]
        if not stepped:
            continue
        options = group.options(names)
        values: list = []
        static = tuple(
            (name, split_option(value, values, name in static_zero))
            for name, value in options.items()
        )
        alone = group.arrange(stepped, options, static)
        leaves, leaf_grads = group.params, group.grads
        shardings = tuple(static_sharding(leaves[i]) for i in alone)
        spec.append(
            (algorithm, static, shardings, tuple(p.shapes for p in group.packs))
        )
        # The params and grads are the user's, committed or not; the optimizer's
        # own arrays (states, packs, a step's outputs) are committed already.
        params.append(
            committed(
                group.params_to_donate(alone) if donate else [leaves[i] for i in alone]
            )
        )
        grads.append(committed([leaf_grads[i] for i in alone]))
        states.append([group.states[i] for i in alone])
        packs.append(
            [
                (p.flat_params([leaves[i] for i in p.indices]), p.state)
                for p in group.packs
            ]
        )
        pack_inputs.append(
            [
                (committed([leaf_grads[i] for i in p.indices]), p.offsets)
                for p in group.packs
            ]
        )
        traced.append(values)
        where.append((group, alone))
    return tuple(spec), (params, grads, states, packs, pack_inputs, traced), where


def step(
    algorithm: Algorithm,
    groups: Sequence[Group],
    names: Sequence[str],
    static_zero: frozenset,
) -> None:
    """Step the params of ``groups`` that have stored gradients, in one program.

    ``names`` are the options the algorithm reads, ``static_zero`` those whose
    zero is static (see :func:`split_option`).
    """
    spec, args, where = _operands(algorithm, groups, names, static_zero)
    if not spec:
        return
    new_params, new_states, new_packs = _jitted_step(spec, *args)
    for (group, alone), *results in zip(
        where, new_params, new_states, new_packs, strict=True
    ):
        group.took(alone, *results)


def lowered(
    algorithm: Algorithm,
    groups: Sequence[Group],
    names: Sequence[str],
    static_zero: frozenset,
) -> jax.stages.Lowered:
    """The program :func:`step` would run now, lowered (nothing is stepped; the
    states are prepared as the step prepares them); ValueError when no param has
    a gradient."""
    spec, args, _ = _operands(algorithm, groups, names, static_zero, donate=False)
    if not spec:
        raise ValueError("no parameter has a gradient: a step would run nothing")
    return _jitted_step.lower(spec, *args)

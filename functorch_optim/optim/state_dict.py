"""The facade's side of torch's state-dict format (:mod:`functorch_optim.torch_format`
holds the format itself): ``state``, ``state_dict()`` and ``load_state_dict`` over
the optimizer's groups, and one leaf's state both ways.

The optimizer passes what these read of it as arguments: its groups
(:class:`~.group.Group`), its options and validation, and its extension points
:meth:`~functorch_optim.optim.Optimizer.to_torch_state` and
:meth:`~functorch_optim.optim.Optimizer.from_torch_state`, whose defaults
(:func:`torch_leaf_state`, :func:`loaded_leaf_state`) are one leaf's state under
torch's names. Its hooks run around these (:mod:`.hooks`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from .. import interop, torch_format
from ..rule import Algorithm, Options
from ..runner import STEP, init_leaf
from ..sharding import place_like
from .group import Group, new_state, options_key
from .inputs import check_not_traced

# One param's internal state as torch keeps it (:meth:`Optimizer.to_torch_state`).
ToTorch = Callable[[Any], dict]
# The internal state of param ``param`` (id ``pid``) with options ``options`` from
# its saved torch-format state (:meth:`Optimizer.from_torch_state`).
FromTorch = Callable[[Any, jax.Array, Options, Any], Any]


class StateView(dict):
    """``opt.state``: index -> torch's state dict; an array key is found by identity."""

    def __init__(self, items, leaves: list) -> None:
        super().__init__(items)
        self._index = {id(leaf): i for i, leaf in enumerate(leaves)}

    def _key(self, key):
        return key if isinstance(key, int) else self._index.get(id(key), -1)

    def __getitem__(self, key):
        return super().__getitem__(self._key(key))

    def __contains__(self, key):
        return super().__contains__(self._key(key))

    def get(self, key, default=None):
        return super().get(self._key(key), default)


def torch_leaf_state(algorithm: Algorithm, state: dict | None) -> dict:
    """One leaf's state as torch keeps it: its names, 'step' as torch keeps it."""
    if state is None:
        return {}
    return torch_format.torch_entries(algorithm, state.get(STEP), state)


def state(groups: Sequence[Group], to_torch: ToTorch) -> StateView:
    """:attr:`Optimizer.state` of an optimizer with ``groups``: the state of
    :func:`state_dict`, which its params also key."""
    leaves = [p for group in groups for p in group.params]
    return StateView(state_dict(groups, to_torch)["state"], leaves)


def state_dict(groups: Sequence[Group], to_torch: ToTorch) -> dict[str, Any]:
    """:meth:`Optimizer.state_dict` of an optimizer with ``groups`` (its hooks
    run around this): each group's options, its params' states copied (a param
    whose ``to_torch`` state is empty has none)."""
    return torch_format.state_dict(
        (
            {k: v for k, v in group.param_group.items() if k != "params"},
            [to_torch(state) for state in group.snapshot()],
        )
        for group in groups
    )


def load_state_dict(
    groups: Sequence[Group],
    state_dict: Mapping[str, Any],
    *,
    algorithm: Algorithm,
    defaults: Mapping[str, Any],
    validate: Callable[[Mapping[str, Any]], None],
    from_torch: FromTorch,
    kind: str,
) -> None:
    """:meth:`Optimizer.load_state_dict` into ``groups`` (its hooks run around
    this): everything is checked and converted before any group changes.

    Args:
      algorithm: the optimizer's algorithm (torch's defaults judge the options).
      defaults: the optimizer's constructor options, the names every group has.
      validate: the optimizer's checks on a group's options.
      from_torch: :meth:`Optimizer.from_torch_state`.
      kind: the optimizer's class name, for the message of a group missing options.
    """
    saved_groups, saved_state = torch_format.read(state_dict)
    torch_format.check_sizes([len(group.params) for group in groups], saved_groups)
    saved_groups = [
        torch_format.matched_by_name(group.structure.names, g, saved)
        for g, (group, saved) in enumerate(zip(groups, saved_groups))
    ]
    new_groups = []
    for g, (group, saved) in enumerate(zip(groups, saved_groups)):
        new = _loaded_group(g, group.param_group, saved, defaults, kind)
        torch_format.check_option_kinds(g, new, algorithm.defaults)
        validate(new)
        new_groups.append(new)
    torch_format.check_listed(saved_groups, saved_state)
    new_states = []
    for new_group, saved in zip(new_groups, saved_groups):
        options = Options({name: new_group[name] for name in defaults})
        new_states.append(
            [
                from_torch(pid, p, options, saved_state.get(pid))
                for pid, p in zip(saved["params"], new_group["params"])
            ]
        )
    for group, new_group, states in zip(groups, new_groups, new_states, strict=True):
        group.load(new_group, states)


def _loaded_group(
    g: int, group: dict, saved: Mapping, defaults: Mapping[str, Any], kind: str
) -> dict:
    """Saved group ``g`` as the group dict that replaces ``group``: its options
    (torch tensors as arrays), ``group``'s params (and names)."""
    new = {k: interop.to_jax(v) for k, v in saved.items() if k != "params"}
    new["params"] = group["params"]
    if "param_names" in group and "param_names" not in new:
        new["param_names"] = group["param_names"]
    # Flags added to torch after a state dict was saved default as in torch's
    # __setstate__; a missing numeric hyperparameter is another optimizer's group.
    for name in [k for k in defaults if k not in new]:
        default = defaults[name]
        if isinstance(default, bool) or default is None:
            new[name] = default
    missing = [k for k in defaults if k not in new]
    if missing:
        raise ValueError(
            f"loaded state dict's parameter group {g} has no {missing}: it is not "
            f"a {kind} state dict"
        )
    return new


def loaded_leaf_state(
    algorithm: Algorithm, pid: Any, param: jax.Array, options: Options, saved: Any
) -> dict | None:
    """The internal state of one leaf from its saved torch-format state."""
    named = torch_format.Named(f"parameter {pid}")
    saved = torch_format.saved_entries(algorithm, named, saved)
    if saved is None:
        return None
    names = algorithm.state_names
    template = _template(algorithm, param, options)
    state: dict[str, Any] = {}
    fresh = None
    for name in dict.fromkeys([*template, *names]):
        expected = template.get(name)
        if name == STEP:
            if STEP in saved:
                check_not_traced(saved[STEP], named.entry(STEP))
            count = torch_format.saved_count(algorithm, named, saved)
            state[STEP] = jax.device_put(np.int32(count))
        elif name in saved:
            check_not_traced(saved[name], named.entry(name))
            shape = param.shape if expected is None else expected.shape
            dtype = param.dtype if expected is None else expected.dtype
            state[name] = torch_format.loaded_array(
                named.entry(name), saved[name], shape, dtype
            )
        elif expected is None:
            state[name] = None
        elif name in names:
            torch_format.missing(named, name, names)
        else:  # internal entry torch does not keep: as at initialization
            fresh = fresh or new_state(algorithm, param, options)
            state[name] = fresh[name]
    return place_like(state, param)


def _template(algorithm: Algorithm, param: jax.Array, options: Options) -> dict:
    """The state ``init_leaf`` makes for ``param``, as shapes and dtypes: traced
    once per shape, dtype and options (2 ms a leaf: 4 s to load 2,000 leaves)."""
    try:
        return _cached_template(
            algorithm, param.shape, param.dtype, options_key(options)
        )
    except TypeError:  # an unhashable option (an array)
        return jax.eval_shape(lambda p: init_leaf(algorithm, p, options), param)


@functools.lru_cache(maxsize=256)
def _cached_template(
    algorithm: Algorithm, shape: tuple, dtype: Any, options: tuple
) -> dict:
    return jax.eval_shape(
        lambda p: init_leaf(algorithm, p, Options({k: v for k, _, v in options})),
        jax.ShapeDtypeStruct(shape, dtype),
    )

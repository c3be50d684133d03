"""torch's state-dict format for the facade: ``state``, ``state_dict()`` and
``load_state_dict`` (torch's checks and messages, name matching, torch's casts).

The optimizer keeps its state per leaf (or packed); these functions read and write
it through the optimizer's :meth:`~functorch_optim.optim.Optimizer.to_torch_state`
and :meth:`~functorch_optim.optim.Optimizer.from_torch_state`, whose defaults
(:func:`torch_leaf_state`, :func:`loaded_leaf_state`) are one leaf's state under
torch's names.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import interop
from ..rule import Algorithm, Options
from ..runner import STEP, init_leaf
from ..sharding import place_like
from .group import new_state, options_key
from .inputs import check_not_traced, is_array, typename

if TYPE_CHECKING:
    from .optimizer import Optimizer


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
    """One leaf's state as torch keeps it: its names, 'step' as float32."""
    if state is None:
        return {}
    out: dict[str, Any] = {}
    for name in algorithm.state_names:
        if name == STEP and algorithm.step_is_tensor:
            out[STEP] = jnp.asarray(state[STEP], jnp.float32)
        elif name == STEP:
            out[STEP] = int(state[STEP])
        elif state.get(name) is not None:
            out[name] = state[name]
    return out


def _torch_states(opt: Optimizer) -> list[list[dict]]:
    """Each group's per-leaf states in torch's format, copied ({}: no state)."""
    return [
        [opt.to_torch_state(state) for state in group.snapshot()]
        for group in opt._groups
    ]


def state(opt: Optimizer) -> StateView:
    """:attr:`Optimizer.state`."""
    items: dict[int, dict] = {}
    leaves: list[Any] = []
    for group, states in zip(opt._groups, _torch_states(opt), strict=True):
        for i, view in enumerate(states):
            if view:
                items[len(leaves) + i] = view
        leaves.extend(group.params)
    return StateView(items, leaves)


def state_dict(opt: Optimizer) -> dict[str, Any]:
    """:meth:`Optimizer.state_dict`."""
    for pre_hook in tuple(opt._optimizer_state_dict_pre_hooks.values()):
        pre_hook(opt)
    groups, state, start = [], {}, 0
    for group, states in zip(opt._groups, _torch_states(opt), strict=True):
        packed = {k: v for k, v in group.param_group.items() if k != "params"}
        packed["params"] = list(range(start, start + len(group.params)))
        groups.append(packed)
        for i, view in enumerate(states):
            if view:
                state[start + i] = view
        start += len(group.params)
    result = {"state": state, "param_groups": groups}
    for post_hook in tuple(opt._optimizer_state_dict_post_hooks.values()):
        returned = post_hook(opt, result)
        if returned is not None:
            result = returned
    return result


def load_state_dict(opt: Optimizer, state_dict: Mapping[str, Any]) -> None:
    """:meth:`Optimizer.load_state_dict`."""
    _check_is_dict(state_dict)
    state_dict = dict(state_dict)
    for pre_hook in tuple(opt._optimizer_load_state_dict_pre_hooks.values()):
        result = pre_hook(opt, state_dict)
        if result is not None:
            state_dict = result
    saved_groups, saved_state = _checked_layout(state_dict)
    groups = opt._groups
    if len(groups) != len(saved_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    if any(len(g.params) != len(s["params"]) for g, s in zip(groups, saved_groups)):
        raise ValueError(
            "loaded state dict contains a parameter group that doesn't match the "
            "size of optimizer's group"
        )
    saved_groups = [
        _matched_by_name(group.structure.names, g, saved)
        for g, (group, saved) in enumerate(zip(groups, saved_groups))
    ]
    new_groups = [
        _loaded_group(opt, g, group.param_group, saved)
        for g, (group, saved) in enumerate(zip(groups, saved_groups))
    ]
    saved_state = _with_int_ids(saved_groups, saved_state)
    known = {pid for saved in saved_groups for pid in saved["params"]}
    for pid in saved_state:
        if pid not in known:
            raise ValueError(
                f"loaded state dict has state for parameter id {pid!r}, which no "
                "parameter group lists"
            )
    new_states = []
    for new_group, saved in zip(new_groups, saved_groups):
        options = Options({name: new_group[name] for name in opt.defaults})
        new_states.append(
            [
                opt.from_torch_state(pid, p, options, saved_state.get(pid))
                for pid, p in zip(saved["params"], new_group["params"])
            ]
        )
    for group, new_group, states in zip(groups, new_groups, new_states, strict=True):
        group.load(new_group, states)
    for post_hook in tuple(opt._optimizer_load_state_dict_post_hooks.values()):
        post_hook(opt)


def _matched_by_name(ours: list[str] | None, g: int, saved: Mapping) -> Mapping:
    """Saved group ``g`` with its ids in the order of this group's params (named
    ``ours``), by name, when both have ``param_names``: the same names in another
    order are matched; other names are an error naming both (torch loads by
    position and would give one param another's state)."""
    theirs = saved.get("param_names")
    if ours is None or theirs is None or list(theirs) == ours:
        return saved
    theirs = list(theirs)
    if sorted(theirs) != sorted(ours) or len(set(ours)) != len(ours):
        raise ValueError(
            f"loaded state dict's parameter group {g} has param_names {theirs}, "
            f"the optimizer's group {g} has {ours}: the state belongs to other "
            "parameters"
        )
    ids = dict(zip(theirs, saved["params"], strict=True))
    return {**saved, "param_names": ours, "params": [ids[n] for n in ours]}


def _loaded_group(opt: Optimizer, g: int, group: dict, saved: Mapping) -> dict:
    new = {k: interop.to_jax(v) for k, v in saved.items() if k != "params"}
    new["params"] = group["params"]
    if "param_names" in group and "param_names" not in new:
        new["param_names"] = group["param_names"]
    # Flags added to torch after a state dict was saved default as in torch's
    # __setstate__; a missing numeric hyperparameter is another optimizer's group.
    missing = [k for k in opt.defaults if k not in new]
    for name in missing:
        default = opt.defaults[name]
        if isinstance(default, bool) or default is None:
            new[name] = default
    missing = [k for k in opt.defaults if k not in new]
    if missing:
        raise ValueError(
            f"loaded state dict's parameter group {g} has no {missing}: it is not "
            f"a {type(opt).__name__} state dict"
        )
    for name, default in opt.algorithm.defaults.items():
        expected = _option_kind(default)
        if expected is not None and not _is_option_kind(new[name], default):
            raise ValueError(
                f"loaded state dict's parameter group {g} has {name}="
                f"{new[name]!r}, which is not {expected} (torch's default is "
                f"{default!r})"
            )
    opt._validate_options(new)
    return new


def loaded_leaf_state(
    algorithm: Algorithm, pid: Any, param: jax.Array, options: Options, saved: Any
) -> dict | None:
    """The internal state of one leaf from its saved torch-format state."""
    if saved is None:
        return None
    if not isinstance(saved, Mapping):
        raise ValueError(
            f"loaded state of parameter {pid} must be a dict, got " + typename(saved)
        )
    if len(saved) == 0:
        return None
    names = algorithm.state_names
    unknown = [k for k in saved if k not in names]
    if unknown:
        raise ValueError(
            f"loaded state of parameter {pid} has {unknown}, which "
            f"{algorithm.name} does not keep (its state: {list(names)})"
        )
    template = _template(algorithm, param, options)
    state: dict[str, Any] = {}
    fresh = None
    for name in dict.fromkeys([*template, *names]):
        expected = template.get(name)
        if name == STEP and STEP in saved:
            state[STEP] = _loaded_step(pid, saved[STEP])
        elif name == STEP and STEP not in names:
            # torch keeps no count here; the state exists, so it is not step 1.
            state[STEP] = jnp.ones((), jnp.int32)
        elif name in saved:
            shape = param.shape if expected is None else expected.shape
            dtype = param.dtype if expected is None else expected.dtype
            state[name] = _loaded_array(pid, name, saved[name], shape, dtype)
        elif expected is None:
            state[name] = None
        elif name in names:
            _missing(pid, name, names)
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


def _check_is_dict(state_dict: Any) -> None:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a dict with 'state' and 'param_groups', got "
            f"{typename(state_dict)}"
        )


def _checked_layout(state_dict: Mapping) -> tuple[list, Mapping]:
    """The state dict's groups and state, after checking torch's layout: a list of
    group dicts with lists of parameter ids (each id once), and a dict of states."""
    _check_is_dict(state_dict)
    missing = [k for k in ("state", "param_groups") if k not in state_dict]
    if missing:
        raise ValueError(
            f"loaded state dict has no {missing} (its keys: {list(state_dict)})"
        )
    groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(groups, (list, tuple)):
        raise ValueError(
            "loaded state dict's 'param_groups' must be a list of dicts, got "
            + typename(groups)
        )
    for g, group in enumerate(groups):
        if not isinstance(group, Mapping) or not isinstance(
            group.get("params"), (list, tuple)
        ):
            raise ValueError(
                f"loaded state dict's parameter group {g} must be a dict with a "
                f"'params' list of parameter ids, got {typename(group)}"
                + (
                    f" with params={group.get('params')!r}"
                    if isinstance(group, Mapping)
                    else ""
                )
            )
    if not isinstance(state, Mapping):
        raise ValueError(
            "loaded state dict's 'state' must be a dict from parameter id to state, "
            "got " + typename(state)
        )
    try:
        counts = Counter(pid for group in groups for pid in group["params"])
    except TypeError as e:
        raise ValueError(
            f"loaded state dict has an unhashable parameter id: {e}"
        ) from None
    repeated = [pid for pid, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(
            f"loaded state dict lists parameter ids {repeated} more than once"
        )
    return list(groups), state


def _option_kind(default: Any) -> str | None:
    """What a loaded hyperparameter must be, judged by torch's default for it
    (None: anything that validation accepts)."""
    if isinstance(default, bool):
        return "a bool"
    if isinstance(default, (int, float)):
        return "a real number"
    if isinstance(default, tuple):
        return f"a sequence of {len(default)}"
    if isinstance(default, str):
        return "a string"
    return None


def _is_real_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        dtype is not None
        and getattr(value, "size", 0) == 1
        and jnp.issubdtype(dtype, jnp.number)
        and not jnp.issubdtype(dtype, jnp.complexfloating)
    )


def _is_option_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if isinstance(default, (int, float)):
        return _is_real_number(value)
    if isinstance(default, tuple):
        return (
            isinstance(value, (tuple, list))
            and len(value) == len(default)
            and all(_is_option_kind(v, d) for v, d in zip(value, default))
        )
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _missing(pid: Any, name: str, names: tuple) -> None:
    raise ValueError(
        f"loaded state of parameter {pid} has no {name!r} (expected {list(names)})"
    )


def _with_int_ids(groups: list, state: Mapping) -> Mapping:
    """``state`` keyed by the groups' integer ids where it has them as strings
    (orbax's own checkpointer and JSON turn integer dict keys into strings)."""
    known = {pid for group in groups for pid in group["params"]}
    as_text = {str(pid): pid for pid in known if isinstance(pid, int)}
    out = dict(state)
    for key in state:
        pid = as_text.get(key) if isinstance(key, str) and key not in known else None
        if pid is not None and pid not in out:
            out[pid] = out.pop(key)
    return out


def _dtype_kind(dtype: Any) -> str:
    for kind in (jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating):
        if jnp.issubdtype(dtype, kind):
            return kind.__name__
    return jnp.dtype(dtype).name


def _loaded_array(pid: Any, name: str, value: Any, shape, dtype) -> jax.Array:
    """A saved state entry as a fresh array of ``dtype`` (torch's cast, between
    floating dtypes), checked: an entry of another kind (integer, complex for a
    real state) is an error, where a cast would change the trajectory silently."""
    where = f"loaded state {name!r} of parameter {pid}"
    check_not_traced(value, where)
    if not is_array(value) and not isinstance(value, (int, float, complex, np.number)):
        raise ValueError(f"{where} must be an array, got {typename(value)}")
    # A JAX array stays where it lives: it may be sharded over other processes.
    array: jax.Array | np.ndarray
    if isinstance(value, jax.Array):
        array = value
    else:
        array = np.asarray(interop.to_numpy(value))
    if not jnp.issubdtype(array.dtype, jnp.number):
        raise ValueError(f"{where} has dtype {array.dtype}, not a number")
    if _dtype_kind(array.dtype) != _dtype_kind(dtype):
        raise ValueError(
            f"{where} has dtype {array.dtype}, the state is {jnp.dtype(dtype).name}: "
            f"a {_dtype_kind(array.dtype)} entry for a {_dtype_kind(dtype)} state "
            "is not cast"
        )
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{where} has shape {array.shape}, expected {tuple(shape)}")
    if isinstance(array, np.ndarray):
        # copied on the host (the transfer may run after the caller changed
        # ``value``, a torch tensor updated in place) and put on the device, where
        # jnp.array compiled a copy per shape
        return jax.device_put(np.array(array, dtype=dtype))
    if array.dtype == dtype:
        return jax.device_put(array, array.sharding, may_alias=False)
    return array.astype(dtype)


def _loaded_step(pid: Any, value: Any) -> jax.Array:
    """torch keeps 'step' as a float tensor; the facade counts in int32."""
    where = f"loaded state 'step' of parameter {pid}"
    check_not_traced(value, where)
    if not is_array(value) and not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{where} must be a number, got {typename(value)}")
    array = np.asarray(interop.to_numpy(value))
    if (
        array.size != 1
        or not jnp.issubdtype(array.dtype, jnp.number)
        or (jnp.iscomplexobj(array))
    ):
        raise ValueError(f"{where} must be one real number, got {array!r}")
    count = float(array.reshape(()))
    if not (np.isfinite(count) and count >= 0 and count == int(count) < 2**31):
        raise ValueError(f"{where} must be a count (a whole number >= 0), got {count}")
    return jax.device_put(np.int32(count))

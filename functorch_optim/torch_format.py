"""torch's optimizer state-dict format, written once for the facade
(``Optimizer.state_dict`` / ``load_state_dict``) and the functional interchange
(:func:`functorch_optim.interop.torch_state_dict`, ``load_torch_state``, ...).

The format::

    {"state": {id: {entry: value}},      # only the params torch has state for
     "param_groups": [{<options>, "params": [ids]}, ...]}

ids are numbered across the groups in order; ``step`` is a float32 tensor where
torch keeps one (``Algorithm.step_is_tensor``), else an int; an algorithm without
``step`` in its state (SGD, Rprop, ...) keeps no count. A dict read back may have
its integer ids as strings (JSON and orbax's own checkpointer turn integer keys
into strings): :func:`read` keys the state by the groups' ids either way.

Also here, as every reader of torch's dicts needs them: one array as torch may
hand it (a tensor, bfloat16 included) as NumPy, without importing torch.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .rule import Algorithm
from .runner import STEP

_BFLOAT16 = np.dtype(jnp.bfloat16)


# --- arrays as torch hands them -------------------------------------------------------


def is_torch_tensor(x: Any) -> bool:
    """``x`` is a torch tensor (checked without importing torch: a tensor can only
    exist once torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_numpy(x: Any) -> np.ndarray:
    """One array (torch, JAX or NumPy) or number as a NumPy array: a torch tensor
    detached and on the CPU, bfloat16 kept (``ml_dtypes``), sharing its memory."""
    if not is_torch_tensor(x):
        return np.asarray(x)
    import torch

    t = x.detach().cpu()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16; ml_dtypes' has its bits
        return t.view(torch.int16).numpy().view(_BFLOAT16)
    return t.numpy()


def is_array(x: Any) -> bool:
    """``x`` is a JAX or NumPy array or a torch tensor."""
    return isinstance(x, (jax.Array, np.ndarray)) or is_torch_tensor(x)


def typename(x: Any) -> str:
    """``x``'s type as messages name it (``int``, ``torch.Tensor``, ...)."""
    cls = type(x)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# --- building -------------------------------------------------------------------------


def torch_step(algorithm: Algorithm, count: Any) -> Any:
    """A step count as torch keeps ``step``: a float32 scalar, or an int."""
    if algorithm.step_is_tensor:
        return jnp.asarray(count, jnp.float32)
    return int(count)


def torch_entries(algorithm: Algorithm, count: Any, values: Mapping[str, Any]) -> dict:
    """One param's state under torch's names, in torch's order: ``step`` from
    ``count`` (read only where the algorithm keeps one), each other entry from
    ``values`` where it is not None."""
    entries: dict[str, Any] = {}
    for name in algorithm.state_names:
        if name == STEP:
            entries[STEP] = torch_step(algorithm, count)
        elif values.get(name) is not None:
            entries[name] = values[name]
    return entries


def state_dict(groups: Iterable[tuple[Mapping[str, Any], Sequence[Any]]]) -> dict:
    """torch's state dict of ``groups``: each ``(options, states)``, ``states``
    one per param of the group, None or empty for a param torch keeps no state
    for (SGD without momentum keeps none: torch's dict has no entry for it).

    The params are numbered across the groups in order; each group is its options
    with ``params`` (its ids) set: in the options' place where they have the key,
    else last, as torch's ``state_dict`` puts it.
    """
    state: dict[Any, Any] = {}
    param_groups = []
    next_id = 0
    for options, states in groups:
        ids = list(range(next_id, next_id + len(states)))
        next_id += len(states)
        for pid, entries in zip(ids, states, strict=True):
            if entries:
                state[pid] = entries
        param_groups.append({**options, "params": ids})
    return {"state": state, "param_groups": param_groups}


# --- reading back: the dict's layout and ids ------------------------------------------


def check_is_dict(state_dict: Any) -> None:
    """``state_dict`` is a mapping (checked before anything reads it)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a dict with 'state' and 'param_groups', got "
            f"{typename(state_dict)}"
        )


def read(state_dict: Any) -> tuple[list[Mapping], dict]:
    """The dict's groups and its state keyed by the groups' ids, after checking
    torch's layout: a list of group dicts with lists of parameter ids (each id
    once), and a dict of states (:func:`keyed_by_id`)."""
    check_is_dict(state_dict)
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
    return list(groups), keyed_by_id(groups, state)


def keyed_by_id(groups: Sequence[Mapping], state: Mapping) -> dict:
    """``state`` keyed by the groups' ids: a string key that no group lists is the
    integer id it spells, where a group lists that id and ``state`` has no key
    for it (orbax's own checkpointer and JSON turn integer dict keys into
    strings). Other keys are kept as they are."""
    known = {pid for group in groups for pid in group["params"]}
    as_text = {str(pid): pid for pid in known if isinstance(pid, int)}
    out = dict(state)
    for key in state:
        pid = as_text.get(key) if isinstance(key, str) and key not in known else None
        if pid is not None and pid not in out:
            out[pid] = out.pop(key)
    return out


def check_listed(groups: Sequence[Mapping], state: Mapping) -> None:
    """Every id ``state`` (as :func:`read` keys it) has state for is a group's."""
    known = {pid for group in groups for pid in group["params"]}
    for pid in state:
        if pid not in known:
            raise ValueError(
                f"loaded state dict has state for parameter id {pid!r}, which no "
                "parameter group lists"
            )


def check_sizes(sizes: Sequence[int], groups: Sequence[Mapping]) -> None:
    """torch's checks that the dict's groups are as many, and as large, as the
    groups (of ``sizes`` params) it is loaded into."""
    if len(sizes) != len(groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    if any(n != len(saved["params"]) for n, saved in zip(sizes, groups)):
        raise ValueError(
            "loaded state dict contains a parameter group that doesn't match the "
            "size of optimizer's group"
        )


def matched_by_name(ours: list[str] | None, g: int, saved: Mapping) -> Mapping:
    """Saved group ``g`` with its ids in the order of the params it is loaded into
    (named ``ours``), by name, when both have ``param_names``: the same names in
    another order are matched; other names are an error naming both (torch loads
    by position and would give one param another's state)."""
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


# --- reading back: a group's options --------------------------------------------------


def check_option_kinds(g: int, group: Mapping[str, Any], defaults: Mapping) -> None:
    """Each of loaded group ``g``'s options is of the kind torch's default for it
    is (``defaults``: the algorithm's signature): a bool, a real number, a
    sequence of as many, a string."""
    for name, default in defaults.items():
        expected = _option_kind(default)
        if expected is not None and not _is_option_kind(group[name], default):
            raise ValueError(
                f"loaded state dict's parameter group {g} has {name}="
                f"{group[name]!r}, which is not {expected} (torch's default is "
                f"{default!r})"
            )


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


# --- reading back: one param's state --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Named:
    """How messages name one param's saved state (:attr:`state`) and its entries
    (:meth:`entry`): ``loaded state of parameter 0``, ``loaded state 'exp_avg'
    of parameter 0`` (the facade's, by id), or ``torch's state of param 'w'``,
    ``torch's 'exp_avg' of param 'w'`` (the interchange's, by name)."""

    param: str  # "parameter 0", "param 'w'"
    state_prefix: str = "loaded state"
    entry_prefix: str = "loaded state"

    @property
    def state(self) -> str:
        return f"{self.state_prefix} of {self.param}"

    def entry(self, name: str) -> str:
        return f"{self.entry_prefix} {name!r} of {self.param}"


def saved_entries(algorithm: Algorithm, named: Named, saved: Any) -> Mapping | None:
    """A param's saved state, checked to be a dict of ``algorithm``'s entries;
    None for none (None or empty)."""
    if saved is None:
        return None
    if not isinstance(saved, Mapping):
        raise ValueError(f"{named.state} must be a dict, got " + typename(saved))
    if len(saved) == 0:
        return None
    names = algorithm.state_names
    unknown = [k for k in saved if k not in names]
    if unknown:
        raise ValueError(
            f"{named.state} has {unknown}, which {algorithm.name} does not keep "
            f"(its state: {list(names)})"
        )
    return saved


def missing(named: Named, name: str, names: Sequence[str]) -> None:
    """Raise: the saved state lacks entry ``name`` of the algorithm's ``names``."""
    raise ValueError(f"{named.state} has no {name!r} (expected {list(names)})")


def saved_count(algorithm: Algorithm, named: Named, saved: Mapping) -> int:
    """The steps a param with state ``saved`` (not empty) has taken: its
    ``step`` (a float tensor or an int in torch), checked to be a count."""
    if STEP not in algorithm.state_names:
        # torch keeps no count here; the state exists, so a step was taken
        return 1
    if STEP not in saved:
        missing(named, STEP, algorithm.state_names)
    where, value = named.entry(STEP), saved[STEP]
    if not is_array(value) and not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{where} must be a number, got {typename(value)}")
    array = as_numpy(value)
    if (
        array.size != 1
        or not jnp.issubdtype(array.dtype, jnp.number)
        or (jnp.iscomplexobj(array))
    ):
        raise ValueError(f"{where} must be one real number, got {array!r}")
    count = float(array.reshape(()))
    if not (np.isfinite(count) and count >= 0 and count == int(count) < 2**31):
        raise ValueError(f"{where} must be a count (a whole number >= 0), got {count}")
    return int(count)


def _dtype_kind(dtype: Any) -> str:
    for kind in (jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating):
        if jnp.issubdtype(dtype, kind):
            return kind.__name__
    return jnp.dtype(dtype).name


def loaded_array(where: str, value: Any, shape: Sequence[int], dtype: Any) -> jax.Array:
    """A saved state entry as a fresh array of ``dtype`` (torch's cast, between
    floating dtypes), checked: an entry of another kind (integer, complex for a
    real state) is an error, where a cast would change the trajectory silently.
    ``where`` names it (:meth:`Named.entry`)."""
    if not is_array(value) and not isinstance(value, (int, float, complex, np.number)):
        raise ValueError(f"{where} must be an array, got {typename(value)}")
    # A JAX array stays where it lives: it may be sharded over other processes.
    array: jax.Array | np.ndarray
    array = value if isinstance(value, jax.Array) else as_numpy(value)
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

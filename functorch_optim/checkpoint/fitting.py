"""Fitting a restored tree into ``like``, or checking that it needs none."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .constants import CheckpointError
from .decoding import _Node
from .encoding import _is_array
from .registry import _is_own_state


def _mismatch(path: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"the checkpoint does not match `like` at {path or 'the root'}: {what}"
    )


def _fit(value: Any, like: Any, path: str) -> Any:
    if isinstance(value, _Node):
        like_leaves, treedef = jax.tree.flatten(like)
        if len(like_leaves) != len(value.leaves):
            raise _mismatch(
                path,
                f"a {value.typename} of {len(value.leaves)} leaves, `like` has "
                f"{len(like_leaves)}",
            )
        return jax.tree.unflatten(
            treedef,
            [
                _fit(v, leaf, f"{path}<leaf {i}>")
                for i, (v, leaf) in enumerate(zip(value.leaves, like_leaves))
            ],
        )
    if isinstance(like, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        if not _is_array(value):
            raise _mismatch(path, f"{type(value).__name__}, `like` has an array")
        if value.shape != like.shape or value.dtype != like.dtype:
            raise _mismatch(
                path,
                f"{value.dtype}{list(value.shape)}, `like` has "
                f"{like.dtype}{list(like.shape)}",
            )
        sharding = getattr(like, "sharding", None)
        if sharding is None:
            return value
        if isinstance(like, jax.Array) and not like.committed:
            # placed as `like` is: an array made eagerly is not committed to its
            # (the default) device, and jit keys on that, so a committed one would
            # compile a step that `like` already compiled once more
            return jax.numpy.asarray(value)
        # place it as `like` is placed (devices, mesh), committed
        return jax.device_put(value, sharding)
    if type(like) is dict:
        if type(value) is not dict or set(value) != set(like):
            have = sorted(map(repr, value)) if type(value) is dict else value
            raise _mismatch(path, f"keys {have}, `like` has {sorted(map(repr, like))}")
        # in the saved order: `like` may list the same keys in another
        return {k: _fit(value[k], like[k], f"{path}[{k!r}]") for k in value}
    if _is_own_state(like):
        if type(value) is not type(like):
            raise _mismatch(
                path, f"a {type(value).__name__}, `like` has a {type(like).__name__}"
            )
        return type(like)(
            *(
                _fit(v, w, f"{path}.{f}")
                for f, v, w in zip(like._fields, value, like, strict=True)
            )
        )
    if type(like) in (list, tuple):
        if type(value) is not type(like) or len(value) != len(like):
            raise _mismatch(
                path,
                f"{type(value).__name__} of {_length(value)}, `like` has a "
                f"{type(like).__name__} of {len(like)}",
            )
        return type(like)(
            _fit(v, w, f"{path}[{i}]") for i, (v, w) in enumerate(zip(value, like))
        )
    if isinstance(value, (dict, list, tuple)) or _is_array(value):
        raise _mismatch(path, f"a {type(value).__name__}, `like` has {like!r}")
    if like is not None and not isinstance(like, (bool, int, float, complex, str)):
        # a custom pytree node in `like` where the checkpoint holds a builtin
        raise _mismatch(path, f"{value!r}, `like` has a {type(like).__name__}")
    return value


def _length(x: Any) -> str:
    return f"{len(x)}" if isinstance(x, (list, tuple, dict)) else "-"


def _no_nodes(value: Any, path: str) -> Any:
    if isinstance(value, _Node):
        raise CheckpointError(
            f"the checkpoint holds a {value.typename} pytree at {path or 'the root'}; "
            "pass like= a tree of the same structure (e.g. the freshly initialized "
            "state) to rebuild it"
        )
    if type(value) is dict:
        for k, v in value.items():
            _no_nodes(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):  # a state NamedTuple too
        for i, v in enumerate(value):
            _no_nodes(v, f"{path}[{i}]")
    return value

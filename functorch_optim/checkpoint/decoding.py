"""Decoding the structure encoding from untrusted bytes: arrays (their dtype and
shape checked against their bytes), containers, states and pytree nodes."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .constants import _MAX_DEPTH, _NUMERIC_DTYPE_NAMES, CheckpointError
from .msgpack_reader import _EXT_NDARRAY, _EXT_NPSCALAR, _Reader, _show
from .registry import _state_registry


@functools.cache
def _numeric_dtypes() -> dict[str, np.dtype]:
    """The dtypes an array may have, by name (see ``_NUMERIC_DTYPE_NAMES``)."""
    jnp = jax.numpy
    return {
        name: np.dtype(getattr(jnp, name))
        for name in _NUMERIC_DTYPE_NAMES
        if hasattr(jnp, name)
    }


def _numeric_dtype(name: Any, what: str) -> np.dtype:
    """The numeric dtype called ``name``."""
    dtype = _numeric_dtypes().get(name) if isinstance(name, str) else None
    if dtype is None:
        raise CheckpointError(f"{what} has dtype {_show(name)}, not a numeric dtype")
    return dtype


def _check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints of at most 64 dimensions."""
    if (
        not isinstance(shape, tuple)
        or len(shape) > 64
        or not all(type(n) is int and n >= 0 for n in shape)
    ):
        raise CheckpointError(f"{what} has shape {_show(shape)}")
    return shape


def _ndarray(data: memoryview, what: str) -> np.ndarray:
    """An array from flax's ndarray encoding, ``msgpack((shape, dtype name,
    bytes))``: the declared shape and dtype must fit the bytes exactly before the
    array is built."""
    reader = _Reader(data)
    if reader.expect("array", what) != 3:
        raise CheckpointError(f"{what} is not a (shape, dtype, bytes) triple")
    ndim = reader.expect("array", f"{what}'s shape")
    shape = _check_shape(
        tuple(reader.scalar((int,), f"{what}'s shape") for _ in range(ndim)), what
    )
    kind, name = reader.item()  # flax writes the name as a str, older files as bin
    dtype = _numeric_dtype(
        str(name, "ascii", "replace") if kind == "bin" else name, what
    )
    buffer = reader.expect("bin", f"{what}'s data")
    reader.finish(what)
    if math.prod(shape) * dtype.itemsize != len(buffer):
        raise CheckpointError(
            f"{what} declares {dtype.name}{list(shape)} in {len(buffer)} bytes"
        )
    # a copy: owns its memory, writable, and frees the file's bytes
    return np.frombuffer(buffer, dtype).reshape(shape).copy()


class _Node:
    """A pytree node of a type this module does not rebuild without ``like``."""

    def __init__(self, typename: str, leaves: list) -> None:
        self.typename, self.leaves = typename, leaves


class _Decoder:
    """Reads the structure :func:`_encode` writes from untrusted bytes.

    Args:
      data: the msgpack bytes.
      version: the file's format version (how a state class is named).
      arrays: returns an orbax checkpoint's arrays by index, loaded at the first
        ``"ref"``; None where arrays are inline (msgpack).
    """

    def __init__(
        self,
        data: memoryview,
        version: int,
        arrays: Callable[[], dict[int, Any]] | None = None,
    ) -> None:
        self.reader, self.version, self.arrays = _Reader(data), version, arrays
        self.tags = {
            "bigint": (2, self._bigint),
            "complex": (3, self._complex),
            "array": (3, self._array),
            "ref": (3, self._ref),
            "dict": (2, self._dict),
            "list": (2, self._list),
            "tuple": (2, self._tuple),
            "node": (3, self._node),
            "namedtuple": (3 if version >= 2 else 4, self._namedtuple),
        }

    def value(self, path: str, depth: int) -> Any:
        """The next value, at ``path`` inside ``depth`` containers."""
        where = path or "the root"
        kind, item = self.reader.item()
        if kind == "scalar":
            return item
        if kind == "ext" and item[0] == _EXT_NPSCALAR:  # a np.float64 leaf
            return _ndarray(item[1], f"the scalar at {where}")[()]
        if kind != "array" or item == 0:
            raise CheckpointError(f"an unexpected msgpack {kind} at {where}")
        tag = self.reader.scalar((str,), f"the entry at {where}")
        if tag not in self.tags:
            raise CheckpointError(f"an unknown entry {_show(tag)} at {where}")
        arity, read = self.tags[tag]
        if item != arity:
            raise CheckpointError(f"a {tag} of {item - 1} fields at {where}")
        if tag in ("dict", "list", "tuple", "node", "namedtuple"):
            if depth >= _MAX_DEPTH:
                raise CheckpointError(
                    f"containers nested deeper than {_MAX_DEPTH} at {where}"
                )
            depth += 1
        return read(path, depth)

    def _bigint(self, path: str, depth: int) -> int:
        text = self.reader.scalar((str,), f"the integer at {path or 'the root'}")
        try:
            return int(text)
        except ValueError:
            raise CheckpointError(f"{_show(text)} is not an integer") from None

    def _complex(self, path: str, depth: int) -> complex:
        what = f"the complex at {path or 'the root'}"
        return complex(
            self.reader.scalar((int, float), what),
            self.reader.scalar((int, float), what),
        )

    def _kind(self, path: str) -> str:
        kind = self.reader.scalar((str,), f"the array kind at {path or 'the root'}")
        if kind not in ("jax", "numpy", "numpy-scalar"):
            raise CheckpointError(f"an unknown array kind {_show(kind)}")
        return kind

    def _array(self, path: str, depth: int) -> Any:
        kind, what = self._kind(path), f"the array at {path or 'the root'}"
        code, data = self.reader.expect("ext", what)
        if code != _EXT_NDARRAY:
            raise CheckpointError(f"{what} has the unknown ext type {code}")
        return _as_kind(_ndarray(data, what), kind, what)

    def _ref(self, path: str, depth: int) -> Any:
        kind, what = self._kind(path), f"the array at {path or 'the root'}"
        index = self.reader.scalar((int,), what)
        if self.arrays is None:
            raise CheckpointError(f"{what} refers to an arrays directory")
        arrays = self.arrays()
        if index not in arrays:
            raise CheckpointError(f"{what} refers to a missing array {index}")
        return _as_kind(arrays[index], kind, what)

    def _entries(self, path: str) -> int:
        return self.reader.expect("array", f"the entries at {path or 'the root'}")

    def _dict(self, path: str, depth: int) -> dict:
        result = {}
        for _ in range(self._entries(path)):
            if self.reader.expect("array", f"an entry at {path or 'the root'}") != 2:
                raise CheckpointError(f"a dict entry at {path} is not a pair")
            key = self.value(f"{path}<key>", depth)
            try:
                hash(key)
            except TypeError:
                raise CheckpointError(
                    f"an unhashable {type(key).__name__} key at {path or 'the root'}"
                ) from None
            result[key] = self.value(f"{path}[{_show(key)}]", depth)
        return result

    def _list(self, path: str, depth: int) -> list:
        return [self.value(f"{path}[{i}]", depth) for i in range(self._entries(path))]

    def _tuple(self, path: str, depth: int) -> tuple:
        return tuple(self._list(path, depth))

    def _node(self, path: str, depth: int) -> _Node:
        typename = self.reader.scalar((str,), f"the node at {path or 'the root'}")
        count = self._entries(path)
        return _Node(
            typename, [self.value(f"{path}<leaf {i}>", depth) for i in range(count)]
        )

    def _namedtuple(self, path: str, depth: int) -> tuple:
        what = f"the state at {path or 'the root'}"
        if self.version >= 2:
            name = self.reader.scalar((str,), what)
            cls = _state_registry().get(name)
        else:  # version 1 named (module, qualname): looked up, never imported
            module = self.reader.scalar((str,), what)
            name = self.reader.scalar((str,), what)
            cls = _state_registry().get(name)
            if cls is not None and (cls.__module__, cls.__qualname__) != (
                module,
                name,
            ):
                cls, name = None, f"{module}.{name}"
        if cls is None:
            raise CheckpointError(
                f"{what} is a {_show(name)}, not a state class of this functorch_optim"
            )
        fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
        if self._entries(path) != len(fields):
            raise CheckpointError(
                f"{what} has another number of fields than this functorch_optim's "
                f"{cls.__name__} ({len(fields)})"
            )
        return cls(*(self.value(f"{path}.{f}", depth) for f in fields))


def _as_kind(value: Any, kind: str, what: str) -> Any:
    """``value`` as the array kind :func:`_encode` recorded."""
    if kind == "jax":
        try:
            return jax.numpy.asarray(value)
        except (TypeError, ValueError) as e:  # a dtype this JAX cannot hold
            raise CheckpointError(f"{what} cannot be a JAX array: {e}") from None
    value = np.asarray(value)
    if kind == "numpy-scalar":
        if value.ndim:
            raise CheckpointError(f"{what} is a scalar of shape {list(value.shape)}")
        return value[()]
    return value

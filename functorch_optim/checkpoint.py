"""Save and restore optimizer state exactly: functional states and facade state dicts.

Two on-disk formats, one encoding of the structure:

* ``format="msgpack"`` (default): one file; arrays are packed with
  ``flax.serialization``'s msgpack codec (dtype, shape, bytes), inside a small
  envelope (magic, format version, payload length, SHA-256) so a missing, truncated
  or foreign file is reported as such instead of decoded into garbage.
* ``format="orbax"``: a directory; the arrays go through orbax's
  ``StandardCheckpointer`` (tensorstore, sharded arrays) into a subdirectory of
  their own per save, ``arrays-<random hex>``, and the structure into
  ``structure.fockpt``, an envelope of the same kind that names that subdirectory.

The structure is recorded exactly, which neither backend does alone: dict keys keep
their type (a facade ``state_dict()`` is keyed by ``int``), tuples stay tuples
(``betas``), lists stay lists, ``None``, ``bool``, ``int``, ``float`` (``nan`` and
``inf`` included), ``str`` and ``complex`` come back as themselves, and arrays come
back with their dtype (``bfloat16`` and ``complex64`` included), shape and kind
(JAX array or NumPy array), and this library's own NamedTuple states
(``fo.AdamState``, ...) as themselves. Other pytree nodes (flax ``nnx.State``,
optax's namedtuple states, dataclasses) are stored as their leaves and need
``like=`` to be rebuilt, as with orbax.

A checkpoint file is data. :func:`restore` never imports or resolves anything a
file names: a state type is looked up by its name in a closed registry of this
library's state classes. Every size a file declares (a string, an array's shape, a
container's entry count, the arrays of an orbax directory) is checked against the
bytes that hold it before anything is allocated, nesting is bounded, array dtypes
must be numeric, and anything else raises :class:`CheckpointError`.

Saves are atomic: a crash (``SIGKILL``, a full disk) leaves the old checkpoint or
the new one, never neither and never a mix. The msgpack file is written to a temp
file next to the target (the target of a symlink) and renamed onto it; an orbax
save writes a fresh arrays subdirectory and then renames a new ``structure.fockpt``
naming it into place. What an interrupted save left behind is removed by the next
save of the same checkpoint.

Example::

    >>> fo.checkpoint.save("opt.ckpt", opt.state_dict())          # facade
    >>> opt.load_state_dict(fo.checkpoint.restore("opt.ckpt"))
    >>> fo.checkpoint.save("run.ckpt", {"params": params, "opt_state": state})
    >>> restored = fo.checkpoint.restore("run.ckpt", like={"params": params,
    ...                                                    "opt_state": state})
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import math
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "model_state_dict", "restore", "save", "save_torch"]

_MAGIC = b"FUNCTORCH_OPTIM\x00"
# Version 2 names a state class by its registry name (version 1: by its module and
# qualified name) and an orbax checkpoint's arrays subdirectory. Version 1 files are
# still read, their state classes mapped through the same registry.
_VERSION = 2
_READABLE_VERSIONS = (1, 2)
# magic, format version, payload length; the SHA-256 of the payload follows it.
_HEADER = struct.Struct("<16sIQ")
_DIGEST = 32
_STRUCTURE_FILE = "structure.fockpt"
_LEGACY_ARRAYS_DIR = "arrays"  # version 1: one fixed arrays subdirectory
_ARRAYS_DIR = re.compile(r"arrays-[0-9a-f]{16}")
# A temp file of a save of <name> is .<name>.fockpt-<random hex>: recognizably that
# target's, so the next save of the same target removes what a crash left behind.
_TEMP_INFIX = ".fockpt-"
_FORMATS = ("msgpack", "orbax")
# Containers (dicts, lists, tuples, states, pytree nodes) nested deeper than this
# are neither saved nor restored: the codec recurses once per level.
_MAX_DEPTH = 100
# The dtypes an array in a checkpoint may have: numbers and bools (the ml_dtypes
# types where this JAX has them), never objects, strings or structured records.
_NUMERIC_DTYPE_NAMES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "bfloat16",
    "int2",
    "int4",
    "uint2",
    "uint4",
    "float4_e2m1fn",
    "float8_e3m4",
    "float8_e4m3",
    "float8_e4m3b11fnuz",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
)
# zstd, the only compression orbax writes, expands a block of at most 128 KiB from
# no fewer than 4 bytes (a 3-byte block header and one byte of content): an arrays
# directory holds at most this many times its size on disk.
_ZSTD_MAX_RATIO = 2**17 // 4


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be read: foreign, truncated, corrupted or
    hostile, or that does not match the ``like`` tree it is restored into."""


# --- the closed registry of state classes ------------------------------------------


@functools.cache
def _state_registry() -> dict[str, type]:
    """This library's NamedTuple state classes by name: the public ``*State``
    classes of the modules that define the names the package exports.

    Derived from the exports, so a new algorithm's state joins without a list to
    update; a file can name nothing outside it. Read at first use, when the package
    (which loads this module lazily) is initialized.

    Returns:
      ``{"AdamState": fo.AdamState, ...}``.
    """
    package = importlib.import_module(__name__.rpartition(".")[0])
    exported = [getattr(package, name) for name in package.__all__]
    namespaces = [package] + [m for m in exported if isinstance(m, types.ModuleType)]
    modules = {
        sys.modules[obj.__module__]
        for namespace in namespaces
        for obj in map(vars(namespace).get, _public_names(namespace))
        if str(getattr(obj, "__module__", "")).startswith(package.__name__ + ".")
    }
    registry: dict[str, type] = {}
    for module in modules:
        for cls in vars(module).values():
            if _is_state_class(cls, module.__name__):
                if registry.setdefault(cls.__name__, cls) is not cls:
                    raise RuntimeError(f"two state classes named {cls.__name__}")
    return registry


def _public_names(module: types.ModuleType) -> list[str]:
    """``module.__all__``, or its names without a leading underscore."""
    names = getattr(module, "__all__", None)
    return names or [name for name in vars(module) if not name.startswith("_")]


def _is_state_class(cls: Any, module: str) -> bool:
    """A public NamedTuple class named ``*State`` defined in ``module``."""
    return (
        isinstance(cls, type)
        and issubclass(cls, tuple)
        and hasattr(cls, "_fields")
        and cls.__module__ == module
        and cls.__name__.endswith("State")
        and not cls.__name__.startswith("_")
    )


def _is_own_state(x: Any) -> bool:
    """A state of this library (``fo.AdamState``, ...): recorded by its registry
    name and rebuilt without ``like``."""
    cls = type(x)
    return _state_registry().get(cls.__name__) is cls


# --- the exact structure encoding ------------------------------------------------
#
# Every container becomes a list ``[tag, ...]``; scalars stay msgpack scalars, so a
# tagged list is never ambiguous with user data.


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _encode(x: Any, arrays: list | None, path: str, depth: int = 0) -> Any:
    """``x`` as msgpack-ready lists and scalars (see the module docstring).

    Args:
      x: the tree to record.
      arrays: where an orbax save collects its arrays (each recorded as a ``"ref"``
        to its index); None to record arrays inline.
      path: where ``x`` is in the saved tree, for errors.
      depth: the containers ``x`` is nested in.

    Returns:
      The encoding :class:`_Decoder` reads back.
    """
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        if -(2**63) <= x < 2**64:
            return x
        return ["bigint", str(x)]
    if isinstance(x, float):
        return x
    if isinstance(x, complex):
        return ["complex", x.real, x.imag]
    if _is_array(x):
        kind = "jax" if isinstance(x, jax.Array) else "numpy"
        value = np.asarray(x)
        if kind == "numpy" and isinstance(x, np.generic):
            kind = "numpy-scalar"
        if arrays is None or value.size == 0:  # orbax cannot store empty arrays
            return ["array", kind, value]
        arrays.append(value if isinstance(x, np.generic) else x)
        return ["ref", kind, len(arrays) - 1]
    if depth >= _MAX_DEPTH:  # restore() refuses what it could not read back
        raise ValueError(
            f"cannot checkpoint {path}: containers nested deeper than {_MAX_DEPTH}"
        )
    depth += 1
    if type(x) is dict:
        return [
            "dict",
            [
                [
                    _encode(k, None, path, depth),
                    _encode(v, arrays, f"{path}[{k!r}]", depth),
                ]
                for k, v in x.items()
            ],
        ]
    if type(x) in (list, tuple):
        return [
            type(x).__name__,
            [_encode(v, arrays, f"{path}[{i}]", depth) for i, v in enumerate(x)],
        ]
    if _is_own_state(x):
        return [
            "namedtuple",
            type(x).__name__,
            [_encode(v, arrays, f"{path}.{f}", depth) for f, v in zip(x._fields, x)],
        ]
    leaves, treedef = jax.tree.flatten(x)
    # not a pytree node (jaxlib ships no stubs for PyTreeDef)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # type: ignore[attr-defined]
        raise TypeError(
            f"cannot checkpoint {type(x).__name__!r} at {path or 'the root'}: "
            "only arrays, Python scalars, strings, None and pytrees of them"
        )
    return [
        "node",
        type(x).__qualname__,
        [_encode(v, arrays, f"{path}<leaf {i}>", depth) for i, v in enumerate(leaves)],
    ]


# --- reading untrusted msgpack ------------------------------------------------------
#
# msgpack.unpackb would build whatever a file declares before anything could be
# checked (a 10 MB file of empty lists is 900 MB of Python objects). The reader below
# decodes the one grammar save() writes, item by item: every length is checked
# against the bytes left before it is read, and nothing outside the grammar is built.

_EXT_NDARRAY = 1  # flax.serialization's ext type codes
_EXT_NPSCALAR = 3
_CONSTANTS = {0xC0: None, 0xC2: False, 0xC3: True}
_NUMBERS = {
    0xCA: struct.Struct(">f"),
    0xCB: struct.Struct(">d"),
    0xCC: struct.Struct(">B"),
    0xCD: struct.Struct(">H"),
    0xCE: struct.Struct(">I"),
    0xCF: struct.Struct(">Q"),
    0xD0: struct.Struct(">b"),
    0xD1: struct.Struct(">h"),
    0xD2: struct.Struct(">i"),
    0xD3: struct.Struct(">q"),
}
_SIZED = {  # type byte -> (kind, the struct of its length)
    0xC4: ("bin", _NUMBERS[0xCC]),
    0xC5: ("bin", _NUMBERS[0xCD]),
    0xC6: ("bin", _NUMBERS[0xCE]),
    0xC7: ("ext", _NUMBERS[0xCC]),
    0xC8: ("ext", _NUMBERS[0xCD]),
    0xC9: ("ext", _NUMBERS[0xCE]),
    0xD9: ("str", _NUMBERS[0xCC]),
    0xDA: ("str", _NUMBERS[0xCD]),
    0xDB: ("str", _NUMBERS[0xCE]),
    0xDC: ("array", _NUMBERS[0xCD]),
    0xDD: ("array", _NUMBERS[0xCE]),
    0xDE: ("map", _NUMBERS[0xCD]),
    0xDF: ("map", _NUMBERS[0xCE]),
}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}


class _Reader:
    """A cursor over untrusted msgpack bytes."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> memoryview:
        """The next ``n`` bytes, which must be there."""
        if n > len(self.data) - self.pos:
            raise CheckpointError(
                f"{what} declares {n} bytes where {len(self.data) - self.pos} remain"
            )
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def item(self) -> tuple[str, Any]:
        """The next item's kind and value: ``("scalar", v)`` for nil, bools, ints,
        floats and strings, ``("bin", bytes)``, ``("ext", (code, bytes))``,
        ``("array", length)`` or ``("map", length)``: a container's entries follow
        it, each at least a byte, so its length is checked against the bytes left."""
        byte = self.take(1, "an item")[0]
        if byte <= 0x7F or byte >= 0xE0:  # positive and negative fixint
            return "scalar", byte if byte <= 0x7F else byte - 0x100
        if byte in _CONSTANTS:
            return "scalar", _CONSTANTS[byte]
        if byte in _NUMBERS:
            number = _NUMBERS[byte]
            return "scalar", number.unpack(self.take(number.size, "a number"))[0]
        if 0x80 <= byte <= 0x9F:
            kind, length = ("map" if byte <= 0x8F else "array"), byte & 0x0F
        elif 0xA0 <= byte <= 0xBF:
            kind, length = "str", byte & 0x1F
        elif byte in _FIXEXT:
            kind, length = "ext", _FIXEXT[byte]
        elif byte in _SIZED:
            kind, size = _SIZED[byte]
            length = size.unpack(self.take(size.size, f"a {kind}'s length"))[0]
        else:
            raise CheckpointError(f"an unknown msgpack type byte 0x{byte:02x}")
        if kind in ("array", "map"):
            if length > len(self.data) - self.pos:
                raise CheckpointError(
                    f"a {kind} declares {length} entries where "
                    f"{len(self.data) - self.pos} bytes remain"
                )
            return kind, length
        if kind == "ext":
            code = self.take(1, "an ext type")[0]
            return kind, (code, self.take(length, "an ext"))
        data = self.take(length, f"a {kind}")
        if kind == "bin":
            return kind, data
        try:
            return "scalar", str(data, "utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"a string that is not UTF-8 ({e})") from None

    def expect(self, kind: str, what: str) -> Any:
        """The next item, which must be of ``kind``."""
        got, value = self.item()
        if got != kind:
            raise CheckpointError(f"{what}: a msgpack {got} instead of a {kind}")
        return value

    def scalar(self, types: tuple[type, ...], what: str) -> Any:
        """The next item, a scalar of one of ``types`` (a bool is no int here)."""
        value = self.expect("scalar", what)
        if not isinstance(value, types) or (type(value) is bool and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise CheckpointError(f"{what}: {_show(value)} is not a {names}")
        return value

    def finish(self, what: str) -> None:
        if self.pos != len(self.data):
            raise CheckpointError(
                f"{len(self.data) - self.pos} bytes follow the end of {what}"
            )


def _show(value: Any) -> str:
    """``repr(value)``, shortened: a hostile file's strings may be long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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


# --- fitting a restored tree into ``like`` ----------------------------------------


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


# --- the envelope and atomic writes ------------------------------------------------


def _write_atomically(path: str, payload: bytes) -> None:
    """Replace the file at ``path`` with an envelope of ``payload`` in one rename, so
    a crash or a full disk leaves the old file or the new one, and no temp file.

    Args:
      path: the file to write; a symlink's target is written, the link kept.
      payload: the msgpack bytes.
    """
    target = os.path.realpath(path)
    directory, name = os.path.split(target)
    _remove_temp_files(directory, name)
    tmp = os.path.join(directory, f".{name}{_TEMP_INFIX}{secrets.token_hex(8)}")
    # created with 0o666 less the umask, as open() creates a file (mkstemp: 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(FileNotFoundError):  # keep the old file's mode
                os.fchmod(f.fileno(), stat.S_IMODE(os.stat(target).st_mode))
            f.write(_HEADER.pack(_MAGIC, _VERSION, len(payload)))
            f.write(hashlib.sha256(payload).digest())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)  # the rename itself survives a power loss


def _remove_temp_files(directory: str, name: str) -> None:
    """Remove the temp files an interrupted save of ``name`` left in ``directory``."""
    pattern = re.compile(re.escape(f".{name}{_TEMP_INFIX}") + "[0-9a-f]{16}")
    for entry in os.listdir(directory):
        if pattern.fullmatch(entry):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(top: str) -> None:
    """fsync every file and directory under ``top`` (orbax's commit renames, but does
    not promise the data is on disk before the structure naming it is)."""
    for root, _, files in os.walk(top):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_directory(root)


def _read_envelope(path: str) -> tuple[int, memoryview]:
    """The format version and the checksummed payload of the file at ``path``."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER.size or not data.startswith(_MAGIC):
        raise CheckpointError(f"{path} is not a functorch_optim checkpoint")
    _, version, length = _HEADER.unpack_from(data)
    if version not in _READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this functorch_optim "
            f"reads versions {', '.join(map(str, _READABLE_VERSIONS))}"
        )
    payload = memoryview(data)[_HEADER.size + _DIGEST :]  # no copy of a large file
    if len(payload) != length:
        raise CheckpointError(
            f"{path} is truncated: {len(payload)} of {length} payload bytes"
            if len(payload) < length
            else f"{path} has {len(payload) - length} bytes of trailing data"
        )
    if hashlib.sha256(payload).digest() != data[_HEADER.size : _HEADER.size + _DIGEST]:
        raise CheckpointError(f"{path} is corrupted: its checksum does not match")
    return version, payload


def _pack(encoded: Any) -> bytes:
    from flax import serialization

    return serialization.msgpack_serialize(encoded, in_place=True)


# --- orbax directories -------------------------------------------------------------


def _save_directory(path: str, tree: Any) -> None:
    """An orbax save: the arrays into a fresh subdirectory, then one rename of the
    structure naming it commits the checkpoint; the old arrays go last."""
    import orbax.checkpoint as ocp

    arrays: list = []
    structure = _encode(tree, arrays, "")
    directory = os.path.realpath(path)  # orbax takes absolute paths only
    os.makedirs(directory, exist_ok=True)
    # an unreadable (or no) committed structure: the commit below cleans up instead
    with contextlib.suppress(OSError, CheckpointError):
        _remove_leftovers(directory, _committed_arrays_dir(directory))
    name = None
    if arrays:
        name = f"arrays-{secrets.token_hex(8)}"
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(
                os.path.join(directory, name),
                {str(i): a for i, a in enumerate(arrays)},
            )
            checkpointer.wait_until_finished()
        _fsync_tree(os.path.join(directory, name))
    _write_atomically(
        os.path.join(directory, _STRUCTURE_FILE),
        _pack([_VERSION, name, len(arrays), structure]),
    )
    _remove_leftovers(directory, name)


def _remove_leftovers(directory: str, keep: str | None) -> None:
    """Remove the arrays subdirectories in ``directory`` other than ``keep``: the
    previous save's, and what interrupted saves (and orbax's temp dirs) left."""
    for entry in os.listdir(directory):
        if entry == keep or not (
            entry == _LEGACY_ARRAYS_DIR or entry.startswith("arrays-")
        ):
            continue
        full = os.path.join(directory, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(full)


def _committed_arrays_dir(directory: str) -> str | None:
    """The arrays subdirectory the structure in ``directory`` names (None: none)."""
    version, payload = _read_envelope(os.path.join(directory, _STRUCTURE_FILE))
    return _Layout(payload, version, directory).arrays_dir


class _Layout:
    """The top of an orbax structure file: version 1 ``[1, structure, count]``
    (arrays in ``arrays/``), version 2 ``[2, arrays_dir, count, structure]``.

    Args:
      payload: the structure file's payload.
      version: its format version.
      directory: the checkpoint directory.
    """

    def __init__(self, payload: memoryview, version: int, directory: str) -> None:
        self.decoder = _Decoder(payload, version)
        reader = self.decoder.reader
        if (
            reader.expect("array", "the structure") != (3 if version == 1 else 4)
            or reader.scalar((int,), "the version") != version
        ):
            raise CheckpointError("the structure's layout does not match its version")
        self.arrays_dir: str | None = _LEGACY_ARRAYS_DIR
        if version >= 2:
            self.arrays_dir = reader.scalar((str, type(None)), "the arrays directory")
            if self.arrays_dir is not None and not _ARRAYS_DIR.fullmatch(
                self.arrays_dir
            ):
                raise CheckpointError(
                    f"the arrays directory {_show(self.arrays_dir)} is not one "
                    "save() writes"
                )
        self.directory = directory
        self.loaded: dict[int, Any] = {}

    def tree(self) -> Any:
        """The saved tree, its arrays read at the first reference to one."""
        reader = self.decoder.reader
        self.decoder.arrays = self.arrays
        if self.decoder.version >= 2:
            count = reader.scalar((int,), "the array count")
            tree = self.decoder.value("", 0)
        else:
            tree = self.decoder.value("", 0)
            count = reader.scalar((int,), "the array count")
        reader.finish("the structure")
        if self.loaded and len(self.loaded) != count:
            raise CheckpointError(
                f"{self.arrays_dir} holds {len(self.loaded)} arrays, the structure "
                f"{count}"
            )
        return tree

    def arrays(self) -> dict[int, Any]:
        if not self.loaded:
            if self.arrays_dir is None:
                raise CheckpointError("an array reference, but no arrays directory")
            self.loaded = _load_arrays(os.path.join(self.directory, self.arrays_dir))
        return self.loaded


def _load_arrays(arrays_dir: str) -> dict[int, Any]:
    """The arrays orbax stored in ``arrays_dir``, by index, once their declared
    shapes and dtypes are checked against what the directory can hold."""
    import orbax.checkpoint as ocp

    on_disk = _bytes_on_disk(arrays_dir)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            declared = _declared_arrays(checkpointer.metadata(arrays_dir))
            size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in declared)
            if size > _ZSTD_MAX_RATIO * on_disk:
                raise CheckpointError(
                    f"{os.path.basename(arrays_dir)} declares arrays of {size} bytes, "
                    f"more than its {on_disk} bytes on disk can hold"
                )
            stored = checkpointer.restore(arrays_dir)
    except CheckpointError:
        raise
    except Exception as e:  # whatever orbax and tensorstore make of a bad directory
        raise CheckpointError(
            f"the arrays in {os.path.basename(arrays_dir)} could not be read: {e}"
        ) from e
    if not isinstance(stored, dict) or set(stored) != {
        str(i) for i in range(len(declared))
    }:
        raise CheckpointError(f"{arrays_dir} does not hold the arrays it declares")
    for i, (shape, dtype) in enumerate(declared):
        # the dtype may differ: float64 comes back as float32 where JAX runs without x64
        value = stored[str(i)]
        if getattr(value, "shape", None) != shape:
            raise CheckpointError(f"array {i} is not the {dtype}{list(shape)} declared")
        _numeric_dtype(getattr(value.dtype, "name", None), f"array {i}")
    return {i: stored[str(i)] for i in range(len(declared))}


def _declared_arrays(metadata: Any) -> list[tuple[tuple[int, ...], np.dtype]]:
    """The (shape, dtype) of each array orbax's metadata declares, in index order."""
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, dict) or set(tree) != {str(i) for i in range(len(tree))}:
        raise CheckpointError(f"the arrays metadata is not indexed: {_show(tree)}")
    declared = []
    for i in range(len(tree)):
        what = f"array {i}"
        shape = getattr(tree[str(i)], "shape", None)
        dtype = getattr(getattr(tree[str(i)], "dtype", None), "name", None)
        declared.append(
            (
                _check_shape(tuple(shape) if isinstance(shape, list) else shape, what),
                _numeric_dtype(dtype, what),
            )
        )
    return declared


def _bytes_on_disk(arrays_dir: str) -> int:
    """The size of the files under ``arrays_dir``, which holds no symlinks (its
    arrays are its own files, not files elsewhere)."""
    if not os.path.isdir(arrays_dir) or os.path.islink(arrays_dir):
        raise CheckpointError(f"its arrays directory {arrays_dir} is missing")
    total = 0
    for root, dirs, files in os.walk(arrays_dir):
        for name in dirs + files:
            info = os.lstat(os.path.join(root, name))
            if stat.S_ISLNK(info.st_mode):
                raise CheckpointError(f"{os.path.join(root, name)} is a symlink")
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


# --- public API --------------------------------------------------------------------


def save(path: str | os.PathLike, tree: Any, *, format: str = "msgpack") -> None:
    """Write ``tree`` to ``path`` so that :func:`restore` returns it exactly.

    The save is atomic: interrupted at any moment (a crash, ``SIGKILL``, a full
    disk), ``path`` holds the previous checkpoint or this one, never neither and
    never a mix; the temp files an interrupted save leaves are removed by the next
    save to the same ``path``. A file keeps its mode (a new one gets ``0o666`` less
    the umask), and a symlink's target is written.

    Args:
      path: a file (``format="msgpack"``) or a directory (``format="orbax"``) to
        create or overwrite.
      tree: a functional optimizer state, ``(params, state)``, a facade
        ``state_dict()``, or any pytree of arrays and Python scalars. Dicts (any
        hashable scalar keys), lists, tuples, ``None``, numbers and strings are
        recorded as themselves; other pytree nodes as their leaves. At most 100
        containers deep.
      format: ``"msgpack"`` (``flax.serialization``) or ``"orbax"``.

    Example:
      >>> fo.checkpoint.save("step_100.ckpt", {"params": params, "state": state})
    """
    path = os.fspath(path)
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if format == "msgpack":
        _write_atomically(path, _pack([_VERSION, _encode(tree, None, "")]))
    else:
        _save_directory(path, tree)


def restore(path: str | os.PathLike, like: Any = None) -> Any:
    """Read a checkpoint written by :func:`save` (either format, detected).

    A checkpoint is data: nothing it names is imported or resolved (a state class is
    looked up in this library's registry of them), and every size it declares is
    checked against the file before anything is allocated.

    Args:
      path: the file or directory given to :func:`save`.
      like: optional tree of the expected structure (arrays or
        ``jax.ShapeDtypeStruct``): every array must have its shape and dtype, and is
        placed with its sharding; pytree nodes other than dicts, lists and tuples
        (``nnx.State``, optax states) are rebuilt from it.

    Returns:
      The saved tree, with the same containers, key types, Python scalars, dtypes
      and array kinds.

    Raises:
      FileNotFoundError: nothing at ``path``.
      CheckpointError: (a ``ValueError``) the file is not a checkpoint, is
        truncated, corrupted or malformed (an unknown state class, a non-numeric
        dtype, a size larger than the file, nesting deeper than 100), or does not
        match ``like``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    tree = _restore_directory(path) if os.path.isdir(path) else _restore_file(path)
    return _no_nodes(tree, "") if like is None else _fit(tree, like, "")


def _restore_file(path: str) -> Any:
    version, payload = _read_envelope(path)
    decoder = _Decoder(payload, version)
    try:
        reader = decoder.reader
        if (
            reader.expect("array", "the payload") != 2
            or reader.scalar((int,), "the version") != version
        ):
            raise CheckpointError("the payload's layout does not match its version")
        tree = decoder.value("", 0)
        reader.finish("the payload")
    except CheckpointError as e:
        raise CheckpointError(f"{path} could not be decoded: {e}") from None
    return tree


def _restore_directory(path: str) -> Any:
    structure_path = os.path.join(path, _STRUCTURE_FILE)
    if not os.path.exists(structure_path):
        raise CheckpointError(
            f"{path} is not a complete functorch_optim checkpoint: "
            f"{_STRUCTURE_FILE} is missing"
        )
    version, payload = _read_envelope(structure_path)
    try:
        return _Layout(payload, version, os.path.realpath(path)).tree()
    except CheckpointError as e:
        raise CheckpointError(f"{path} could not be decoded: {e}") from None


def model_state_dict(optimizer: Any, tied: Any = None) -> dict[str, Any]:
    """A facade's params as torch's ``model.state_dict()`` holds them:
    ``{param_name: array}``, in the optimizer's order.

    The names are the groups' ``param_names`` (a facade built from a dict or
    ``(name, array)`` pairs has them, such as the names of
    ``model.named_parameters()``).

    Args:
      optimizer: a facade optimizer.
      tied: tied weights to write under each of their names, as torch's
        ``model.state_dict()`` does (nanoGPT's ``lm_head.weight``, the array of
        ``transformer.wte.weight``): the torch module, or ``{alias: name}``
        (:func:`functorch_optim.interop.tied_names`).

    Raises:
      ValueError: a param group has no ``param_names`` (params given as a list).

    Example:
      >>> fo.checkpoint.model_state_dict(opt)["w"].shape
      (3, 2)
    """
    from . import interop

    model: dict[str, Any] = {}
    for g, group in enumerate(optimizer.param_groups):
        names = group.get("param_names")
        if names is None:
            raise ValueError(
                f"param group {g} has no param_names: build the optimizer from a "
                "dict or (name, array) pairs to name the params in torch's file"
            )
        model.update(zip(names, group["params"], strict=True))
    if tied is None:
        return model
    if hasattr(tied, "named_parameters"):
        tied = interop.tied_names(tied)
    return interop.with_tied(model, tied)


def _as_torch_objects(value: Any) -> Any:
    """``value`` with every object that has a ``state_dict()`` (a facade optimizer,
    a scheduler, an ``AveragedModel``) replaced by it, inside dicts, lists and
    tuples; arrays become tensors afterwards."""
    if callable(getattr(value, "state_dict", None)):
        return value.state_dict()
    if isinstance(value, dict):
        return type(value)((k, _as_torch_objects(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_as_torch_objects(v) for v in value)
    return value


def save_torch(path: str | os.PathLike, contents: Any, scheduler: Any = None) -> None:
    """Write a facade run as a file ``torch.load`` reads (``weights_only``), for
    torch's model, optimizer and scheduler to load and continue.

    Two forms:

    * ``save_torch(path, {"model": ..., "optimizer": opt, "lr_scheduler": sched,
      "iter_num": 1000, "config": {...}})``: any dict layout the recipe's torch
      code reads. Every object with a ``state_dict()`` (a facade optimizer, a
      scheduler, an ``AveragedModel``) is written as its ``state_dict()``, every
      array as a tensor, the rest (numbers, strings, dicts of config) as it is.
      :func:`model_state_dict` gives a facade's params under their torch names.
    * ``save_torch(path, opt, sched=None)``: the layout ``{"model":
      model_state_dict(opt), "optimizer": opt.state_dict(), "scheduler":
      sched.state_dict()}`` (no ``"scheduler"`` without one).

    Example::

        >>> fo.checkpoint.save_torch("ckpt.pt", {
        ...     "model": fo.checkpoint.model_state_dict(opt), "optimizer": opt,
        ...     "lr_scheduler": sched, "iter_num": 1000})
        >>> saved = torch.load("ckpt.pt")
        >>> model.load_state_dict(saved["model"])  # strict=False to keep buffers
        <All keys matched successfully>
        >>> torch_opt.load_state_dict(saved["optimizer"])
        >>> torch_sched.load_state_dict(saved["lr_scheduler"])

    Raises:
      ValueError: the second form, with a param group without ``param_names``.
      TypeError: a scheduler with the dict form (put it in the dict).
    """
    import torch

    from . import interop

    if isinstance(contents, dict):
        if scheduler is not None:
            raise TypeError(
                "save_torch(path, {...}) writes the dict as it is: put the "
                "scheduler in it (e.g. 'lr_scheduler': sched)"
            )
        tree = contents
    else:
        tree = {"model": model_state_dict(contents), "optimizer": contents}
        if scheduler is not None:
            tree["scheduler"] = scheduler
    torch.save(interop.to_torch(_as_torch_objects(tree)), os.fspath(path))

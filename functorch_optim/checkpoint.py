"""Save and restore optimizer state exactly: functional states and facade state dicts.

Two on-disk formats, one encoding of the structure:

* ``format="msgpack"`` (default): one file; arrays are packed with
  ``flax.serialization``'s msgpack codec (dtype, shape, bytes; arrays over 1 GiB are
  chunked), inside a small envelope (magic, payload length, SHA-256) so a missing,
  truncated or foreign file is reported as such instead of decoded into garbage.
* ``format="orbax"``: a directory; the arrays go through orbax's
  ``StandardCheckpointer`` (tensorstore, atomic commit, sharded arrays) and the
  structure into ``structure.fockpt``, an envelope of the same kind.

The structure is recorded exactly, which neither backend does alone: dict keys keep
their type (a facade ``state_dict()`` is keyed by ``int``), tuples stay tuples
(``betas``), lists stay lists, ``None``, ``bool``, ``int``, ``float`` (``nan`` and
``inf`` included), ``str`` and ``complex`` come back as themselves, and arrays come
back with their dtype (``bfloat16`` and ``complex64`` included), shape and kind
(JAX array or NumPy array), and this library's own NamedTuple states
(``fo.AdamState``, ...) as themselves. Other pytree nodes (flax ``nnx.State``,
optax's namedtuple states, dataclasses) are stored as their leaves and need
``like=`` to be rebuilt, as with orbax.

Example::

    >>> fo.checkpoint.save("opt.ckpt", opt.state_dict())          # facade
    >>> opt.load_state_dict(fo.checkpoint.restore("opt.ckpt"))
    >>> fo.checkpoint.save("run.ckpt", {"params": params, "opt_state": state})
    >>> restored = fo.checkpoint.restore("run.ckpt", like={"params": params,
    ...                                                    "opt_state": state})
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "restore", "save", "save_torch"]

_MAGIC = b"FUNCTORCH_OPTIM\x00"
_VERSION = 1
# magic, format version, payload length; the SHA-256 of the payload follows it.
_HEADER = struct.Struct("<16sIQ")
_DIGEST = 32
_STRUCTURE_FILE = "structure.fockpt"
_ARRAYS_DIR = "arrays"
_FORMATS = ("msgpack", "orbax")


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be read: foreign, truncated or corrupted,
    or that does not match the ``like`` tree it is restored into."""


# --- the exact structure encoding ------------------------------------------------
#
# Every container becomes a list ``[tag, ...]``; scalars stay msgpack scalars, so a
# tagged list is never ambiguous with user data.


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _encode(x: Any, arrays: list | None, path: str) -> Any:
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
    if type(x) is dict:
        return [
            "dict",
            [
                [_encode(k, None, path), _encode(v, arrays, f"{path}[{k!r}]")]
                for k, v in x.items()
            ],
        ]
    if type(x) in (list, tuple):
        return [
            type(x).__name__,
            [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(x)],
        ]
    if _is_own_state(x):
        return [
            "namedtuple",
            type(x).__module__,
            type(x).__qualname__,
            [_encode(v, arrays, f"{path}.{f}") for f, v in zip(x._fields, x)],
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
        [_encode(v, arrays, f"{path}<leaf {i}>") for i, v in enumerate(leaves)],
    ]


def _is_own_state(x: Any) -> bool:
    """A NamedTuple of this library (``fo.AdamState``, ...): recorded by its class
    name and rebuilt without ``like``."""
    cls = type(x)
    return (
        isinstance(x, tuple)
        and hasattr(cls, "_fields")
        and cls.__module__.split(".")[0] == __name__.split(".")[0]
        and "<" not in cls.__qualname__
    )


def _own_state_class(module: str, qualname: str) -> Any:
    """The class :func:`_is_own_state` recorded; only this library's modules are
    imported (a checkpoint names no code elsewhere to run)."""
    import importlib

    if module.split(".")[0] != __name__.split(".")[0]:
        raise CheckpointError(f"the checkpoint names a state class of {module!r}")
    try:
        cls: Any = importlib.import_module(module)
        for name in qualname.split("."):
            cls = getattr(cls, name)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(
            f"the checkpoint's state class {module}.{qualname} does not exist in "
            "this functorch_optim"
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, tuple)):
        raise CheckpointError(f"{module}.{qualname} is not a state class")
    return cls


class _Node:
    """A pytree node of a type this module does not rebuild without ``like``."""

    def __init__(self, typename: str, leaves: list) -> None:
        self.typename, self.leaves = typename, leaves


def _decode(x: Any, arrays: dict | None) -> Any:
    if not isinstance(x, list):
        return x
    tag = x[0]
    if tag == "bigint":
        return int(x[1])
    if tag == "complex":
        return complex(x[1], x[2])
    if tag in ("array", "ref"):
        if tag == "array":
            value = x[2]
        else:  # save() writes a "ref" only with the arrays it refers to
            if arrays is None or x[2] not in arrays:
                raise CheckpointError(f"a reference to a missing array {x[2]!r}")
            value = arrays[x[2]]
        if x[1] == "jax":
            return jax.numpy.asarray(value)
        value = np.asarray(value)
        return value[()] if x[1] == "numpy-scalar" else value
    if tag == "dict":
        return {_decode(k, None): _decode(v, arrays) for k, v in x[1]}
    if tag == "list":
        return [_decode(v, arrays) for v in x[1]]
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in x[1])
    if tag == "node":
        return _Node(x[1], [_decode(v, arrays) for v in x[2]])
    if tag == "namedtuple":
        cls = _own_state_class(x[1], x[2])
        fields = [_decode(v, arrays) for v in x[3]]
        if len(fields) != len(cls._fields):
            raise CheckpointError(
                f"the checkpoint's {x[2]} has {len(fields)} fields, this "
                f"functorch_optim's {len(cls._fields)}"
            )
        return cls(*fields)
    raise CheckpointError(f"unknown entry {tag!r} in the checkpoint")


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
        if sharding is not None:  # place it as `like` is placed (devices, mesh)
            return jax.device_put(value, sharding)
        return value
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


# --- the envelope ----------------------------------------------------------------


def _write_atomically(path: str, payload: bytes) -> None:
    # Written next to the target and renamed, so a crash never leaves half a file.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fockpt-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER.pack(_MAGIC, _VERSION, len(payload)))
            f.write(hashlib.sha256(payload).digest())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_envelope(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER.size or not data.startswith(_MAGIC):
        raise CheckpointError(f"{path} is not a functorch_optim checkpoint")
    _, version, length = _HEADER.unpack_from(data)
    if version != _VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this functorch_optim "
            f"reads version {_VERSION}"
        )
    payload = data[_HEADER.size + _DIGEST :]
    if len(payload) != length:
        raise CheckpointError(
            f"{path} is truncated: {len(payload)} of {length} payload bytes"
            if len(payload) < length
            else f"{path} has {len(payload) - length} bytes of trailing data"
        )
    if hashlib.sha256(payload).digest() != data[_HEADER.size : _HEADER.size + _DIGEST]:
        raise CheckpointError(f"{path} is corrupted: its checksum does not match")
    return payload


def _pack(encoded: Any) -> bytes:
    from flax import serialization

    return serialization.msgpack_serialize(encoded, in_place=True)


def _unpack(payload: bytes, path: str) -> Any:
    from flax import serialization

    try:
        return serialization.msgpack_restore(payload)
    except Exception as e:  # a checksummed payload this version cannot read
        raise CheckpointError(f"{path} could not be decoded: {e}") from e


# --- public API --------------------------------------------------------------------


def save(path: str | os.PathLike, tree: Any, *, format: str = "msgpack") -> None:
    """Write ``tree`` to ``path`` so that :func:`restore` returns it exactly.

    Args:
      path: a file (``format="msgpack"``) or a directory (``format="orbax"``) to
        create or overwrite. The msgpack file is written atomically; orbax commits
        its directory atomically.
      tree: a functional optimizer state, ``(params, state)``, a facade
        ``state_dict()``, or any pytree of arrays and Python scalars. Dicts (any
        hashable scalar keys), lists, tuples, ``None``, numbers and strings are
        recorded as themselves; other pytree nodes as their leaves.
      format: ``"msgpack"`` (``flax.serialization``) or ``"orbax"``.

    Example:
      >>> fo.checkpoint.save("step_100.ckpt", {"params": params, "state": state})
    """
    path = os.fspath(path)
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if format == "msgpack":
        _write_atomically(path, _pack([_VERSION, _encode(tree, None, "")]))
        return
    import orbax.checkpoint as ocp

    arrays: list = []
    structure = _encode(tree, arrays, "")
    os.makedirs(path, exist_ok=True)
    target = os.path.join(os.path.abspath(path), _ARRAYS_DIR)
    if arrays:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(
                target, {str(i): a for i, a in enumerate(arrays)}, force=True
            )
            checkpointer.wait_until_finished()
    # The structure is written last: its presence marks a complete checkpoint.
    _write_atomically(
        os.path.join(path, _STRUCTURE_FILE),
        _pack([_VERSION, structure, len(arrays)]),
    )


def restore(path: str | os.PathLike, like: Any = None) -> Any:
    """Read a checkpoint written by :func:`save` (either format, detected).

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
        truncated or corrupted, or does not match ``like``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    arrays = None
    if os.path.isdir(path):
        structure_path = os.path.join(path, _STRUCTURE_FILE)
        if not os.path.exists(structure_path):
            raise CheckpointError(
                f"{path} is not a complete functorch_optim checkpoint: "
                f"{_STRUCTURE_FILE} is missing"
            )
        _, structure, count = _unpack(_read_envelope(structure_path), structure_path)
        if count:
            import orbax.checkpoint as ocp

            try:
                with ocp.StandardCheckpointer() as checkpointer:
                    # orbax takes absolute paths only, as in save()
                    stored = checkpointer.restore(
                        os.path.join(os.path.abspath(path), _ARRAYS_DIR)
                    )
            except Exception as e:
                raise CheckpointError(
                    f"the arrays of {path} could not be read: {e}"
                ) from e
            arrays = {int(k): v for k, v in stored.items()}
            if sorted(arrays) != list(range(count)):
                raise CheckpointError(
                    f"{path} holds {len(arrays)} arrays, its structure {count}"
                )
    else:
        decoded = _unpack(_read_envelope(path), path)
        if not isinstance(decoded, list) or len(decoded) != 2:
            raise CheckpointError(f"{path} could not be decoded: unexpected layout")
        _, structure = decoded
    try:
        tree = _decode(structure, arrays)
    except (CheckpointError, KeyError, IndexError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} could not be decoded: {e}") from e
    return _no_nodes(tree, "") if like is None else _fit(tree, like, "")


def save_torch(path: str | os.PathLike, optimizer: Any, scheduler: Any = None) -> None:
    """Write a facade run as a file ``torch.load`` reads (``weights_only``), for
    torch's model, optimizer and scheduler to load and continue.

    The file holds ``{"model": {name: tensor}, "optimizer": <torch's
    Optimizer.state_dict() format>, "scheduler": <its state_dict()>}`` (no
    ``"scheduler"`` without one): the params under their ``param_names`` (a
    facade built from a dict or ``(name, array)`` pairs has them, such as the
    names of ``model.named_parameters()``), every array as a tensor.

    Example::

        >>> fo.checkpoint.save_torch("run.pt", opt, sched)
        >>> saved = torch.load("run.pt")
        >>> model.load_state_dict(saved["model"])  # strict=False to keep buffers
        <All keys matched successfully>
        >>> torch_opt.load_state_dict(saved["optimizer"])
        >>> torch_sched.load_state_dict(saved["scheduler"])

    Raises:
      ValueError: a param group has no ``param_names`` (params given as a list).
    """
    import torch

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
    tree = {"model": model, "optimizer": optimizer.state_dict()}
    if scheduler is not None:
        tree["scheduler"] = scheduler.state_dict()
    torch.save(interop.to_torch(tree), os.fspath(path))

"""Orbax directories: the arrays through orbax in a subdirectory of their own per
save, committed by the rename of the structure file naming it."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import stat
from typing import Any

import numpy as np

from .constants import (
    _ARRAYS_DIR,
    _LEGACY_ARRAYS_DIR,
    _STRUCTURE_FILE,
    _VERSION,
    _ZSTD_MAX_RATIO,
    CheckpointError,
)
from .decoding import _check_shape, _Decoder, _numeric_dtype
from .encoding import _encode
from .files import _fsync_tree, _pack, _read_envelope, _write_atomically
from .msgpack_reader import _show


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

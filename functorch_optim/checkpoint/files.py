"""The envelope (magic, version, length, SHA-256) and atomic writes: temp file,
fsync, rename, fsync of the directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from typing import Any

from .constants import (
    _DIGEST,
    _HEADER,
    _MAGIC,
    _READABLE_VERSIONS,
    _TEMP_INFIX,
    _VERSION,
    CheckpointError,
)


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

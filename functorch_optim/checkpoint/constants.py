"""The checkpoint format's constants (magic, versions, file names, limits, the
dtypes an array may have) and :class:`CheckpointError`."""

from __future__ import annotations

import re
import struct

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

"""A bounded reader of untrusted msgpack: the grammar ``save()`` writes, item by
item, every declared length checked against the bytes left."""

from __future__ import annotations

import struct
from typing import Any

from .constants import CheckpointError

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

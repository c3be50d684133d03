"""The exact structure encoding that ``save()`` writes."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .constants import _MAX_DEPTH
from .registry import _is_own_state

# Every container becomes a list ``[tag, ...]``; scalars stay msgpack scalars, so a
# tagged list is never ambiguous with user data.


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _encode(x: Any, arrays: list | None, path: str, depth: int = 0) -> Any:
    """``x`` as msgpack-ready lists and scalars (see the package docstring).

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

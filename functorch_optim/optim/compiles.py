"""Counting the XLA compilations the facade causes, from JAX's own events.

:func:`compile_count` is the number of XLA programs compiled (JAX's
``/jax/core/compile/backend_compile_duration`` events) while a thread ran a public
method of a facade optimizer, its constructor, or a ``swa_utils`` call: the step
programs and everything else they compile (a state's fill, a copy for
``state_dict``). Counting traces instead under-reported: a step whose trace was
cached still compiled again when its arguments' placement changed (issue 26: every
new optimizer compiled its step twice while the count said once). The count is
per process and JAX's events are global, so only compiles in a counted call of the
same thread are taken.

Also the means to keep a step's arguments alike from step to step
(:func:`committed`): jit's cache keys on whether each argument is committed to its
device, so every array a compiled step receives is committed.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

from ..core import is_concrete

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class _Depth(threading.local):
    """How many counted calls this thread is inside."""

    depth = 0


_local = _Depth()
_count_lock = threading.Lock()
_compiles = 0


def _on_event(event: str, duration_secs: float, **kwargs: str | int) -> None:
    global _compiles
    if event == BACKEND_COMPILE and _local.depth:
        with _count_lock:
            _compiles += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def compile_count() -> int:
    """How many XLA programs the facade optimizers, their state dicts and
    ``swa_utils`` have compiled in this process (see the module docstring)."""
    return _compiles


@contextlib.contextmanager
def counting() -> Iterator[None]:
    """Count the compiles this thread makes until the block ends."""
    _local.depth += 1
    try:
        yield
    finally:
        _local.depth -= 1


def counted(function: Callable) -> Callable:
    """``function`` with the compiles it makes counted."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with counting():
            return function(*args, **kwargs)

    return run


def committed(arrays: Sequence[Any]) -> list:
    """``arrays`` with each JAX array that is not committed to a device committed
    to the one it is on (the same buffer, no copy).

    An uncommitted argument (``jnp.ones(3)``, a parameter made before any step) and
    a committed one (a compiled step's output) key separate compiled programs; a
    step that got the one and then the other compiled twice (issue 26: 2 min 50 s
    each for 10,000 leaves).
    """
    loose = [
        i
        for i, a in enumerate(arrays)
        if isinstance(a, jax.Array) and is_concrete(a) and not a.committed
    ]
    if not loose:
        return list(arrays)
    put = jax.device_put(
        [arrays[i] for i in loose], [arrays[i].sharding for i in loose]
    )
    out = list(arrays)
    for i, array in zip(loose, put, strict=True):
        out[i] = array
    return out

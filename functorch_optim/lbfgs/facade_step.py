"""The facade's compiled L-BFGS step, shared by every optimizer in the process.

A step is compiled per closure *code* (not per closure object): a closure defined
anew for each step or for each optimizer (``lambda p: loss_fn(p, x, y)``) reuses one
compiled step, the arrays it captures (``x``, ``y``) passed in as arguments. The
numbers, strings and functions it captures are part of the key (a new value compiles
once). A closure capturing any other object (a model, a list) is keyed by the
closure object itself, since that object's contents may change between steps. jit
keys each compiled step further on the shapes and dtypes of its arguments;
:func:`compile_count` shows what compiled.
"""

from __future__ import annotations

import types
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

from ..rule import Options
from .iteration import step_flat

# Values a closure may capture by value in the compiled step's key: they cannot
# change behind the key's back (a function's code is fixed once it exists).
_IMMUTABLE = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.ModuleType,
    type,
)
_ARRAY = "<captured array>"


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def closure_key(closure: Callable) -> tuple[Any, list]:
    """The compiled-step key of ``closure`` and the arrays it captures.

    For a plain function whose captured variables (closure cells and defaults) are
    all arrays or immutable values, the key is its code with the immutable values,
    and the arrays are returned to be passed in: a closure redefined every step over
    new data reuses one compiled step (jit retraces by itself if their shapes
    change). Otherwise the key is the closure itself.
    """
    # keyword-only defaults are not rebuilt by _builder: such a closure keeps its own
    if not isinstance(closure, types.FunctionType) or closure.__kwdefaults__:
        return closure, []
    try:
        captured = [cell.cell_contents for cell in closure.__closure__ or ()]
    except ValueError:  # a variable not bound yet
        return closure, []
    captured += list(closure.__defaults__ or ())
    static: list[Any] = []
    for value in captured:
        if _is_array(value):
            static.append(_ARRAY)
        elif isinstance(value, _IMMUTABLE):
            static.append((type(value), value))
        else:
            return closure, []
    arrays = [v for v in captured if _is_array(v)]
    return (closure.__code__, tuple(static)), arrays


def _builder(closure: Callable, key: Any) -> Callable[[list], Callable]:
    """``arrays -> closure`` over ``arrays`` (traced) in place of those it captured.

    Keeps only what ``key`` says of ``closure`` (its code and immutable values) and
    its globals, not ``closure`` itself: a shared step must not keep the arrays of
    the closure that first compiled it alive.
    """
    if key is closure:
        return lambda arrays: closure
    code, static = key
    globals_, name = closure.__globals__, closure.__name__
    n_cells = len(closure.__closure__ or ())

    def build(arrays: list) -> Callable:
        supply = iter(arrays)
        values = [next(supply) if s is _ARRAY else s[1] for s in static]
        cells = tuple(types.CellType(v) for v in values[:n_cells])
        defaults = tuple(values[n_cells:]) or None
        return types.FunctionType(code, globals_, name, defaults, cells or None)

    return build


# Compiled steps kept for the process, least recently used first. A step keyed by its
# closure object keeps that closure (and what it captures) alive until displaced.
_STEPS_KEPT = 64
_steps: OrderedDict = OrderedDict()
_compiles = 0


def compile_count() -> int:
    """How many times an L-BFGS facade step has been traced (= compiled).

    For tests and debugging (``from functorch_optim.lbfgs import compile_count``).
    The compiled steps are shared by every optimizer in the process, so the count
    is too: its change across some steps is what those steps compiled.
    """
    return _compiles


def compiled_step(
    closure: Callable,
    as_given: Hashable,
    line_search_fn: str | None,
    history_size: int,
) -> tuple[Any, Callable, list]:
    """The shared compiled step for ``closure``: ``(key, step, captured arrays)``.

    ``step(leaves, state, values, captured)`` runs one torch ``step()`` with
    ``closure(as_given([leaves]))`` as the objective and the traced ``values`` of
    :func:`~functorch_optim.lbfgs.transform.traced_values`. ``as_given`` builds the
    params the closure takes from the one group's leaves (the facade's
    :meth:`~functorch_optim.optim.Optimizer.closure_params`); it is part of the
    key, so it must compare equal exactly when it builds the same structure.
    """
    closure_id, captured = closure_key(closure)
    key = (closure_id, as_given, line_search_fn, history_size)
    if key in _steps:
        _steps.move_to_end(key)
        return key, _steps[key], captured
    build = _builder(closure, closure_id)

    def run(leaves, state, values, captured):
        global _compiles
        _compiles += 1  # runs once per trace
        options = Options(
            values, line_search_fn=line_search_fn, history_size=history_size
        )
        loss = build(captured)
        return step_flat(
            lambda leaves: loss(as_given([leaves])), leaves, state, options
        )

    # the state is donated (only the optimizer holds it; ``state`` and
    # ``state_dict`` hand out copies), never the params: a user may hold them
    _steps[key] = jax.jit(run, donate_argnums=1)
    if len(_steps) > _STEPS_KEPT:
        _steps.popitem(last=False)
    return key, _steps[key], captured

"""Run an algorithm's rule over a whole pytree.

Named for what it does: it runs a per-leaf rule; it is not a fused kernel (torch's
``fused=`` flag is accepted and checked in :mod:`functorch_optim.rule`). Packing many
leaves into flat buffers is :mod:`functorch_optim.packing`, built on this module.

Two state layouts run the same rule (``Algorithm.scalars`` once per step, then
``Algorithm.step`` per leaf, given the step's scalars):

* the functional state, ``Algorithm.state_type``: one ``count`` for the whole tree,
  each array entry a tree shaped like the params, each scalar entry once. The
  step's scalar part is traced once per step, so a tree of thousands of leaves
  compiles one set of bias corrections, not one per leaf.
* the per-leaf state torch keeps (the facade's): a dict per leaf with its own
  ``step`` count, the scalar entries and the array entries, so a leaf without a
  gradient does not step.

Every path that steps parameters goes through :func:`step_scalars` and
:func:`run_rule`, so the numerics are defined in one place. Both layouts' entries
are derived from ``Algorithm.state_type`` (:func:`array_names`,
``Algorithm.scalar_names``); the runner checks, as it traces them, that what a
rule's ``init``, ``init_scalars``, ``scalars`` and ``step`` return has exactly
those entries (:func:`_checked`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .checks import (
    check_grads,
    check_param_dtypes,
    flatten_params,
    holds_state,
    is_none,
    leaf_names,
)
from .core import is_bcoo, is_concrete, scalar_dtype, updates_between
from .doubled import Doubled
from .kernels import Increment, cast, opmath_dtype, to_complex, to_real
from .rule import Algorithm, Options
from .sharding import (
    explicit_as_auto,
    place,
    place_like,
    place_state,
    sharded_apart,
)

STEP = "step"


def evaluate_schedules(options: Options, count: Any) -> Options:
    """Replace every schedule (a callable option, also inside a tuple such as
    ``betas``) by its value at ``count``."""

    def evaluate(value):
        # fo's schedules give their value to double accuracy with x64 off (a
        # doubled.Float pair), so the step's scalars computed from it stay so
        if hasattr(value, "exact_value"):
            return value.exact_value(count)
        if callable(value):
            return value(count)
        if isinstance(value, tuple):
            return tuple(evaluate(v) for v in value)
        return value

    return Options({k: evaluate(v) for k, v in options.items()})


def step_scalars(
    algorithm: Algorithm, count: Any, scalar_state: dict, options: Options
) -> tuple[Options, Any, dict]:
    """The scalar part of a step from ``count`` steps taken: the options the
    per-leaf part reads (schedules evaluated at ``count``), the step's scalars
    (``Algorithm.scalars``' NamedTuple, or None) and the new scalar state."""
    options = evaluate_schedules(options, count)
    scalars, new_scalars = algorithm.scalars(count + 1, scalar_state, options)
    _checked(
        algorithm, "scalars' new scalar state", new_scalars, algorithm.scalar_names
    )
    new_scalars = {k: _cast_like(v, scalar_state[k]) for k, v in new_scalars.items()}
    return options, scalars, new_scalars


def _checked(algorithm: Algorithm, what: str, entries: dict, names: Any) -> dict:
    """``entries`` (what ``what`` returned), checked to have exactly the keys
    ``names`` (the entries the algorithm's state type declares); a TypeError
    naming the algorithm and the keys otherwise. Run as a rule is traced."""
    if entries.keys() != set(names):
        declared = list(names)
        raise TypeError(
            f"{algorithm.name}'s {what} has the entries {list(entries)}, but its "
            f"state type {algorithm.state_type.__name__} declares {declared}: "
            f"missing {[k for k in declared if k not in entries]}, unexpected "
            f"{[k for k in entries if k not in declared]}"
        )
    return entries


def run_rule(
    algorithm: Algorithm,
    param: Any,
    grad: Any,
    state: dict,
    options: Options,
    scalars: Any,
    as_update: bool = False,
) -> tuple[Any, dict]:
    """The per-leaf part of a step on one leaf (its array state entries, the
    options and the step's scalars of :func:`step_scalars`), with torch's complex
    handling and dtype preservation: the new parameter and state,
    or with ``as_update`` the update that :func:`~functorch_optim.apply_updates`
    turns ``param`` into the new parameter with.

    The update is the rule's increment itself where the rule ends in one
    (:class:`~functorch_optim.kernels.Increment`) on ``param`` in its own dtype
    (``apply_updates`` then performs torch's last op), and ``new - param``
    (:func:`~functorch_optim.core.updates_between`) otherwise: for bfloat16 and
    float16, whose increment torch adds in float32 before one rounding, and for
    rules that rewrite the parameter before their last op (decoupled weight
    decay).

    Under tracing the rule runs as a nested ``jax.jit`` (:data:`_traced_rule`),
    whose trace is cached by the leaf's shape, dtype and sharding and the static
    options: a tree of many leaves of few shapes traces and lowers the rule once
    per shape, not once per leaf (``benchmarks/compile_split.py`` shows the
    phases). XLA inlines the calls, so the compiled step is the one the leaves'
    own traces give, bit for bit. Eager calls run the rule directly, op by op.
    """
    if not is_concrete(param):
        values = _values(options)
        static = _StaticOptions.of(options, values)
        if static is not None:
            return _traced_rule(
                algorithm, static, as_update, param, grad, state, values, scalars
            )
    return _rule(algorithm, as_update, param, grad, state, options, scalars)


def _rule(
    algorithm: Algorithm,
    as_update: bool,
    param: Any,
    grad: Any,
    state: dict,
    options: Options,
    scalars: Any,
) -> tuple[Any, dict]:
    as_real = algorithm.complex_as_real and jnp.iscomplexobj(param)
    if as_real:
        run_param, run_grad = to_real(param), to_real(grad)
        run_state = {k: to_real(v) for k, v in state.items()}
    else:
        run_param, run_grad, run_state = param, grad, state

    # The array values (traced hyperparameters, the step's scalars) are passed in,
    # not closed over: explicit_as_auto moves its arguments to auto mesh axes.
    values = _values(options)

    # whether the rule's result is an update, decided while tracing it (a Python
    # fact, so it leaves the rule beside its arrays, which explicit_as_auto shards)
    gives_update = []

    def rule(p, g, s, values, scalars):
        new_p, new_s = algorithm.step(p, g, s, Options({**options, **values}), scalars)
        _checked(algorithm, "step's new state", new_s, array_names(algorithm))
        if isinstance(new_p, Increment):
            if as_update and _is_update(new_p, p):
                gives_update.append(True)
                return new_p.delta, new_s
            new_p = new_p.applied()
        return new_p, new_s

    if not algorithm.elementwise or sharded_apart(run_param, run_state):
        rule = explicit_as_auto(rule, run_param, run_state)
    result, new_state = rule(run_param, run_grad, run_state, values, scalars)
    is_update = bool(gives_update)
    if as_real:
        result = to_complex(result, param)
        new_state = {k: to_complex(v, state.get(k)) for k, v in new_state.items()}
    new_state = {
        k: _cast_like(v, state[k]) if state.get(k) is not None else v
        for k, v in new_state.items()
    }
    # A step that is not elementwise (a scatter, a reshape) may leave the result
    # on other shards than the parameter's; put it back where it was.
    result = place(_cast_like(result, param), param)
    if as_update and not is_update:
        result = updates_between(result, param)
    return result, place_state(new_state, state, param)


def _values(options: Options) -> dict:
    """The options that are traced values: arrays (traced hyperparameters,
    evaluated schedules) and the facade's traced Python floats
    (:class:`~functorch_optim.doubled.Float`, pairs of arrays)."""
    return {k: v for k, v in options.items() if isinstance(v, (jax.Array, Doubled))}


def _is_update(step: Increment, param: Any) -> bool:
    """Whether ``param + step.delta`` rounds as ``param + update`` does in
    ``apply_updates``: the increment is on ``param`` itself, in its dtype."""
    return step.param is param and step.delta.dtype == param.dtype == opmath_dtype(
        param.dtype
    )


class _StaticOptions:
    """The options of a rule that are not arrays, as a static argument of
    :data:`_traced_rule`: equal when the values are equal and of the same types
    (``1`` and ``1.0``, ``0.0`` and ``-0.0`` trace different rules)."""

    def __init__(self, items: tuple, key: tuple) -> None:
        self.items, self._key = items, key

    @classmethod
    def of(cls, options: Options, values: dict) -> _StaticOptions | None:
        """None where an option cannot be part of a jit's key (unhashable)."""
        items = tuple((k, v) for k, v in options.items() if k not in values)
        key = tuple((k, _typed(v)) for k, v in items)
        try:
            hash(key)
        except TypeError:
            return None
        return cls(items, key)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StaticOptions) and self._key == other._key


def _typed(value: Any) -> Any:
    if isinstance(value, float):
        return float, value.hex()
    if isinstance(value, tuple):
        return tuple, tuple(_typed(v) for v in value)
    return type(value), value


def _nested_rule(
    algorithm: Algorithm,
    static: _StaticOptions,
    as_update: bool,
    param: Any,
    grad: Any,
    state: dict,
    values: dict,
    scalars: Any,
) -> tuple[Any, dict]:
    options = Options({**dict(static.items), **values})
    return _rule(algorithm, as_update, param, grad, state, options, scalars)


_traced_rule = jax.jit(_nested_rule, static_argnums=(0, 1, 2))


def _cast_like(x: Any, like: Any) -> Any:
    if x is None:
        return None
    return cast(jnp.asarray(x), jnp.asarray(like).dtype)


def taken_grad(algorithm: Algorithm, grad: Any, options: Options) -> Any:
    """A sparse gradient as the algorithm takes it (see ``Algorithm.sparse_grads``)."""
    if not is_bcoo(grad) or algorithm.sparse_grads == "native":
        return grad
    error = algorithm.sparse_grad_error(options)
    if error is not None:
        raise RuntimeError(error)
    return grad.todense()


# --- torch's per-leaf layout (the facade, the packs) ------------------------------


def init_leaf(algorithm: Algorithm, param: Any, options: Options) -> dict:
    """The state torch creates for one leaf: ``step = 0``, the scalar entries and
    the array entries, placed on the parameter's devices
    (:func:`functorch_optim.sharding.place_like`)."""
    zero = jnp.zeros((), jnp.int32)
    options = evaluate_schedules(options, zero)
    state = {
        **init_scalars(algorithm, options),
        **init_arrays(algorithm, param, options),
    }
    return place_like({STEP: zero, **state}, param)


def init_scalars(algorithm: Algorithm, options: Options) -> dict:
    """The scalar entries ``algorithm.init_scalars`` creates (checked)."""
    scalars = algorithm.init_scalars(options)
    return _checked(algorithm, "init_scalars", scalars, algorithm.scalar_names)


def init_arrays(algorithm: Algorithm, param: Any, options: Options) -> dict:
    """The array entries ``algorithm.init`` creates for ``param`` (checked)."""
    arrays = algorithm.init(param, options)
    return _checked(algorithm, "init", arrays, array_names(algorithm))


def step_leaf(
    algorithm: Algorithm,
    param: Any,
    grad: Any,
    state: dict,
    options: Options,
    scalar_part: tuple[Options, Any, dict] | None = None,
) -> tuple[Any, dict]:
    """One step of one leaf with its own state (``step``, scalar and array
    entries), as torch steps each parameter; ``scalar_part``, where given, is the
    leaf's :func:`step_scalars` (computed with its group's,
    :func:`_group_scalars`)."""
    if scalar_part is None:
        scalar_part = step_scalars(
            algorithm,
            state[STEP],
            {k: state[k] for k in algorithm.scalar_names},
            options,
        )
    step_options, scalars, new_scalars = scalar_part
    arrays = {
        k: v for k, v in state.items() if k != STEP and k not in algorithm.scalar_names
    }
    new_param, new_arrays = run_rule(
        algorithm, param, grad, arrays, step_options, scalars
    )
    new_state = {STEP: state[STEP] + 1, **new_scalars, **new_arrays}
    return new_param, place_like(new_state, param)


def step_leaves(
    algorithm: Algorithm,
    params: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[dict],
    options: Options,
) -> tuple[list[Any], list[dict]]:
    """Step a list of leaves sharing one set of options (one param group), each
    with its own state."""
    grads = [taken_grad(algorithm, g, options) for g in grads]
    parts = _group_scalars(algorithm, states, options)
    results = [
        step_leaf(algorithm, p, g, s, options, None if parts is None else parts[i])
        for i, (p, g, s) in enumerate(zip(params, grads, states, strict=True))
    ]
    return [r[0] for r in results], [r[1] for r in results]


def _group_scalars(
    algorithm: Algorithm, states: Sequence[dict], options: Options
) -> list[tuple[Options, Any, dict]] | None:
    """Each leaf's :func:`step_scalars`, computed together with x64 off (None
    otherwise, or for one leaf): each leaf keeps its own step count and scalar
    state, but the step's scalar program (float32 pairs, a few hundred ops with
    a hyperparameter's powers, :mod:`functorch_optim.doubled`) is traced and
    compiled once for the group, on vectors of the leaves' values
    (``jax.vmap``), not once per leaf."""
    if scalar_dtype() != jnp.float32 or len(states) < 2:
        return None
    counts = jnp.stack([s[STEP] for s in states])
    scalar_states = {
        k: jnp.stack([jnp.asarray(s[k]) for s in states])
        for k in algorithm.scalar_names
    }
    # the options that evaluating schedules leaves as they are (or makes Python
    # values): the same for every leaf, kept out of the vectors
    kept: dict = {}

    def scalar_part(count, scalar_state):
        step_options, scalars, new_scalars = step_scalars(
            algorithm, count, scalar_state, options
        )
        evaluated = {}
        for k, v in step_options.items():
            if isinstance(v, (jax.Array, Doubled)) and v is not options.get(k):
                evaluated[k] = v
            else:
                kept[k] = v
        return evaluated, scalars, new_scalars

    vectors = jax.vmap(scalar_part)(counts, scalar_states)
    parts = [jax.tree.map(operator.itemgetter(i), vectors) for i in range(len(states))]
    return [
        (Options({**kept, **evaluated}), scalars, new_scalars)
        for evaluated, scalars, new_scalars in parts
    ]


# --- the functional state -----------------------------------------------------------


def array_names(algorithm: Algorithm) -> tuple[str, ...]:
    """The functional state's per-leaf entries (its fields after ``count`` that are
    not scalar entries)."""
    fields = algorithm.state_type._fields[1:]  # type: ignore[attr-defined]
    return tuple(f for f in fields if f not in algorithm.scalar_names)


def init_tree(algorithm: Algorithm, params: Any, options: Options) -> Any:
    """The functional state (``algorithm.state_type``) of ``params`` before the
    first step.

    An array entry is a tree shaped like the params, None at each leaf without
    one (a leaf that is not a parameter, see
    :func:`~functorch_optim.checks.holds_state`, or one torch creates none for:
    Adafactor's entries go by rank); the whole entry is None where no leaf has
    one.
    A tree without parameters (empty, or optax's placeholder, which
    ``optax.tree_utils.tree_map_params`` inits) has the entries that these
    options create for some leaf, so its state has the structure of every
    other's.
    """
    check_param_dtypes(params)
    leaves, treedef = flatten_params(params)
    zero = jnp.zeros((), jnp.int32)
    options = evaluate_schedules(options, zero)
    names = array_names(algorithm)
    per_leaf = [
        place_like(init_arrays(algorithm, p, options), p)
        if holds_state(p)
        else dict.fromkeys(names)
        for p in leaves
    ]
    if any(holds_state(p) for p in leaves):
        created = {name for s in per_leaf for name, v in s.items() if v is not None}
    else:
        created = _created_for_some_leaf(algorithm, options)
    arrays = {
        name: jax.tree.unflatten(treedef, [s[name] for s in per_leaf])
        if name in created
        else None
        for name in names
    }
    return algorithm.state_type(
        count=zero, **init_scalars(algorithm, options), **arrays
    )


# Leaves that tell every entry an algorithm creates: Adafactor's depend on the rank.
_PROBES = tuple(jax.ShapeDtypeStruct((1,) * ndim, jnp.float32) for ndim in range(3))


def _created_for_some_leaf(algorithm: Algorithm, options: Options) -> set[str]:
    """The array entries ``algorithm.init`` creates with ``options`` for a leaf of
    some rank (traced only)."""
    created = set()
    for probe in _PROBES:
        try:
            state = jax.eval_shape(lambda p: init_arrays(algorithm, p, options), probe)
        except ValueError:  # a rank it rejects (Muon: matrices only)
            continue
        created |= {name for name, v in state.items() if v is not None}
    return created


def step_tree(
    algorithm: Algorithm,
    params: Any,
    grads: Any,
    state: Any,
    options: Options,
    as_updates: bool = False,
) -> tuple[Any, Any]:
    """Step every leaf of ``params`` from the functional ``state``; returns the new
    params (with ``as_updates``, the updates to them, see :func:`run_rule`) and
    the new state.

    A leaf without a gradient (None: a frozen layer) or that is not a parameter
    (see :func:`~functorch_optim.checks.holds_state`) is not stepped: its update
    is None, its state stays as it is. The count and the scalar entries advance
    (one for the whole tree).
    """
    leaves, grad_leaves, treedef = checked_leaves(params, grads)
    grad_leaves = [taken_grad(algorithm, g, options) for g in grad_leaves]
    names = array_names(algorithm)
    columns = {
        name: [None] * len(leaves)
        if getattr(state, name) is None
        else treedef.flatten_up_to(getattr(state, name))
        for name in names
    }
    scalar_state = {k: getattr(state, k) for k in algorithm.scalar_names}
    step_options, scalars, new_scalars = step_scalars(
        algorithm, state.count, scalar_state, options
    )
    results = []
    for i, (p, g) in enumerate(zip(leaves, grad_leaves, strict=True)):
        leaf_state = {name: columns[name][i] for name in names}
        if g is None or not holds_state(p):
            results.append((None if as_updates else p, leaf_state))
        else:
            results.append(
                run_rule(algorithm, p, g, leaf_state, step_options, scalars, as_updates)
            )
    new_state = algorithm.state_type(
        count=state.count + 1,
        **new_scalars,
        **{
            name: None
            if getattr(state, name) is None
            else jax.tree.unflatten(treedef, [r[1][name] for r in results])
            for name in names
        },
    )
    return jax.tree.unflatten(treedef, [r[0] for r in results]), new_state


def checked_leaves(params: Any, grads: Any) -> tuple[list, list, Any]:
    """The leaves of ``params`` (:func:`~functorch_optim.checks.flatten_params`)
    and of ``grads`` (same structure, shapes and compatible dtypes, else
    torch-style errors; None leaves allowed), and the params' treedef."""
    leaves, treedef = flatten_params(params)
    grad_leaves = _flatten_like(grads, treedef, "grads")
    check_grads(leaves, grad_leaves, leaf_names(params, "grads", is_leaf=is_none))
    return leaves, grad_leaves, treedef


def _flatten_like(tree: Any, treedef, what: str) -> list[Any]:
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{what} must have the structure of params {treedef}, got "
            f"{jax.tree.structure(tree)}"
        ) from e

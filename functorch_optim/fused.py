"""Run an algorithm's per-leaf rule over a whole pytree.

State layout: a dict from torch's state name to a pytree shaped like the parameters
(``state['exp_avg']`` mirrors ``params``), plus ``state['step']``, a tree of int32
counts, one per leaf. Entries torch does not create for a leaf are ``None``.

Every path that steps parameters (the functional transforms and the facade) goes
through :func:`step_leaves`, so the numerics are defined in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .algorithms.base import Algorithm, Options, to_complex, to_real
from .checks import check_grads, check_param_dtypes, leaf_names
from .core import is_bcoo
from .sharding import explicit_as_auto, place, place_like

STEP = "step"


def evaluate_schedules(options: Options, count: Any) -> Options:
    """Replace every schedule (a callable option, also inside a tuple such as
    ``betas``) by its value at ``count``."""

    def evaluate(value):
        if callable(value):
            return value(count)
        if isinstance(value, tuple):
            return tuple(evaluate(v) for v in value)
        return value

    return Options({k: evaluate(v) for k, v in options.items()})


def init_leaf(algorithm: Algorithm, param: Any, options: Options) -> dict:
    """The state of one leaf before its first step: torch's entries and ``step = 0``,
    placed on the parameter's devices (:func:`functorch_optim.sharding.place_like`)."""
    zero = jnp.zeros((), jnp.int32)
    state = algorithm.init(param, evaluate_schedules(options, zero))
    return place_like({STEP: zero, **state}, param)


def step_leaf(
    algorithm: Algorithm, param: Any, grad: Any, state: dict, options: Options
) -> tuple[Any, dict]:
    """One step of one leaf, with torch's complex handling and dtype preservation."""
    options = evaluate_schedules(options, state[STEP])
    as_real = algorithm.complex_as_real and jnp.iscomplexobj(param)
    if as_real:
        run_param, run_grad = to_real(param), to_real(grad)
        run_state = {k: to_real(v) for k, v in state.items()}
    else:
        run_param, run_grad, run_state = param, grad, state

    def rule(p, g, s):
        return algorithm.step(p, g, s, options)

    if not algorithm.elementwise:
        rule = explicit_as_auto(rule, run_param, run_state)
    new_param, new_state = rule(run_param, run_grad, run_state)
    if as_real:
        new_param = to_complex(new_param, param)
        new_state = {k: to_complex(v, state.get(k)) for k, v in new_state.items()}
    new_state = {
        k: _cast_like(v, state[k]) if state.get(k) is not None else v
        for k, v in new_state.items()
    }
    # A step that is not elementwise (a scatter, a reshape) may leave the result
    # on other shards than the parameter's; put it back where it was.
    return place(_cast_like(new_param, param), param), place_like(new_state, param)


def _cast_like(x: Any, like: Any) -> Any:
    if x is None:
        return None
    return jnp.asarray(x).astype(jnp.asarray(like).dtype)


def step_leaves(
    algorithm: Algorithm,
    params: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[dict],
    options: Options,
) -> tuple[list[Any], list[dict]]:
    """Step a list of leaves sharing one set of options (one param group)."""
    grads = [_taken_grad(algorithm, g, options) for g in grads]
    results = [
        step_leaf(algorithm, p, g, s, options)
        for p, g, s in zip(params, grads, states, strict=True)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def _taken_grad(algorithm: Algorithm, grad: Any, options: Options) -> Any:
    """A sparse gradient as the algorithm takes it (see ``Algorithm.sparse_grads``)."""
    if not is_bcoo(grad) or algorithm.sparse_grads == "native":
        return grad
    error = algorithm.sparse_grad_error(options)
    if error is not None:
        raise RuntimeError(error)
    return grad.todense()


# --- between a dict of trees and a list of per-leaf dicts ------------------------


def state_to_leaves(state: dict, treedef) -> list[dict]:
    """``{'exp_avg': tree, ...}`` -> ``[{'exp_avg': leaf0, ...}, ...]``."""
    columns = {k: treedef.flatten_up_to(v) for k, v in state.items()}
    return [
        {k: column[i] for k, column in columns.items()}
        for i in range(treedef.num_leaves)
    ]


def leaves_to_state(leaf_states: Sequence[dict], treedef) -> dict:
    """Inverse of :func:`state_to_leaves` (every leaf has the same keys)."""
    if not leaf_states:
        return {STEP: jax.tree.unflatten(treedef, [])}
    keys = leaf_states[0].keys()
    return {k: jax.tree.unflatten(treedef, [s[k] for s in leaf_states]) for k in keys}


def init_tree(algorithm: Algorithm, params: Any, options: Options) -> dict:
    check_param_dtypes(params)
    leaves, treedef = jax.tree.flatten(params)
    return leaves_to_state([init_leaf(algorithm, p, options) for p in leaves], treedef)


def step_tree(
    algorithm: Algorithm, params: Any, grads: Any, state: dict, options: Options
) -> tuple[Any, dict]:
    """Step every leaf of ``params``; returns the new params and the new state."""
    leaves, grad_leaves, treedef = checked_leaves(params, grads)
    new_leaves, new_states = step_leaves(
        algorithm, leaves, grad_leaves, state_to_leaves(state, treedef), options
    )
    return jax.tree.unflatten(treedef, new_leaves), leaves_to_state(new_states, treedef)


def checked_leaves(params: Any, grads: Any) -> tuple[list, list, Any]:
    """The leaves of ``params`` and of ``grads`` (same structure, shapes and
    compatible dtypes, else torch-style errors), and the params' treedef."""
    leaves, treedef = jax.tree.flatten(params)
    grad_leaves = _flatten_like(grads, treedef, "grads")
    check_grads(leaves, grad_leaves, leaf_names(params, "grads"))
    return leaves, grad_leaves, treedef


def _flatten_like(tree: Any, treedef, what: str) -> list[Any]:
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{what} must have the structure of params {treedef}, got "
            f"{jax.tree.structure(tree)}"
        ) from e

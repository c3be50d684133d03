"""The idioms of JAX libraries' users, for every algorithm: equinox's frozen layers
(None gradients, non-array leaves, ``eqx.filter_jit``), optax's state-sharding
recipe (``tree_map_params`` over ``init`` of a placeholder) and the L-BFGS
transform's complex gradients and abstract params. The sharding cookbook cases
run in the 8-device checks (tests/sharding_checks.py)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import sparse
from jax.sharding import PartitionSpec as P
from registry import FIRST_ORDER, SPECS

import functorch_optim as fo

CASES = {name: SPECS[name].every_state for name in FIRST_ORDER}


def params_for(name: str) -> dict:
    """A frozen leaf ``b`` beside the trained ``a``; Muon takes matrices only."""
    if name == "muon":
        return {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones((3, 2))}
    return {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}


def grad_for(name: str, param):
    grad = jnp.cos(3.0 * param + 0.1)
    return sparse.BCOO.fromdense(grad) if name == "sparse_adam" else grad


@functools.cache
def _static_jit(fn):
    @functools.partial(jax.jit, static_argnums=(0, 1))
    def run(treedef, static, dynamic):
        leaves = [s if d is None else d for s, d in zip(static, dynamic, strict=True)]
        return fn(*jax.tree.unflatten(treedef, leaves))

    return run


def filter_jit(fn):
    """equinox's ``filter_jit`` without equinox: array leaves are traced, every
    other leaf (functions, Python objects) is static, and None is structure."""

    def wrapped(*args):
        leaves, treedef = jax.tree.flatten(args)
        is_array = [isinstance(x, jax.Array) for x in leaves]
        static = tuple(None if a else x for x, a in zip(leaves, is_array))
        dynamic = [x if a else None for x, a in zip(leaves, is_array)]
        return _static_jit(fn)(treedef, static, dynamic)

    return wrapped


JITS = {"jit": jax.jit, "filter_jit": filter_jit}


# --- None gradients: frozen leaves --------------------------------------------------


@pytest.mark.parametrize("jit", list(JITS))
@pytest.mark.parametrize("name", FIRST_ORDER)
def test_a_none_gradient_leaves_its_param_and_state_alone(name, jit):
    """The frozen leaf gets a None update and keeps its state; the other leaf steps
    as it does alone, two steps running."""
    tx = getattr(fo, name)(**CASES[name])
    params = params_for(name)
    grads = {"a": grad_for(name, params["a"]), "b": None}
    state = tx.init(params)
    update = JITS[jit](tx.update)
    alone = {"a": params["a"]}
    alone_state = tx.init(alone)
    for _ in range(2):
        updates, new_state = update(grads, state, params)
        assert updates["b"] is None
        new_params = fo.apply_updates(params, updates)
        assert new_params["b"] is params["b"]
        expected, alone_state = jax.jit(tx.update)(
            {"a": grads["a"]}, alone_state, alone
        )
        chex.assert_trees_all_close(updates["a"], expected["a"], rtol=1e-14)
        alone = fo.apply_updates(alone, expected)
        for field in state._fields[1:]:
            entry, new_entry = getattr(state, field), getattr(new_state, field)
            if isinstance(entry, dict):
                assert new_entry["b"] is entry["b"] or np.array_equal(
                    new_entry["b"], entry["b"]
                ), field
        params, state = new_params, new_state


def test_packed_leaves_need_a_gradient_and_the_others_may_have_none(monkeypatch):
    from functorch_optim import packing

    monkeypatch.setattr(packing, "MIN_PACKED_LEAVES", 2)
    params = {"p": jnp.ones(3), "q": jnp.ones(4), "big": jnp.ones((2, 3)) + 1.0}
    monkeypatch.setattr(packing, "MAX_PACKED_SIZE", 4)  # "big" is stepped alone
    tx = fo.packed(fo.adam(0.1))
    state = tx.init(params)
    updates, _ = tx.update({"p": params["p"], "q": params["q"], "big": None}, state)
    assert updates["big"] is None
    with pytest.raises(TypeError, match=r"grads\['p'\] is None: a packed leaf"):
        tx.update({"p": None, "q": params["q"], "big": params["big"]}, state)


# --- non-array leaves -----------------------------------------------------------------


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_non_array_leaves_keep_no_state(name):
    """A model with an activation function and a Python int among its leaves:
    init keeps no state for them, update (their gradients None) steps the rest."""
    tx = getattr(fo, name)(**CASES[name])
    w = params_for(name)["a"]
    model = {"w": w, "act": jax.nn.relu, "depth": 2}
    state = tx.init(model)
    for field in state._fields[1:]:
        entry = getattr(state, field)
        if isinstance(entry, dict):
            assert entry["act"] is None and entry["depth"] is None, field
    grads = {"w": grad_for(name, w), "act": None, "depth": None}
    updates, _ = filter_jit(tx.update)(grads, state, model)
    new_model = fo.apply_updates(model, updates)
    assert new_model["act"] is jax.nn.relu and new_model["depth"] == 2
    expected, _ = tx.update({"w": grads["w"]}, tx.init({"w": w}), {"w": w})
    chex.assert_trees_all_close(updates["w"], expected["w"], rtol=1e-14)


# --- optax's state-sharding recipe ------------------------------------------------


# Adafactor's entries depend on each leaf's rank (row_var and col_var for matrices,
# of other shapes than the params; variance for the others), None at the leaves
# of the other kind: a spec tree cannot be mapped over them (jax.tree.map takes
# None as a node). Its state's shardings come from init on sharded params, or
# from jax.eval_shape(tx.init, ...) on an explicit mesh (the sharding checks).
PARAMS_SHAPED = [name for name in FIRST_ORDER if name != "adafactor"]


@pytest.mark.parametrize("name", PARAMS_SHAPED)
@pytest.mark.parametrize("options", ["defaults", "every_state"])
def test_tree_map_params_maps_a_spec_tree_over_the_state(name, options):
    """optax's recipe verbatim: a tree of specs shaped like the params mapped over
    every params-shaped entry of the state (the others to ``P()``)."""
    tx = getattr(fo, name)(**({} if options == "defaults" else CASES[name]))
    params = params_for(name)
    specs = {"a": P("x", None), "b": P(None, "y")}
    state = tx.init(params)
    state_specs = optax.tree_utils.tree_map_params(
        tx, lambda _, spec: spec, state, specs, transform_non_params=lambda _: P()
    )
    assert state_specs.count == P()
    for field in state._fields[1:]:
        entry, mapped = getattr(state, field), getattr(state_specs, field)
        if isinstance(entry, dict):
            assert mapped == specs, field
        else:
            assert mapped == (None if entry is None else P()), field


@pytest.mark.parametrize("name", FIRST_ORDER)
@pytest.mark.parametrize("options", ["defaults", "every_state"])
def test_init_of_a_placeholder_has_the_structure_of_init(name, options):
    """An entry is None in ``init(params)`` exactly where it is in ``init`` of
    optax's placeholder (no leaves) and of an empty tree."""
    tx = getattr(fo, name)(**({} if options == "defaults" else CASES[name]))
    state = tx.init(params_for(name))
    inits = []  # init of the placeholder, as tree_map_params calls it

    def init(params):
        inits.append(tx.init(params))
        return inits[-1]

    optax.tree_utils.tree_map_params(init, lambda x: x, state)
    for empty in (inits[0], tx.init({})):
        for field in state._fields[1:]:
            assert (getattr(state, field) is None) == (getattr(empty, field) is None), (
                field
            )


# --- L-BFGS ---------------------------------------------------------------------------

RNG = np.random.default_rng(5)
A = RNG.standard_normal((4, 3)) + 1j * RNG.standard_normal((4, 3))
B = RNG.standard_normal(4) + 1j * RNG.standard_normal(4)


def complex_loss(p):
    return jnp.sum(jnp.abs(jnp.asarray(A) @ p["z"] - jnp.asarray(B)) ** 2) + jnp.sum(
        (p["x"] - 1.0) ** 2
    )


LBFGS = fo.lbfgs(line_search_fn="strong_wolfe", history_size=5, max_iter=20)


@functools.partial(jax.jit, static_argnums=2)
def lbfgs_step(params, state, given_grads):
    grads = None
    if given_grads:
        # every transform's convention (optax's too): torch's gradient, the
        # conjugate of JAX's for a complex leaf
        grads = jax.tree.map(jnp.conj, jax.grad(complex_loss)(params))
    updates, state = LBFGS.update(grads, state, params, value_fn=complex_loss)
    return fo.apply_updates(params, updates), state


def test_lbfgs_takes_conjugated_complex_gradients():
    """Given gradients (torch's, as every transform takes them) replace the first
    evaluation with the same values: the run is the one without them."""
    start = {"z": jnp.zeros(3, jnp.complex128), "x": jnp.zeros(2)}
    runs = []
    for given_grads in (False, True):
        params, state = start, LBFGS.init(start)
        for _ in range(2):
            params, state = lbfgs_step(params, state, given_grads)
        runs.append(params)
    chex.assert_trees_all_close(runs[1], runs[0], rtol=1e-12, atol=1e-12)
    optimum = float(complex_loss({"z": jnp.linalg.lstsq(A, B)[0], "x": jnp.ones(2)}))
    assert float(complex_loss(runs[1])) - optimum < 1e-9


def test_lbfgs_init_of_abstract_params():
    params = {
        "z": jax.ShapeDtypeStruct((3,), jnp.complex64),
        "x": jnp.zeros(2, jnp.float32),
    }
    state = LBFGS.init(params)
    assert state["d"].shape == (8,) and state["d"].dtype == jnp.float32
    abstract = jax.eval_shape(LBFGS.init, params)
    assert jax.tree.map(lambda s: (s.shape, s.dtype), abstract) == jax.tree.map(
        lambda s: (s.shape, s.dtype), state
    )


def test_lbfgs_steps_the_array_leaves_and_refuses_a_none_gradient():
    """A whole-vector method: the array leaves are its vector (a function leaf
    rides along); a None gradient of an array leaf would freeze part of that
    vector, which the curvature pairs cannot honour: a clear error."""
    model = {"w": jnp.zeros(2), "act": jnp.tanh}
    loss = lambda m: jnp.sum((m["act"](m["w"]) - 0.5) ** 2)  # noqa: E731
    state = LBFGS.init(model)
    updates, _ = LBFGS.update(None, state, model, value_fn=loss)
    assert updates["act"] is None
    np.testing.assert_allclose(
        fo.apply_updates(model, updates)["w"], np.arctanh(0.5), rtol=1e-6
    )
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"grads\['b'\] is None"):
        LBFGS.update(
            {"a": jnp.zeros(2), "b": None},
            LBFGS.init(params),
            params,
            value_fn=lambda p: jnp.sum(p["a"] ** 2 + p["b"] ** 2),
        )

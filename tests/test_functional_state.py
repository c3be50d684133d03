"""The functional state has optax's shape (a NamedTuple, one ``count`` first, then
torch's names) and optax's own tools read it, for every first-order algorithm."""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.experimental import sparse
from registry import FIRST_ORDER, SPECS

import functorch_optim as fo

# Options that make every algorithm create each of its state entries.
CASES = {name: SPECS[name].every_state for name in FIRST_ORDER}
NAMES = list(CASES)
STEPS = 5

# Muon takes matrices only; the others also get a vector.
MATRICES = {"w": np.linspace(-1.0, 1.0, 6).reshape(2, 3), "v": np.ones((3, 2))}
MIXED = {"w": MATRICES["w"], "b": np.array([0.5, -1.0, 2.0])}


def params_for(name: str) -> dict:
    leaves = MATRICES if name == "muon" else MIXED
    return {k: jnp.asarray(v) for k, v in leaves.items()}


def grads_for(name: str, params: dict, step: int) -> dict:
    grads = {k: jnp.cos(p * (step + 1.0) + 0.1) for k, p in params.items()}
    if name == "sparse_adam":
        return {k: sparse.BCOO.fromdense(g) for k, g in grads.items()}
    return grads


def run(tx, name: str, steps: int = STEPS):
    """``steps`` jitted steps of ``tx`` from ``params_for(name)``."""
    params = params_for(name)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(steps):
        updates, state = update(grads_for(name, params, step), state, params)
        params = fo.apply_updates(params, updates)
    return params, state


@functools.cache
def plain_run(name: str):
    return run(getattr(fo, name)(**CASES[name]), name)


# --- the state's shape ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_is_a_named_tuple_with_one_count_then_torchs_names(name):
    algorithm = SPECS[name].algorithm
    params, state = plain_run(name)
    assert type(state) is SPECS[name].state_type
    assert state._fields == (
        "count",
        *(n for n in algorithm.state_names if n != "step"),
    )
    assert state.count.shape == () and state.count.dtype == jnp.int32
    assert int(state.count) == STEPS
    structure = jax.tree.structure(params)
    for field in state._fields[1:]:
        value = getattr(state, field)
        if field in algorithm.scalar_names:  # equal for all leaves: kept once
            assert isinstance(value, jax.Array) and value.shape == (), field
        elif value is not None:  # a tree shaped like the params
            is_none = lambda x: x is None  # noqa: E731
            assert jax.tree.structure(value, is_leaf=is_none) == structure, field


def test_entries_torch_does_not_create_are_none():
    params = params_for("adam")
    assert fo.adam().init(params).max_exp_avg_sq is None
    assert fo.sgd().init(params).momentum_buffer is None
    state = fo.rmsprop().init(params)
    assert state.momentum_buffer is None and state.grad_avg is None
    # Adafactor factors matrices only: the vector has a variance, no row/col.
    state = fo.adafactor().init(params)
    assert state.variance["w"] is None and state.variance["b"].shape == (3,)
    assert state.row_var["b"] is None and state.row_var["w"].shape == (2, 1)


# --- optax's tools --------------------------------------------------------------------


TOOL_CASES = {
    **{
        name: (name, lambda name=name: getattr(fo, name)(**CASES[name]))
        for name in NAMES
    },
    "packed": ("adam", lambda: fo.packed(fo.adam(0.1))),
    "skip_nonfinite": ("nadam", lambda: fo.skip_nonfinite(fo.nadam(0.1))),
    "chain": (
        "sgd",
        lambda: fo.chain(fo.clip_grad_norm(1.0), fo.sgd(0.1, momentum=0.5)),
    ),
}


@pytest.mark.parametrize("case", list(TOOL_CASES))
def test_tree_get_reads_the_count(case):
    name, make = TOOL_CASES[case]
    # an algorithm's own case is plain_run's transform: its run, compiled once
    _, state = plain_run(name) if case in CASES else run(make(), name)
    assert int(optax.tree_utils.tree_get(state, "count")) == STEPS


@pytest.mark.parametrize("name", NAMES)
def test_tree_map_params_maps_every_params_shaped_entry(name):
    tx = getattr(fo, name)(**CASES[name])
    _, state = plain_run(name)
    marked = optax.tree_utils.tree_map_params(
        tx, lambda x: jnp.full_like(x, 7), state, transform_non_params=lambda x: x
    )
    assert int(marked.count) == int(state.count)
    for field in state._fields[1:]:
        before, after = getattr(state, field), getattr(marked, field)
        if field in SPECS[name].algorithm.scalar_names:
            assert after is before, field
        elif before is not None:
            assert all(bool(jnp.all(x == 7)) for x in jax.tree.leaves(after)), field
    # an empty tree: one state shape for the placeholder and for {}
    empty = tx.init({})
    assert optax.tree_utils.tree_map_params(tx, lambda x: x, empty) == empty


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_is_the_plain_transform_under_jit(name):
    """Numbers given become traced hyperparameters; integer defaults (the zeros
    torch branches on, Muon's ns_steps) and flags stay static; the trajectory is
    the plain transform's, in the precision torch computes in."""
    injected = optax.inject_hyperparams(getattr(fo, name))(**CASES[name])
    params, state = run(injected, name)
    expected, _ = plain_run(name)
    chex.assert_trees_all_close(params, expected, rtol=1e-14, atol=1e-15)
    assert "lr" in state.hyperparams
    assert not any(k in state.hyperparams for k in ("amsgrad", "ns_steps"))
    # a new value takes effect without a new transform
    state.hyperparams["lr"] = jnp.zeros_like(state.hyperparams["lr"])
    params = params_for(name)
    updates, _ = jax.jit(injected.update)(grads_for(name, params, 0), state, params)
    # ASGD's eta and Rprop's step sizes take lr once, at init
    if name not in ("asgd", "rprop"):
        assert all(not bool(jnp.any(u)) for u in jax.tree.leaves(updates))


def test_inject_hyperparams_without_params_where_the_step_reads_none():
    params = params_for("adam")
    for name in ("sgd", "adam", "rmsprop", "adagrad", "nadam", "radam", "adamax"):
        tx = optax.inject_hyperparams(getattr(fo, name))(lr=0.1)
        updates, _ = jax.jit(tx.update)(params, tx.init(params))
        assert jax.tree.structure(updates) == jax.tree.structure(params), name


def test_injected_muon_ns_steps_runs_traced():
    tx = optax.inject_hyperparams(fo.muon)(lr=0.05, ns_steps=3)
    params, _ = run(tx, "muon")
    expected, _ = run(fo.muon(lr=0.05, ns_steps=3), "muon")
    chex.assert_trees_all_close(params, expected, rtol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_multi_steps_masked_and_partition(name):
    params = params_for(name)
    inner = getattr(fo, name)(**CASES[name])
    expected, _ = plain_run(name)
    # MultiSteps with every_k_schedule=1 is the inner transform (it accumulates
    # dense gradients, which SparseAdam refuses as torch's does)
    if name != "sparse_adam":
        got, state = run(optax.MultiSteps(inner, every_k_schedule=1), name)
        chex.assert_trees_all_close(got, expected, rtol=1e-14)
        assert int(optax.tree_utils.tree_get(state.inner_opt_state, "count")) == STEPS
    # masked / partition: the first leaf stepped, the other left alone
    first = sorted(params)[0]
    mask = {k: k == first for k in params}
    got, _ = run(optax.masked(inner, mask), name)
    np.testing.assert_allclose(got[first], expected[first], rtol=1e-14)
    labels = {k: "opt" if k == first else "frozen" for k in params}
    tx = optax.partition({"opt": inner, "frozen": optax.set_to_zero()}, labels)
    got, _ = run(tx, name)
    np.testing.assert_allclose(got[first], expected[first], rtol=1e-14)
    for k in params:
        if k != first:
            np.testing.assert_array_equal(got[k], params[k])


# --- the update -----------------------------------------------------------------------


def _count_ops(tx, leaves: int) -> dict[str, int]:
    """Array-valued selects and compares in the compiled step of ``tx`` on
    ``leaves`` leaves (XLA copies a scalar one into every leaf's fusion)."""
    params = {f"p{i}": jnp.ones((16,), jnp.float32) for i in range(leaves)}

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    text = jax.jit(step).lower(params, tx.init(params), params).compile().as_text()
    return {
        op: len(re.findall(rf"\w+\[\d[\d,]*\]\S* {op}\(", text))
        for op in ("select", "compare")
    }


@pytest.mark.parametrize(
    "tx",
    [
        fo.sgd(lr=0.1, momentum=0.9),
        fo.sgd(lr=0.1, momentum=0.9, dampening=0.1, nesterov=False),
        fo.adam(lr=0.1),
        fo.rmsprop(lr=0.1),
    ],
    ids=["sgd_momentum", "sgd_dampening", "adam", "rmsprop"],
)
def test_a_step_compiles_no_select_per_leaf(tx):
    """The update is the rule's increment, not ``new - old`` with 0 where the
    two are equal, and SGD's first step needs no branch per leaf: a step has
    no elementwise select or compare."""
    assert _count_ops(tx, 3) == {"select": 0, "compare": 0}


@pytest.mark.parametrize(
    "dampening, nesterov", [(0.0, False), (0.5, False), (0.0, True)]
)
def test_sgd_first_step_copies_the_gradient_bit_for_bit(dampening, nesterov):
    """torch's first step clones the gradient into the buffer: signed zeros,
    infinities and nan included, through the functional path and the facade."""
    grad = np.array([-0.0, 0.0, np.inf, -np.inf, np.nan, -1.5, 3.0], np.float32)
    param = np.linspace(-1.0, 1.0, grad.size).astype(np.float32)
    options = dict(lr=0.1, momentum=0.9, dampening=dampening, nesterov=nesterov)
    t_param = torch.nn.Parameter(torch.tensor(param))
    t_opt = torch.optim.SGD([t_param], **options)
    t_param.grad = torch.tensor(grad)
    t_opt.step()
    expected_buffer = t_opt.state[t_param]["momentum_buffer"].numpy()

    tx = fo.sgd(**options)
    updates, state = jax.jit(tx.update)(
        jnp.asarray(grad), tx.init(jnp.asarray(param)), jnp.asarray(param)
    )
    facade_param = jnp.asarray(param)
    facade = fo.SGD([facade_param], **options)
    facade.step([jnp.asarray(grad)])
    facade_buffer = facade.state_dict()["state"][0]["momentum_buffer"]
    for buffer in (state.momentum_buffer, facade_buffer):
        np.testing.assert_array_equal(
            np.asarray(buffer).view(np.uint32), expected_buffer.view(np.uint32)
        )
    # torch's vectorized add_ and XLA's fused loop may round the param apart
    np.testing.assert_allclose(
        np.asarray(fo.apply_updates(jnp.asarray(param), updates)),
        t_param.detach().numpy(),
        rtol=1e-6,
    )

"""Packed state (functorch_optim.packing): the facade's small leaves stepped as one
flat buffer give the per-leaf results, through every change of layout.

torch parity of the packed path for every elementwise algorithm and dtype is in
``test_facade.py::test_trajectory_parity_with_torch`` (its ``packed`` layout).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from reference import (
    TOLERANCE,
    assert_trajectories_close,
    functional_trajectory,
    grad_sequence,
    random_arrays,
    to_numpy,
    torch_trajectory,
)
from registry import BY_FACADE, SPECS

import functorch_optim as fo
from functorch_optim import optim, packing

# Packed leaves of several shapes (size 0 too), a scalar and a leaf above
# MAX_PACKED_SIZE (as the fixture lowers it) stepped alone.
SHAPES = ((3,), (2, 3), (2, 3, 2), (0,), (1,), (4,), (3, 1), (5,), (), (6, 7))

# Each elementwise algorithm's facade class name -> its packing options.
ELEMENTWISE = {s.facade: s.packing for s in SPECS.values() if s.packing is not None}


@pytest.fixture(autouse=True)
def small_packs(monkeypatch):
    monkeypatch.setattr(packing, "MIN_PACKED_LEAVES", 3)
    monkeypatch.setattr(packing, "MAX_PACKED_SIZE", 20)


def _params(dtype="float64", shapes=SHAPES):
    return [jnp.asarray(p, dtype) for p in random_arrays(0, shapes, "float64")]


def _grads(k, dtype="float64", shapes=SHAPES):
    return [jnp.asarray(g, dtype) for g in random_arrays(k + 1, shapes, "float64")]


def _twins(name, monkeypatch, **options):
    """A facade that packs and one that steps every leaf alone."""
    cls = getattr(fo, name)
    packed = cls(_params(), **(ELEMENTWISE[name] | options))
    alone = cls(_params(), **(ELEMENTWISE[name] | options))
    return packed, alone


def _step_alone(opt, grads, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(packing, "MAX_PACKED_SIZE", -1)
        opt.step(grads)
    assert not any(opt.debug_layout())


def _assert_same(packed, alone):
    rtol, atol = TOLERANCE["float64"]
    pairs = zip(jax.tree.leaves(packed.params), jax.tree.leaves(alone.params))
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
    sd_packed, sd_alone = packed.state_dict(), alone.state_dict()
    assert sd_packed["param_groups"] == sd_alone["param_groups"]
    assert sd_packed["state"].keys() == sd_alone["state"].keys()
    for pid, state in sd_packed["state"].items():
        assert list(state) == list(sd_alone["state"][pid])
        for name, value in state.items():
            np.testing.assert_allclose(
                np.asarray(value),
                np.asarray(sd_alone["state"][pid][name]),
                rtol=rtol,
                atol=atol,
                err_msg=f"{name} of param {pid}",
            )


def test_every_elementwise_algorithm_packs_and_no_other_does():
    classes = [spec.cls for spec in SPECS.values()]
    elementwise = {c.__name__ for c in classes if c.algorithm.elementwise}
    assert elementwise == set(ELEMENTWISE)
    opt = fo.Adafactor(_params(shapes=((3, 2),) * 4))
    opt.step(_grads(0, shapes=((3, 2),) * 4))
    assert not any(opt.debug_layout())


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_packed_equals_per_leaf_through_layout_changes(name, monkeypatch):
    """Steps with a leaf left out (its pack unpacks; it then keeps its own count),
    a state_dict read and a param replaced in between (the packs stay; the new
    param is read) and a group added later."""
    packed, alone = _twins(name, monkeypatch)
    for k in range(5):
        grads = _grads(k)
        if k == 2:
            grads[1] = None
        packed.step(grads)
        _step_alone(alone, grads, monkeypatch)
        if k == 0:
            assert [len(p) for p in packed.debug_layout()[0]] == [8]
        if k == 3:
            packs = packed.debug_layout()[0]
            _assert_same(packed, alone)
            assert packed.debug_layout()[0] == packs
            for opt in (packed, alone):
                leaves = opt.param_groups[0]["params"]
                leaves[2] = jnp.full_like(leaves[2], 0.5)
    # leaf 1 missed a step: it cannot share the others' step count again
    assert [len(p) for p in packed.debug_layout()[0]] == [7]
    for opt in (packed, alone):
        opt.add_param_group({"params": _params(shapes=((2,),) * 4)})
    grads = [_grads(9), _grads(9, shapes=((2,),) * 4)]
    packed.step(grads)
    _step_alone(alone, grads, monkeypatch)
    assert [len(p) for p in packed.debug_layout()[1]] == [4]
    _assert_same(packed, alone)


@pytest.mark.parametrize("dtype", ["float32", "complex64", "bfloat16"])
def test_packed_adam_equals_per_leaf_in_other_dtypes(dtype, monkeypatch):
    """Exactly: the flat run is the same elementwise arithmetic."""
    params = _params(dtype)
    packed, alone = fo.Adam(params, lr=0.1), fo.Adam(_params(dtype), lr=0.1)
    for k in range(3):
        packed.step(_grads(k, dtype))
        _step_alone(alone, _grads(k, dtype), monkeypatch)
    assert any(packed.debug_layout())
    for a, b in zip(packed.params, alone.params, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_option_changes_and_load_state_dict_from_torch(monkeypatch):
    """A static option change (momentum from 0) completes the packed states as
    the per-leaf ones; a torch state dict loaded mid-run replaces the packs; an lr
    change reuses the compiled step."""
    packed, alone = _twins("SGD", monkeypatch, momentum=0.0, nesterov=False)
    for opt in (packed, alone):
        opt.param_groups[0]["momentum"] = 0.0
    for k in range(2):
        packed.step(_grads(k))
        _step_alone(alone, _grads(k), monkeypatch)
    for opt in (packed, alone):
        opt.param_groups[0]["momentum"] = 0.5
    packed.step(_grads(2))
    _step_alone(alone, _grads(2), monkeypatch)
    assert any(packed.debug_layout())
    _assert_same(packed, alone)

    tensors = [torch.tensor(np.asarray(p), requires_grad=True) for p in _params()]
    theirs = torch.optim.SGD(tensors, lr=0.1, momentum=0.9, weight_decay=0.1)
    for t, g in zip(tensors, _grads(5)):
        t.grad = torch.tensor(np.asarray(g))
    theirs.step()
    packed.step(_grads(3))  # packed again before the load
    assert any(packed.debug_layout())
    packed.load_state_dict(theirs.state_dict())
    assert not any(packed.debug_layout())
    packed.step(_grads(6))
    compiles = optim.compile_count()
    packed.param_groups[0]["lr"] = 0.05
    packed.step(_grads(7))
    assert optim.compile_count() == compiles
    assert any(packed.debug_layout())


def test_plan_keys_on_dtype_device_state_and_scalar_values():
    ones = jnp.ones((), jnp.int32)
    params = [jnp.zeros(3, jnp.float32)] * 3 + [jnp.zeros(3)] * 6 + [jnp.zeros(30)]
    grads = list(params)
    states = [{"step": ones, "m": jnp.zeros(p.shape, p.dtype)} for p in params]
    states[3] = {"step": ones, "m": None}  # another entry layout
    states[4] = {"step": ones * 2, "m": jnp.zeros(3)}  # another count
    grads[5] = None  # no gradient
    assert packing.plan(params, grads, states) == [[0, 1, 2], [6, 7, 8]]


def test_pack_round_trip_keeps_every_entry():
    params = [jnp.arange(n, dtype=jnp.float32) for n in (2, 3, 0, 4)]
    states = [
        {"step": jnp.asarray(4, jnp.int32), "m": p * 2, "none": None} for p in params
    ]
    pack = packing.pack(range(4), params, states)
    assert pack.state["m"].shape == (9,) and pack.state["step"].shape == ()
    for state, original in zip(packing.unpack(pack), states, strict=True):
        assert state.keys() == original.keys() and state["none"] is None
        np.testing.assert_array_equal(state["m"], original["m"])
        assert int(state["step"]) == 4


def test_unpacked_scalars_are_separate_buffers():
    """Each leaf's state is donated on its own at the next step."""
    params = [jnp.ones(2)] * 3
    states = [{"step": jnp.asarray(1, jnp.int32)} for _ in params]
    unpacked = packing.unpack(packing.pack(range(3), params, states))
    pointers = {s["step"].unsafe_buffer_pointer() for s in unpacked}
    assert len(pointers) == 3


def test_a_packed_facade_runs_under_a_traced_lr_schedule():
    """Schedulers write lr every step; the packed step keeps compiling once."""
    opt = fo.Adam(_params(), lr=0.1)
    sched = fo.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(_grads(0))
    compiles = optim.compile_count()
    for k in range(1, 4):
        opt.step(_grads(k))
        sched.step()
    assert optim.compile_count() == compiles
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(opt.params))


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_init_depends_on_shape_and_dtype_only(name):
    """What lets a pack's new state be made once, from zeros (packing.pack_fresh)."""
    algorithm = getattr(fo, name).algorithm
    options = algorithm.options(ELEMENTWISE[name])
    param = jnp.asarray(random_arrays(0, [(5,)], "float64")[0])
    np.testing.assert_equal(
        jax.device_get(algorithm.init(param, options)),
        jax.device_get(algorithm.init(jnp.zeros_like(param), options)),
    )


# --- fo.packed: the functional transforms with packed state ------------------------


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_packed_transform_matches_torch(name):
    dtype = "float32"
    options = ELEMENTWISE[name]
    params = random_arrays(0, SHAPES, dtype)
    grads = grad_sequence(3, SHAPES, dtype)
    expected = torch_trajectory(
        lambda ps: getattr(torch.optim, name)(ps, **options), params, grads, dtype
    )
    tx = fo.packed(BY_FACADE[name].functional(**options))
    state = tx.init([jnp.asarray(p, dtype) for p in params])
    assert [len(i) for i in state.layout.indices] == [8]
    actual = functional_trajectory(tx, params, grads, dtype)
    assert_trajectories_close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", ["complex64", "bfloat16"])
def test_packed_transform_equals_the_per_leaf_one(dtype):
    params = random_arrays(0, SHAPES, dtype)
    grads = grad_sequence(3, SHAPES, dtype)
    tx = fo.adam(lr=0.1, weight_decay=0.1)
    packed = functional_trajectory(fo.packed(tx), params, grads, dtype)
    for a, b in zip(packed, functional_trajectory(tx, params, grads, dtype)):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_packed_transform_composes_and_checks_its_input():
    params = _params()
    chained = optax.chain(fo.clip_grad_norm(1.0), fo.packed(fo.sgd(0.1, momentum=0.9)))
    reference_tx = optax.chain(fo.clip_grad_norm(1.0), fo.sgd(0.1, momentum=0.9))
    results = []
    for tx in (chained, reference_tx):
        state = tx.init(params)
        step = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p))
        for k in range(2):
            updates, state = step(_grads(k), state, params)
        results.append(updates)
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)

    with pytest.raises(TypeError, match="elementwise algorithm"):
        fo.packed(fo.adafactor())
    with pytest.raises(TypeError, match="elementwise algorithm"):
        fo.packed(optax.adam(1e-3))
    tx = fo.packed(fo.adam(0.1))
    grads = _grads(0)
    grads[1] = None
    with pytest.raises(TypeError, match=r"grads\[1\] is None: a packed leaf"):
        tx.update(grads, tx.init(params), params)
    traced = jax.jit(tx.init)(params)  # no devices to read: every leaf alone
    assert traced.layout.indices == () and all(s is not None for s in traced.leaves)
    # a batch of models: init under the same vmap (the packs' scalars and
    # offsets have no axis to map)
    batched = [jnp.stack([p, p]) for p in params]
    with pytest.raises(ValueError, match="rank should be at least 1"):
        jax.vmap(tx.update)(
            [jnp.stack([g, g]) for g in _grads(0)], tx.init(batched), batched
        )
    per_model = jax.vmap(tx.init)(batched)
    updates, _ = jax.vmap(tx.update)(
        [jnp.stack([g, g]) for g in _grads(0)], per_model, batched
    )
    assert all(u.shape == p.shape for u, p in zip(updates, batched, strict=True))

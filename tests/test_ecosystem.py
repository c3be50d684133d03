"""Ecosystem use: optax/flax drop-in for every algorithm, checkpoints, research
transforms (vmap sweeps, meta-gradients, scan loops).

Everything runs on one tiny least-squares model in float64 for a few steps; the
drop-in routes run eagerly (compiling them would cost more than the steps).
"""

from __future__ import annotations

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from flax.training import train_state
from jax.experimental import sparse
from reference import to_numpy
from registry import SPECS

import functorch_optim as fo
from functorch_optim import checkpoint

# --- the model: 2 x (3 -> 2) least squares --------------------------------------------

_RNG = np.random.default_rng(7)
X = _RNG.standard_normal((4, 3))
Y = _RNG.standard_normal((4, 2))
W0 = _RNG.standard_normal((3, 2))
B0 = _RNG.standard_normal(2)

# Every algorithm of the registry, with its ``ecosystem`` options. Muon takes
# matrices only; SparseAdam sparse gradients; LBFGS an objective.
ALGORITHMS = list(SPECS)
STEPS = 2
# Run eagerly, a step of these costs more than compiling it.
COMPILED = ("lbfgs", "sparse_adam", "adafactor", "muon")


def test_every_public_algorithm_is_covered():
    classes = {
        n
        for n in fo.__all__
        if isinstance(getattr(fo, n), type)
        and issubclass(getattr(fo, n), fo.Optimizer)
        and n != "Optimizer"
    }
    assert {spec.facade for spec in SPECS.values()} == classes
    assert set(SPECS) <= set(fo.__all__)


def initial_params(name):
    params = {"w": jnp.asarray(W0), "b": jnp.asarray(B0)}
    return {"w": params["w"]} if name == "muon" else params


def loss_fn(params):
    prediction = jnp.asarray(X) @ params["w"] + params.get("b", 0.0)
    return jnp.sum((prediction - jnp.asarray(Y)) ** 2)


def as_grads(name, grads):
    """SparseAdam is fed BCOO gradients, as torch's SparseAdam needs sparse ones."""
    if name == "sparse_adam":
        return jax.tree.map(lambda g: sparse.BCOO.fromdense(g, nse=g.size), grads)
    return grads


def torch_run(name, scale=1.0):
    """torch's parameters after STEPS steps of the same model (grads scaled)."""
    torch_cls, options = SPECS[name].torch_cls, SPECS[name].ecosystem
    params = {k: torch.tensor(np.asarray(v)) for k, v in initial_params(name).items()}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch_cls(list(params.values()), **options)

    def closure():
        opt.zero_grad()
        prediction = torch.tensor(X) @ params["w"] + params.get("b", 0.0)
        loss = torch.sum((prediction - torch.tensor(Y)) ** 2) * scale
        loss.backward()
        if name == "sparse_adam":
            for p in params.values():
                p.grad = p.grad.to_sparse()
        return loss

    for _ in range(STEPS):
        if name == "lbfgs":
            opt.step(closure)
        else:
            closure()
            opt.step()
    return {k: to_numpy(v) for k, v in params.items()}


def functional_step(name, tx, params, state, update=None):
    """One update of a transformation (fo's or an optax chain holding it)."""
    update = update or tx.update
    if name == "lbfgs":
        updates, state = update(None, state, params, value_fn=loss_fn)
    else:
        updates, state = update(
            as_grads(name, jax.grad(loss_fn)(params)), state, params
        )
    return optax.apply_updates(params, updates), state


def make(name):
    return SPECS[name].functional(**SPECS[name].ecosystem)


def assert_matches_torch(actual, expected):
    chex.assert_trees_all_close(
        jax.tree.map(np.asarray, dict(actual)), expected, rtol=1e-10, atol=1e-12
    )


# --- drop-in: optax.chain, flax.nnx.Optimizer, flax TrainState ------------------------


@pytest.mark.parametrize("name", ALGORITHMS)
def test_inside_optax_chain_matches_torch(name):
    # optax.scale(0.5) halves the gradients exactly; torch gets half the loss. An
    # identity transform after ours checks the updates pass through unchanged.
    # L-BFGS reads the objective: optax.chain forwards value_fn to it, since this
    # library's transformations are optax.GradientTransformationExtraArgs.
    # optax.scale would scale a BCOO's indices too: SparseAdam gets no scaling.
    if name == "lbfgs":
        tx = optax.chain(make(name), optax.identity())
        expected = torch_run(name)
    elif name == "sparse_adam":
        tx = optax.chain(make(name), optax.identity())
        expected = torch_run(name)
    else:
        tx = optax.chain(optax.scale(0.5), make(name), optax.identity())
        expected = torch_run(name, scale=0.5)
    params = initial_params(name)
    state = tx.init(params)
    step = lambda p, s: functional_step(name, tx, p, s)  # noqa: E731
    step = jax.jit(step) if name in COMPILED else step
    for _ in range(STEPS):
        params, state = step(params, state)
    assert_matches_torch(params, expected)


class Linear(nnx.Module):
    def __init__(self, name):
        params = initial_params(name)
        self.w = nnx.Param(params["w"])
        if "b" in params:
            self.b = nnx.Param(params["b"])

    def params(self):
        return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_flax_nnx_optimizer_matches_torch(name):
    model = Linear(name)
    optimizer = nnx.Optimizer(model, make(name), wrt=nnx.Param)

    def model_loss(model):
        return loss_fn(model.params())

    def step(model, optimizer):
        grads = nnx.grad(model_loss)(model)
        if name == "lbfgs":  # value_fn sees the pure parameter state nnx passes
            optimizer.update(model, grads, value_fn=loss_fn)
        else:
            if name == "sparse_adam":
                nnx.update(grads, as_grads(name, nnx.to_pure_dict(grads)))
            optimizer.update(model, grads)

    step = nnx.jit(step) if name in COMPILED else step
    for _ in range(STEPS):
        step(model, optimizer)
    assert_matches_torch(model.params(), torch_run(name))


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "lbfgs"])
def test_flax_train_state_matches_torch(name):
    # TrainState.apply_gradients passes no extra arguments to tx.update, so
    # L-BFGS (which needs the objective) cannot run inside it.
    state = train_state.TrainState.create(
        apply_fn=None, params=initial_params(name), tx=make(name)
    )

    def step(state):
        return state.apply_gradients(
            grads=as_grads(name, jax.grad(loss_fn)(state.params))
        )

    step = jax.jit(step) if name in COMPILED else step
    for _ in range(STEPS):
        state = step(state)
    assert int(state.step) == STEPS
    assert_matches_torch(state.params, torch_run(name))


# --- checkpoints ---------------------------------------------------------------------


def assert_identical(a, b, path="root"):
    """Same containers, key types, Python scalar types and values, array dtypes,
    shapes, kinds and bits."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), path
        assert [type(k) for k in a] == [type(k) for k in b], path
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, (jax.Array, np.ndarray)):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def facade_params(name):
    params = initial_params(name)
    if name == "sgd":  # mixed dtypes and a scalar leaf travel through the state dict
        params = dict(params, c=jnp.asarray([1.0 + 2.0j], jnp.complex64))
        params["s"] = jnp.asarray(0.5, jnp.bfloat16)
    return params


def facade_step(name, opt):
    if name == "lbfgs":  # the same closure object each step: compiled once
        return opt.step(loss_fn)
    groups = opt.params if isinstance(opt.params, list) else [opt.params]
    merged = {k: v for group in groups for k, v in group.items()}
    dense = jax.grad(loss_fn)({k: merged[k] for k in ("w", "b") if k in merged})
    grads = [{k: dense.get(k, jnp.zeros_like(v)) for k, v in g.items()} for g in groups]
    opt.step(as_grads(name, grads if isinstance(opt.params, list) else grads[0]))


def make_facade(name, params):
    cls = SPECS[name].cls
    options = dict(SPECS[name].ecosystem)
    if name == "adam":  # a second group with its own options (and tuple betas)
        w, b = (
            params
            if isinstance(params, list)
            else ({"w": params["w"]}, {"b": params["b"]})
        )
        return cls([{"params": w, "betas": (0.5, 0.75)}, {"params": b}], **options)
    return cls(params, **options)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_facade_state_dict_round_trip_and_continuation(name, tmp_path):
    """A mid-training state dict restored into a fresh optimizer continues exactly
    as the uninterrupted one (msgpack for all, orbax for two)."""
    opt = make_facade(name, facade_params(name))
    facade_step(name, opt)
    saved = opt.state_dict()
    fmt = "orbax" if name in ("adam", "lbfgs") else "msgpack"
    path = tmp_path / "opt.ckpt"
    checkpoint.save(path, {"params": opt.params, "optimizer": saved}, format=fmt)
    restored = checkpoint.restore(path)
    assert_identical(restored["optimizer"], saved)
    assert_identical(restored["params"], opt.params)

    resumed = make_facade(name, restored["params"])
    resumed.load_state_dict(restored["optimizer"])
    for _ in range(STEPS):
        facade_step(name, opt)
        facade_step(name, resumed)
    assert_identical(resumed.params, opt.params)
    assert_identical(resumed.state_dict(), opt.state_dict())


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
def test_functional_state_restored_mid_training_continues_identically(fmt, tmp_path):
    tx = fo.chain(fo.clip_grad_norm(1.0), fo.adam(lr=fo.step_lr(0.1, 1, gamma=0.5)))
    step = jax.jit(lambda p, s: functional_step("adam", tx, p, s))
    params = initial_params("adam")
    state = tx.init(params)
    params, state = step(params, state)
    checkpoint.save(tmp_path / "run", (params, state), format=fmt)
    # the state is a NamedTuple (fo.AdamState): a fresh one shows its structure
    fresh = (initial_params("adam"), tx.init(initial_params("adam")))
    resumed = checkpoint.restore(tmp_path / "run", like=fresh)
    assert type(resumed[1][1]) is fo.AdamState
    assert_identical(resumed, (params, state))
    for _ in range(3):
        params, state = step(params, state)
        resumed = step(*resumed)
    assert_identical(resumed, (params, state))


def test_nnx_optimizer_state_needs_like_and_is_restored_with_it(tmp_path):
    model = Linear("adam")
    optimizer = nnx.Optimizer(model, fo.adam(lr=0.1), wrt=nnx.Param)
    optimizer.update(model, nnx.grad(lambda m: loss_fn(m.params()))(model))
    saved = nnx.state(optimizer)
    checkpoint.save(tmp_path / "nnx", saved)
    with pytest.raises(checkpoint.CheckpointError, match="pass like="):
        checkpoint.restore(tmp_path / "nnx")
    fresh_model = Linear("adam")
    fresh = nnx.Optimizer(fresh_model, fo.adam(lr=0.1), wrt=nnx.Param)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.state(fresh)
    )
    nnx.update(fresh, checkpoint.restore(tmp_path / "nnx", like=abstract))
    chex.assert_trees_all_equal(nnx.state(fresh), saved)


def test_restore_into_like_checks_shapes_dtypes_and_keys(tmp_path):
    tree = {"a": jnp.zeros((2, 3)), "b": [jnp.ones(2, jnp.float32), 1.5]}
    checkpoint.save(tmp_path / "t", tree)
    assert_identical(checkpoint.restore(tmp_path / "t", like=tree), tree)
    cases = [
        ({"a": jnp.zeros((3, 2)), "b": tree["b"]}, r"\['a'\]: float64\[2, 3\]"),
        ({"a": tree["a"], "b": [jnp.ones(2), 1.5]}, r"\['b'\]\[0\]: float32"),
        ({"a": tree["a"]}, "keys"),
        ({"a": tree["a"], "b": (tree["b"][0], 1.5)}, "list of 2, `like` has a tuple"),
    ]
    for like, message in cases:
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.restore(tmp_path / "t", like=like)


def test_bad_checkpoint_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.restore(tmp_path / "missing")
    good = tmp_path / "good"
    checkpoint.save(good, {"x": jnp.arange(100.0)})
    data = good.read_bytes()
    cases = {
        "empty": (b"", "not a functorch_optim checkpoint"),
        "garbage": (os.urandom(200), "not a functorch_optim checkpoint"),
        "pickle": (b"\x80\x04\x95" + data[3:], "not a functorch_optim checkpoint"),
        "truncated": (data[:-10], "truncated: .* of .* payload bytes"),
        "header only": (data[:20], "not a functorch_optim checkpoint"),
        "trailing": (data + b"x", "trailing data"),
        "flipped": (data[:-5] + bytes([data[-5] ^ 1]) + data[-4:], "corrupted"),
    }
    for label, (content, message) in cases.items():
        bad = tmp_path / label.replace(" ", "_")
        bad.write_bytes(content)
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.restore(bad)
    incomplete = tmp_path / "orbax_dir"
    incomplete.mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="structure.fockpt"):
        checkpoint.restore(incomplete)
    with pytest.raises(TypeError, match="cannot checkpoint 'object' at \\['x'\\]"):
        checkpoint.save(tmp_path / "o", {"x": object()})
    with pytest.raises(ValueError, match="format must be one of"):
        checkpoint.save(tmp_path / "o", {}, format="pickle")
    assert not (tmp_path / "o").exists()
    checkpoint.save(good, {"x": 1})  # overwriting is atomic and leaves no temp files
    assert checkpoint.restore(good) == {"x": 1}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".fockpt")]


# --- research: vmap sweeps, meta-gradients, scan --------------------------------------


def train(hyper, name, steps=4):
    """Final loss after `steps` unrolled steps with traced hyperparameters."""
    tx = getattr(fo, name)(**hyper)
    params = initial_params(name)
    state = tx.init(params)
    for _ in range(steps):
        params, state = functional_step(name, tx, params, state)
    return loss_fn(params)


def test_vmap_sweep_of_16_learning_rates_is_one_program():
    lrs = jnp.geomspace(1e-3, 0.3, 16)
    sweep = jax.jit(jax.vmap(lambda lr: train({"lr": lr, "amsgrad": True}, "adam")))
    losses = sweep(lrs)
    assert sweep._cache_size() == 1 and losses.shape == (16,)
    single = jax.jit(lambda lr: train({"lr": lr, "amsgrad": True}, "adam"))
    for i in (0, 7, 15):
        np.testing.assert_allclose(losses[i], single(lrs[i]), rtol=1e-12)
    # and the sweep is torch's: the best lr's run equals torch.optim.Adam's
    best = float(lrs[int(jnp.argmin(losses))])
    torch_cls = SPECS["adam"].torch_cls
    w = torch.tensor(W0, requires_grad=True)
    b = torch.tensor(B0, requires_grad=True)
    opt = torch_cls([w, b], lr=best, amsgrad=True)
    for _ in range(4):
        opt.zero_grad()
        torch.sum((torch.tensor(X) @ w + b - torch.tensor(Y)) ** 2).backward()
        opt.step()
    torch_loss = torch.sum((torch.tensor(X) @ w + b - torch.tensor(Y)) ** 2).item()
    np.testing.assert_allclose(losses.min(), torch_loss, rtol=1e-10)


# The algorithms with a meta-gradient check, and the options it differentiates by.
META = {
    name: spec.meta_gradient
    for name, spec in SPECS.items()
    if spec.meta_gradient is not None
}


def _flat(hyper):
    values = []
    for v in hyper.values():
        values += list(v) if isinstance(v, tuple) else [v]
    return jnp.asarray(values)


def _unflat(vector, like):
    hyper, i = {}, 0
    for k, v in like.items():
        n = len(v) if isinstance(v, tuple) else 1
        hyper[k] = tuple(vector[i : i + n]) if isinstance(v, tuple) else vector[i]
        i += n
    return hyper


@pytest.mark.parametrize("name", META)
def test_meta_gradient_matches_central_differences(name):
    """jax.grad of the loss after unrolled steps w.r.t. lr, betas (or momentum,
    dampening) and weight_decay agrees with central differences in float64."""
    like = META[name]
    final = jax.jit(lambda v: train(_unflat(v, like), name))
    point = _flat(like)
    exact = jax.jit(jax.grad(lambda v: train(_unflat(v, like), name)))(point)
    h = 1e-6
    central = jnp.stack(
        [
            (final(point.at[i].add(h)) - final(point.at[i].add(-h))) / (2 * h)
            for i in range(point.size)
        ]
    )
    np.testing.assert_allclose(exact, central, rtol=1e-5, atol=1e-8)
    assert jnp.all(jnp.abs(exact) > 1e-4)  # every hyperparameter matters here


def test_scan_training_loop_equals_python_loop():
    tx = fo.chain(
        fo.clip_grad_norm(1.0),
        fo.rmsprop(lr=fo.cosine_annealing_lr(0.05, T_max=20), momentum=0.5),
    )
    step = lambda carry, _: (functional_step("rmsprop", tx, *carry), None)  # noqa: E731
    params = initial_params("rmsprop")
    carry = (params, tx.init(params))
    (scanned, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=20))(carry)
    jitted = jax.jit(step)
    for _ in range(20):
        carry, _ = jitted(carry, None)
    chex.assert_trees_all_close(scanned, carry[0], rtol=1e-12)
    assert loss_fn(scanned) < 0.5 * loss_fn(params)

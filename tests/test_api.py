"""The functional core: errors, transformations of JAX, clipping, optax/flax drop-in."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from reference import to_numpy

import functorch_optim as fo

# --- torch's errors ------------------------------------------------------------------

BAD_OPTIONS = [
    ("sgd", torch.optim.SGD, dict(lr=-1.0)),
    ("adam", torch.optim.Adam, dict(lr=float("nan"))),
    ("sgd", torch.optim.SGD, dict(momentum=-0.5)),
    ("sgd", torch.optim.SGD, dict(weight_decay=-1e-3)),
    ("sgd", torch.optim.SGD, dict(nesterov=True)),
    ("sgd", torch.optim.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1)),
    ("sgd", torch.optim.SGD, dict(fused=True, differentiable=True)),
    ("sgd", torch.optim.SGD, dict(fused=True, foreach=True)),
    ("adam", torch.optim.Adam, dict(lr=-1e-3)),
    ("adam", torch.optim.Adam, dict(eps=-1.0)),
    ("adam", torch.optim.Adam, dict(betas=(1.0, 0.999))),
    ("adam", torch.optim.Adam, dict(betas=(-0.1, 0.999))),
    ("adam", torch.optim.Adam, dict(betas=(0.9, 1.0))),
    ("adam", torch.optim.Adam, dict(betas=(0, 0.999))),
    ("adam", torch.optim.Adam, dict(weight_decay=-0.1)),
    ("adam", torch.optim.Adam, dict(fused=True, differentiable=True)),
    ("adam", torch.optim.Adam, dict(fused=True, foreach=True)),
    ("adamw", torch.optim.AdamW, dict(lr=-2.0)),
    ("adamw", torch.optim.AdamW, dict(betas=(0.9, 2.0))),
    ("adamw", torch.optim.AdamW, dict(weight_decay=-1.0)),
    ("adamw", torch.optim.AdamW, dict(fused=True, foreach=True)),
]


def _torch_error(torch_cls, options):
    with pytest.raises(Exception) as info:
        torch_cls([torch.zeros(2, requires_grad=True)], **options)
    return info.value


@pytest.mark.parametrize("name,torch_cls,options", BAD_OPTIONS)
def test_bad_options_raise_torchs_error(name, torch_cls, options):
    expected = _torch_error(torch_cls, options)
    with pytest.raises(type(expected)) as info:
        getattr(fo, name)(**options)
    assert str(info.value) == str(expected)


@pytest.mark.parametrize(
    "name,torch_cls,options",
    [
        ("adam", torch.optim.Adam, "lr"),
        ("sgd", torch.optim.SGD, "lr"),
        ("adam", torch.optim.Adam, "foreach-lr"),
    ],
)
def test_tensor_lr_errors(name, torch_cls, options):
    torch_kw = dict(lr=torch.ones(2))
    fo_kw = dict(lr=jnp.ones(2))
    if options == "foreach-lr":
        torch_kw, fo_kw = (
            dict(lr=torch.tensor(0.1), foreach=True),
            dict(lr=jnp.asarray(0.1), foreach=True),
        )
    expected = _torch_error(torch_cls, torch_kw)
    with pytest.raises(type(expected), match=str(expected)):
        getattr(fo, name)(**fo_kw)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        fo.adam(learning_rate=0.1)


# --- JAX transformations --------------------------------------------------------------


def _quadratic_run(lr, steps=5):
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.3)}
    tx = fo.adam(lr=lr, weight_decay=0.01)
    state = tx.init(params)

    def loss(p):
        return jnp.sum((p["w"] - 0.25) ** 2) + (p["b"] + 1.0) ** 2 * jnp.sum(p["w"])

    for _ in range(steps):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    return loss(params), params


def test_vmap_over_learning_rates_equals_separate_runs():
    lrs = jnp.array([1e-3, 1e-2, 0.05, 0.1])
    batched_loss, batched = jax.jit(jax.vmap(_quadratic_run))(lrs)
    for i, lr in enumerate(lrs):
        loss, params = _quadratic_run(lr)
        np.testing.assert_allclose(batched_loss[i], loss, rtol=1e-12)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], batched), params, rtol=1e-12
        )


def test_grad_with_respect_to_lr_matches_finite_difference():
    lr, h = 0.05, 1e-6

    def final_loss(lr):
        return _quadratic_run(lr)[0]

    exact = jax.jit(jax.grad(final_loss))(lr)
    central = (final_loss(lr + h) - final_loss(lr - h)) / (2 * h)
    np.testing.assert_allclose(exact, central, rtol=1e-6)
    assert abs(exact) > 1e-3  # the check is not vacuous


def test_scan_training_loop():
    tx = fo.sgd(lr=0.1, momentum=0.9)
    params = jnp.array([2.0, -3.0])

    def body(carry, _):
        params, state = carry
        updates, state = tx.update(2 * params, state, params)
        return (fo.apply_updates(params, updates), state), None

    carry = (params, tx.init(params))
    (final, _), _ = jax.lax.scan(body, carry, None, length=100)
    for _ in range(100):
        carry, _ = body(carry, None)
    chex.assert_trees_all_close(final, carry[0], rtol=1e-12)
    assert jnp.all(jnp.abs(final) < 1e-2)


def test_init_from_abstract_shapes():
    abstract = {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)}
    state = jax.eval_shape(fo.adam(amsgrad=True).init, abstract)
    assert isinstance(state, fo.AdamState)
    assert state.exp_avg["w"].shape == (3, 2)
    assert state.max_exp_avg_sq["w"].shape == (3, 2)
    assert state.count.shape == () and state.count.dtype == jnp.int32


# --- clipping ------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("with_empty", [False, True])
def test_clip_grad_norm_matches_torch(norm_type, with_empty):
    rng = np.random.default_rng(0)
    shapes = [(3,), (2, 4), ()] + ([(0,)] if with_empty else [])
    grads = [rng.standard_normal(s) for s in shapes]
    if with_empty and math.isinf(norm_type):  # torch has no inf norm of nothing
        tensors = [torch.zeros(0, requires_grad=True)]
        tensors[0].grad = torch.zeros(0)
        with pytest.raises(RuntimeError) as expected:
            torch.nn.utils.clip_grad_norm_(tensors, 0.7, norm_type=norm_type)
        with pytest.raises(RuntimeError) as ours:
            fo.clip_grad_norm(0.7, norm_type).update(
                [jnp.asarray(g) for g in grads], ()
            )
        assert str(ours.value) == str(expected.value)
        return
    tensors = [
        torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads
    ]
    for t, g in zip(tensors, grads):
        t.grad = torch.tensor(g)
    torch_norm = torch.nn.utils.clip_grad_norm_(tensors, 0.7, norm_type=norm_type)
    clipped, _ = fo.clip_grad_norm(0.7, norm_type=norm_type).update(
        [jnp.asarray(g) for g in grads], ()
    )
    np.testing.assert_allclose(
        fo.global_norm([jnp.asarray(g) for g in grads], norm_type), torch_norm.item()
    )
    for c, t in zip(clipped, tensors):
        np.testing.assert_allclose(c, to_numpy(t.grad), rtol=1e-12)


def test_clip_grad_norm_error_if_nonfinite():
    grads = [jnp.array([1.0, jnp.inf])]
    tensors = [torch.zeros(2, requires_grad=True)]
    tensors[0].grad = torch.tensor([1.0, float("inf")])
    with pytest.raises(RuntimeError) as torch_error:
        torch.nn.utils.clip_grad_norm_(tensors, 1.0, error_if_nonfinite=True)
    tx = fo.clip_grad_norm(1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite") as ours:
        tx.update(grads, ())
    assert str(ours.value) == str(torch_error.value)
    with pytest.raises(Exception, match="non-finite"):
        jax.block_until_ready(jax.jit(tx.update)(grads, ()))


def test_clip_grad_value_matches_torch():
    g = np.linspace(-2, 2, 9)
    t = torch.zeros(9, dtype=torch.float64, requires_grad=True)
    t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_value_([t], 0.5)
    clipped, _ = fo.clip_grad_value(0.5).update([jnp.asarray(g)], ())
    np.testing.assert_array_equal(clipped[0], to_numpy(t.grad))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.0, math.inf, -math.inf])
def test_clip_grad_norm_injectable_under_jit(norm_type):
    """optax.inject_hyperparams makes max_norm and norm_type traced scalars: each
    order gives the result of the Python-float order, bit for bit."""
    grads = {"a": jnp.array([3.0, -4.0, 0.0]), "b": jnp.array([[1.5, -0.5]])}
    tx = optax.inject_hyperparams(fo.clip_grad_norm)(0.7, norm_type)
    clipped, _ = jax.jit(tx.update)(grads, tx.init(grads))
    expected, _ = fo.clip_grad_norm(0.7, norm_type).update(grads, ())
    chex.assert_trees_all_equal(clipped, expected)


def test_clip_grad_norm_underscore_matches_torch_on_a_facade_and_a_tree():
    """torch.nn.utils.clip_grad_norm_ clips each .grad in place and returns the
    total norm: fo.clip_grad_norm_ clips the facade's stored grads (None leaves
    skipped, as torch skips a None .grad) and returns the same norm."""
    rng = np.random.default_rng(4)
    values = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    grads = {"w": rng.standard_normal((3, 2)) * 3, "b": None}
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    tensors["w"].grad = torch.tensor(grads["w"])
    torch_norm = torch.nn.utils.clip_grad_norm_(tensors.values(), 0.5, norm_type=3.0)
    opt = fo.SGD({k: jnp.asarray(v) for k, v in values.items()}, lr=0.1)
    opt.grads = {"w": jnp.asarray(grads["w"]), "b": None}
    norm = fo.clip_grad_norm_(opt, 0.5, norm_type=3.0)
    np.testing.assert_allclose(norm, torch_norm.item(), rtol=1e-15)
    np.testing.assert_allclose(opt.grads["w"], to_numpy(tensors["w"].grad), rtol=1e-15)
    assert opt.grads["b"] is None
    clipped, tree_norm = fo.clip_grad_norm_({"w": jnp.asarray(grads["w"])}, 0.5, 3.0)
    np.testing.assert_array_equal(clipped["w"], opt.grads["w"])
    np.testing.assert_array_equal(tree_norm, norm)
    tensors["w"].grad = torch.tensor(grads["w"])
    torch.nn.utils.clip_grad_value_(tensors.values(), 0.25)
    opt.grads = {"w": jnp.asarray(grads["w"]), "b": None}
    assert fo.clip_grad_value_(opt, 0.25) is None
    np.testing.assert_array_equal(opt.grads["w"], to_numpy(tensors["w"].grad))


def test_chain_clip_then_adam_equals_torch():
    rng = np.random.default_rng(3)
    p0, grads = rng.standard_normal(5), [rng.standard_normal(5) * 4 for _ in range(3)]
    t = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.AdamW([t], lr=0.1)
    tx = fo.chain(fo.clip_grad_norm(1.0), fo.adamw(lr=0.1))
    params = jnp.asarray(p0)
    state = tx.init(params)
    for g in grads:
        t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([t], 1.0)
        opt.step()
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = fo.apply_updates(params, updates)
    np.testing.assert_allclose(params, to_numpy(t), rtol=1e-12)


# --- optax and flax drop-in -----------------------------------------------------------


def test_inside_optax_chain():
    tx = optax.chain(optax.clip_by_global_norm(1.0), fo.adam(lr=0.05))
    params = {"w": jnp.array([3.0, -4.0])}
    state = tx.init(params)
    loss = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
    for _ in range(200):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert loss(params) < 1e-3


def test_flax_nnx_optimizer_trains():
    from flax import nnx

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, fo.adamw(lr=0.05), wrt=nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 3)))
    y = x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3

    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    first = train_step(model, optimizer)
    for _ in range(300):
        last = train_step(model, optimizer)
    assert last < 0.01 * first


def test_flax_train_state_trains():
    from flax.training import train_state

    params = {"w": jnp.array([1.0, 2.0])}
    state = train_state.TrainState.create(
        apply_fn=None, params=params, tx=fo.sgd(lr=0.1, momentum=0.5)
    )

    @jax.jit
    def step(state):
        grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(state.params)
        return state.apply_gradients(grads=grads)

    for _ in range(100):
        state = step(state)
    assert jnp.all(jnp.abs(state.params["w"]) < 1e-3)


def test_float32_without_x64_matches_torch():
    """Users run with x64 off: scalars then live in float32; parity must hold."""
    script = textwrap.dedent(
        """
        import numpy as np, torch, jax, jax.numpy as jnp
        import functorch_optim as fo
        assert not jax.config.jax_enable_x64
        rng = np.random.default_rng(0)
        p0 = rng.standard_normal((4, 3)).astype(np.float32)
        t = torch.tensor(p0, requires_grad=True)
        opt = torch.optim.Adam([t], lr=0.01, amsgrad=True, weight_decay=0.1)
        tx = fo.adam(lr=0.01, amsgrad=True, weight_decay=0.1)
        p = jnp.asarray(p0); s = tx.init(p); update = jax.jit(tx.update)
        for k in range(10):
            g = rng.standard_normal((4, 3)).astype(np.float32)
            t.grad = torch.tensor(g); opt.step()
            u, s = update(jnp.asarray(g), s, p); p = fo.apply_updates(p, u)
        np.testing.assert_allclose(np.asarray(p), t.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
        assert p.dtype == jnp.float32
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_sgd_accepts_nan_lr_like_torch():
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=float("nan"))
    fo.sgd(lr=float("nan"))


def test_optax_chain_forwards_extra_args_to_our_transforms():
    """optax.chain passes ``value`` on: reduce-on-plateau sees a flat loss and cuts
    the step, exactly as inside fo.chain."""
    params = jnp.ones(2)
    results = []
    for chain in (optax.chain, fo.chain):
        tx = chain(fo.sgd(lr=1.0), fo.reduce_on_plateau(patience=1, factor=0.5))
        state = tx.init(params)
        for _ in range(4):  # the same loss every time: a plateau
            updates, state = tx.update(jnp.ones(2), state, params, value=1.0)
        results.append(updates)
    np.testing.assert_allclose(results[0], results[1])
    np.testing.assert_allclose(results[0], -0.5 * jnp.ones(2))


@pytest.mark.parametrize(
    "name,torch_cls,options",
    [
        ("sgd", torch.optim.SGD, dict(lr="0.1")),
        ("adam", torch.optim.Adam, dict(lr="0.1")),
        ("adam", torch.optim.Adam, dict(eps=[1e-8])),
        ("adamw", torch.optim.AdamW, dict(weight_decay="0")),
    ],
)
def test_non_numeric_hyperparameters_raise_torchs_type_error(name, torch_cls, options):
    expected = _torch_error(torch_cls, options)
    assert isinstance(expected, TypeError)
    with pytest.raises(TypeError) as ours:
        getattr(fo, name)(**options)
    assert str(ours.value) == str(expected)

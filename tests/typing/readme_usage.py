"""The README's and the docs' code, as a user's typed script: CI runs mypy and
pyright on this folder (``.ci/run``) and tests/test_types.py runs it, so the
documented code both type-checks and works.

Each block is the README's (or the guide's) code with the setup it leaves to the
reader (params, a torch model, batches) written out, type-correct. ``assert_type``
pins the types a user relies on; :func:`rejected` holds calls the checkers must
flag, each with an ignore comment that the checkers report if it is unneeded.
"""
# mypy: warn-unused-ignores
# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any, assert_type

import jax
import jax.numpy as jnp
import optax
import torch
from flax import nnx

import functorch_optim as fo

Params = dict[str, jax.Array]
Batch = tuple[jax.Array, jax.Array]


def loss_fn(p: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def batches(n: int) -> Iterator[Batch]:
    for i in range(n):
        x = jnp.full((4, 3), 0.1 * i)
        yield x, jnp.ones((4, 2))


def torch_model() -> torch.nn.Module:
    """A torch module whose parameters are ``w`` and ``b``."""
    model = torch.nn.Module()
    model.register_parameter("w", torch.nn.Parameter(torch.zeros(3, 2)))
    model.register_parameter("b", torch.nn.Parameter(torch.zeros(2)))
    return model


def functional_quickstart() -> tuple[Params, optax.OptState]:
    """README, "Functional quickstart"."""
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    tx = fo.chain(fo.clip_grad_norm(1.0), fo.adamw(lr=3e-4, weight_decay=0.1))
    state = tx.init(params)

    @jax.jit
    def train_step(
        params: Params, state: optax.OptState, x: jax.Array, y: jax.Array
    ) -> tuple[Params, optax.OptState]:
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    for x, y in batches(3):
        params, state = train_step(params, state, x, y)
    return params, state


def hyperparameters(params: Params) -> None:
    """README: a hyperparameter is a float, a JAX scalar or a schedule; the state
    is a NamedTuple with optax's shape and torch's names."""
    fo.sgd(lr=0.1, momentum=0.9)
    fo.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    fo.adam(lr=jnp.asarray(1e-3))
    fo.adam(lr=fo.cosine_annealing_lr(1e-3, T_max=100))
    fo.adam(lr=optax.cosine_decay_schedule(1e-3, decay_steps=100))
    fo.adam(lr=lambda count: 1e-3 * 0.99**count)
    fo.sgd(lr=fo.cosine_annealing_lr(0.1, T_max=100), momentum=0.9)
    fo.muon(lr=0.02, ns_steps=5)
    fo.rprop(lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50))
    fo.adafactor(lr=1e-2, eps=(None, 1e-3))

    tx = fo.adam(lr=1e-3, amsgrad=True)
    state = tx.init(params)
    assert_type(state, fo.AdamState)
    assert_type(state.count, jax.Array)
    exp_avg: Params = state.exp_avg
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    assert_type(state, fo.AdamState)
    max_exp_avg_sq: Params = state.max_exp_avg_sq
    del exp_avg, updates, max_exp_avg_sq
    assert_type(fo.sgd(momentum=0.9).init(params), fo.SGDState)

    optax.tree_utils.tree_get(state, "count")
    optax.inject_hyperparams(fo.adam)(lr=1e-3)
    optax.chain(
        optax.inject_hyperparams(fo.clip_grad_norm)(1.0),
        optax.inject_hyperparams(fo.adam)(lr=1e-3),
    )
    fo.with_param_groups(
        fo.adamw,
        [{"params": lambda name, p: p.ndim >= 2, "weight_decay": 0.1}],
        lr=6e-4,
    )
    fo.packed(fo.adam(1e-3)).init(params)


def interop(params: Params, tx: optax.GradientTransformation) -> None:
    """README: a functional state moves to a torch optimizer and back."""
    model = torch_model()
    state = tx.init(params)
    sd = fo.interop.torch_state_dict(tx, state, params, order=model)
    torch_opt = torch.optim.Adam(model.named_parameters(), lr=1e-3)
    torch_opt.load_state_dict(sd)
    fo.interop.load_into_torch(torch_opt, sd)
    state = fo.interop.load_torch_state(tx, torch_opt.state_dict(), params)


def facade_quickstart(params: Params) -> Params:
    """README, "Torch-style quickstart"."""
    model = torch_model()
    named = dict(model.named_parameters())
    torch_groups: list[dict[str, Any]] = [
        {"params": [("w", named["w"])], "lr": 1e-3},
        {"params": [("b", named["b"])]},
    ]
    torch_opt = torch.optim.Adam(torch_groups, lr=1e-2)
    opt = fo.Adam(
        [{"params": {"w": params["w"]}, "lr": 1e-3}, {"params": {"b": params["b"]}}],
        lr=1e-2,
    )
    sched = fo.lr_scheduler.StepLR(opt, step_size=30)
    for x, y in batches(3):
        # p: the params as given, one dict per group
        opt.step(lambda p, x=x, y=y: loss_fn({**p[0], **p[1]}, x, y))
        sched.step()
    grouped = opt.params
    fo.interop.load_into_torch(torch_opt, opt.state_dict())
    opt.load_state_dict(torch_opt.state_dict())

    opt2 = fo.SGD(params, lr=0.1, momentum=0.9, weight_decay=0, nesterov=True)
    assert_type(opt2, fo.SGD)
    opt2.step(jax.grad(loss_fn)(opt2.params, *next(batches(1))))
    fo.AdamW(params, lr=jnp.asarray(3e-4), betas=(0.9, 0.95), maximize=False)
    fo.LBFGS(params, line_search_fn="strong_wolfe")
    fo.LBFGS(params, lr=0.5, line_search_fn="strong_wolfe")
    lbfgs_state = fo.lbfgs(lr=0.5).init(params)
    assert_type(lbfgs_state["orig_loss"], jax.Array)
    return {**grouped[0], **grouped[1]}


def carved_groups(params: Params) -> None:
    """README: a recipe's groups carved from one tree."""
    groups = fo.carve_groups(
        params,
        [
            {"params": lambda name, p: p.ndim >= 2, "weight_decay": 0.1},
            {"params": lambda name, p: p.ndim < 2, "weight_decay": 0.0},
        ],
    )
    opt = fo.AdamW(groups, lr=6e-4, betas=(0.9, 0.95))
    opt.step(jax.grad(loss_fn)(opt.params, *next(batches(1))))
    model = torch_model()
    tied = fo.interop.tied_names(model)
    fo.interop.with_tied(opt.params, tied)


def checkpoint(params: Params) -> None:
    """README, "What a checkpoint file may contain"."""
    opt = fo.Adam(params, lr=1e-3)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "opt.fockpt")
        fo.checkpoint.save(path, opt.state_dict())
        opt.load_state_dict(fo.checkpoint.restore(path))


def docs_index(params: Params) -> None:
    """docs/index.rst."""
    grads = jax.tree.map(jnp.ones_like, params)
    tx = fo.chain(fo.clip_grad_norm(1.0), fo.adamw(lr=3e-4, weight_decay=0.1))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = fo.apply_updates(params, updates)

    opt = fo.AdamW(params, lr=3e-4)
    opt.step(grads)
    fo.lr_scheduler.CosineAnnealingLR(opt, T_max=100)


def docs_from_optax() -> None:
    """docs/from_optax.rst, flax: nnx.Optimizer takes the transform."""
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, fo.adamw(lr=3e-4), wrt=nnx.Param)
    x = jnp.ones((4, 3))
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)


def rejected(params: Params) -> None:
    """Calls the checkers flag (not run: each raises)."""
    fo.Adam(params, lrr=1e-3)  # type: ignore[call-arg]
    fo.Adam(params, 1e-3, (0.9, 0.999), 1e-8, 0, False, None)  # type: ignore[call-arg]
    fo.adam(lr="1e-3")  # type: ignore[arg-type]
    fo.muon(ns_steps=5.0)  # type: ignore[arg-type]
    fo.LBFGS(params, lrr=0.5)  # type: ignore[call-arg]
    fo.lbfgs(history_size=10.0)  # type: ignore[arg-type]
    fo.adam().init(params).momentum_buffer = None  # type: ignore[attr-defined]


def main() -> None:
    params, state = functional_quickstart()
    del state
    hyperparameters(params)
    interop(params, fo.adam(lr=1e-3))
    facade_quickstart(params)
    carved_groups(params)
    checkpoint(params)
    docs_index(params)
    docs_from_optax()


if __name__ == "__main__":
    main()

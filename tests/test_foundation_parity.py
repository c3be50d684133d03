"""SGD, Adam and AdamW against torch.optim, step by step, over every option."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import pytest
import torch
from reference import (
    DTYPES,
    SHAPES,
    assert_trajectories_close,
    functional_trajectory,
    grad_sequence,
    random_arrays,
    scale_lr_after_each_step,
    torch_trajectory,
)

import functorch_optim as fo

STEPS = 4


def _sgd_grid():
    for momentum, dampening, nesterov in [
        (0.0, 0.0, False),
        (0.9, 0.0, False),
        (0.9, 0.0, True),
        (0.8, 0.3, False),
    ]:
        for weight_decay, maximize in itertools.product([0.0, 0.1], [False, True]):
            yield dict(
                lr=0.1,
                momentum=momentum,
                dampening=dampening,
                nesterov=nesterov,
                weight_decay=weight_decay,
                maximize=maximize,
            )


def _adam_grid(decoupled_options=(False, True)):
    for amsgrad, maximize, weight_decay, decoupled in itertools.product(
        [False, True], [False, True], [0.0, 0.1], decoupled_options
    ):
        options = dict(
            lr=0.05,
            betas=(0.8, 0.95),
            amsgrad=amsgrad,
            maximize=maximize,
            weight_decay=weight_decay,
        )
        if decoupled is not None:
            options["decoupled_weight_decay"] = decoupled
        yield options


CASES = (
    [("sgd", torch.optim.SGD, o) for o in _sgd_grid()]
    + [("adam", torch.optim.Adam, o) for o in _adam_grid()]
    + [("adamw", torch.optim.AdamW, o) for o in _adam_grid((None,))]
)


def _case_id(case):
    name, _, options = case
    flags = ",".join(f"{k}={v}" for k, v in options.items() if k not in ("lr", "betas"))
    return f"{name}[{flags}]"


def _run_both(name, torch_cls, options, dtype, jit=True):
    params = random_arrays(0, SHAPES, dtype)
    grads = grad_sequence(STEPS, SHAPES, dtype)
    expected = torch_trajectory(
        lambda ps: torch_cls(ps, **options), params, grads, dtype
    )
    tx = getattr(fo, name)(**options)
    actual = functional_trajectory(tx, params, grads, dtype, jit=jit)
    return assert_trajectories_close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_parity_jit(case, dtype):
    _run_both(*case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case",
    # the richest case of each algorithm: momentum+decay, amsgrad+coupled decay
    [
        c
        for c in CASES
        if c[2].get("weight_decay")
        and c[2].get("maximize")
        and (c[2].get("momentum") or c[2].get("amsgrad"))
    ][::3],
    ids=_case_id,
)
def test_parity_without_jit(case, dtype):
    _run_both(*case, dtype, jit=False)


@pytest.mark.parametrize(
    "name,torch_cls",
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
    ],
)
def test_lr_as_array(name, torch_cls):
    params = random_arrays(0, SHAPES, "float64")
    grads = grad_sequence(STEPS, SHAPES, "float64")
    expected = torch_trajectory(
        lambda ps: torch_cls(ps, lr=torch.tensor(0.03, dtype=torch.float64)),
        params,
        grads,
        "float64",
    )
    tx = getattr(fo, name)(lr=jnp.asarray(0.03))
    actual = functional_trajectory(tx, params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")


def test_lr_schedule_is_evaluated_on_the_step_count():
    """A schedule sees 0, 1, 2, ... exactly as torch's lr set before each step."""
    schedule = lambda count: 0.1 * 0.5**count  # noqa: E731
    params = random_arrays(0, SHAPES, "float64")
    grads = grad_sequence(STEPS, SHAPES, "float64")

    def make_torch(ps):
        return scale_lr_after_each_step(torch.optim.Adam(ps, lr=0.1), 0.5)

    expected = torch_trajectory(make_torch, params, grads, "float64")
    actual = functional_trajectory(fo.adam(lr=schedule), params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")


def test_dtypes_and_structure_are_preserved():
    params = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": [jnp.zeros((), jnp.float32)]}
    tx = fo.adam(lr=0.1, amsgrad=True)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.dtype == p.dtype and u.shape == p.shape
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert before.dtype == after.dtype and before.shape == after.shape
    assert state._fields == ("count", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def test_update_without_params():
    params = [jnp.ones(3)]
    grads = [jnp.full(3, 0.5)]
    tx = fo.adam(lr=0.1)
    with_params, _ = tx.update(grads, tx.init(params), params)
    without, _ = tx.update(grads, tx.init(params))
    assert jnp.allclose(with_params[0], without[0])
    decayed = fo.adamw(lr=0.1)
    with pytest.raises(ValueError, match="needs params"):
        decayed.update(grads, decayed.init(params))


def test_betas_as_schedules():
    """Schedules inside a tuple option are evaluated too (cycled betas)."""
    beta1 = lambda count: 0.9 - 0.1 * (count % 2)  # noqa: E731
    tx = fo.adam(lr=0.1, betas=(beta1, lambda count: 0.999))
    params = random_arrays(0, SHAPES, "float64")
    grads = grad_sequence(STEPS, SHAPES, "float64")

    def make_torch(ps):
        opt = torch.optim.Adam(ps, lr=0.1)
        original_step = opt.step

        def step():
            original_step()
            b1 = 0.8 if opt.param_groups[0]["betas"][0] == 0.9 else 0.9
            opt.param_groups[0]["betas"] = (b1, 0.999)

        opt.step = step
        return opt

    expected = torch_trajectory(make_torch, params, grads, "float64")
    actual = functional_trajectory(tx, params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")

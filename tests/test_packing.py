"""Packed execution (functorch_optim.packing) against the per-leaf path and torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reference import (
    TOLERANCE,
    assert_trajectories_close,
    functional_trajectory,
    grad_sequence,
    random_arrays,
    torch_trajectory,
)

import functorch_optim as fo
from functorch_optim import packing

STEPS = 3

# Buckets of same-shape leaves (packed), including scalars and size 0, and one leaf
# stepped alone: (4, 5) is above MAX_PACKED_SIZE as the tests lower it to 10.
SHAPES = ((3,),) * 4 + ((2, 3),) * 4 + ((),) * 4 + ((0,),) * 4 + ((4, 5),)

ELEMENTWISE = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    "adam": {"lr": 0.1, "amsgrad": True, "weight_decay": 0.1},
    "adamw": {"lr": 0.1, "maximize": True},
    "adamax": {"lr": 0.1, "weight_decay": 0.1},
    "adagrad": {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "adadelta": {"lr": 0.5, "rho": 0.8, "weight_decay": 0.1},
    "rmsprop": {"lr": 0.01, "centered": True, "momentum": 0.5},
    "rprop": {"lr": 0.01},
    "nadam": {"lr": 0.1, "decoupled_weight_decay": True, "weight_decay": 0.1},
    "radam": {"lr": 0.1, "weight_decay": 0.1},
    "asgd": {"lr": 0.1, "t0": 1.0},
}

TORCH = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adamax": torch.optim.Adamax,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "rprop": torch.optim.Rprop,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "asgd": torch.optim.ASGD,
}


@pytest.fixture
def packed(monkeypatch):
    monkeypatch.setattr(packing, "ENABLED", True)
    monkeypatch.setattr(packing, "MAX_PACKED_SIZE", 10)


def test_every_elementwise_algorithm_opts_in():
    for name in ELEMENTWISE:
        tx_module = getattr(fo, name).__module__
        algorithms = [
            v
            for v in vars(__import__(tx_module, fromlist=["_"])).values()
            if isinstance(v, fo.algorithms.base.Algorithm)
        ]
        assert algorithms and all(a.elementwise for a in algorithms), name
    assert not fo.algorithms.base.Algorithm.elementwise  # the default: per leaf


def test_buckets_split_by_shape_dtype_state_and_size(packed):
    params = [jnp.zeros(3, jnp.float32)] * 4 + [jnp.zeros(3, jnp.float64)] * 4
    params += [jnp.zeros(20)] * 4  # above MAX_PACKED_SIZE
    params += [jnp.zeros(2)] * 3  # too few to pack
    grads = [jnp.zeros_like(p) for p in params]
    grads[1] = None  # no gradient: stepped alone (by the caller's rules)
    states = [{"step": jnp.zeros((), jnp.int32), "m": None} for _ in params]
    states[2] = {"step": jnp.zeros((), jnp.int32), "m": jnp.zeros(3)}
    packed_buckets, alone = packing.buckets(params, grads, states)
    assert packed_buckets == [[4, 5, 6, 7]]
    assert sorted(alone) == [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14]


@pytest.mark.parametrize(
    "name, dtype",
    [
        *((name, "float64") for name in ELEMENTWISE),
        # The stacking itself is dtype-agnostic: other dtypes on a few rules,
        # including ASGD's per-leaf scalar state (eta, mu).
        *(
            (name, dtype)
            for name in ("sgd", "adam", "asgd")
            for dtype in ("complex64", "bfloat16")
        ),
    ],
)
def test_packed_equals_per_leaf(name, dtype, monkeypatch):
    """The packed path runs the same rule, with per-leaf step counts that differ
    between the leaves of one bucket. Not bit for bit: XLA CPU evaluates a batched
    ``pow``/``sqrt`` of the per-leaf scalars with vectorized code that may differ
    from the scalar one by an ulp."""
    tx = getattr(fo, name)(**ELEMENTWISE[name])
    params = [jnp.asarray(p, dtype) for p in random_arrays(0, SHAPES, "float64")]
    if dtype == "complex64":
        params = [p * (1 + 0.5j) for p in params]
    grad_steps = [
        [jnp.asarray(g, params[0].dtype) for g in step]
        for step in grad_sequence(STEPS, SHAPES, "float64")
    ]

    def run(enabled):
        monkeypatch.setattr(packing, "ENABLED", enabled)
        monkeypatch.setattr(packing, "MAX_PACKED_SIZE", 10)
        state = tx.init(params)
        # Leaves of one bucket at different step counts (one leaf restarted later).
        state["step"] = [jnp.asarray(i % 3, jnp.int32) for i in range(len(params))]

        @jax.jit  # one compile for all steps (eager mode compiles op by op)
        def step(leaves, state, grads):
            updates, state = tx.update(grads, state, leaves)
            return fo.apply_updates(leaves, updates), state

        leaves, out = params, []
        for grads in grad_steps:
            leaves, state = step(leaves, state, grads)
            out.append((leaves, state))
        return out

    rtol, atol = TOLERANCE[dtype]
    for (p_packed, s_packed), (p_leaf, s_leaf) in zip(run(True), run(False)):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                np.asarray(a, np.complex128 if dtype == "complex64" else np.float64),
                np.asarray(b, np.complex128 if dtype == "complex64" else np.float64),
                rtol=rtol,
                atol=atol,
            ),
            (p_packed, s_packed),
            (p_leaf, s_leaf),
        )


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_packed_matches_torch_under_jit(name, packed):
    dtype = "float32"
    options = ELEMENTWISE[name]
    params = random_arrays(0, SHAPES, dtype)
    grads = grad_sequence(STEPS, SHAPES, dtype)
    expected = torch_trajectory(
        lambda ps: TORCH[name](ps, **options), params, grads, dtype
    )
    actual = functional_trajectory(getattr(fo, name)(**options), params, grads, dtype)
    assert_trajectories_close(actual, expected, dtype)


def test_packed_path_is_used(packed):
    """One vmapped kernel per bucket: the traced program has one batched update."""
    params = [jnp.ones(3)] * 6
    tx = fo.adam(lr=0.1)
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(lambda p, s: tx.update(p, s, p))(params, state)
    sqrt_shapes = [
        e.outvars[0].aval.shape for e in jaxpr.eqns if e.primitive.name == "sqrt"
    ]
    assert sqrt_shapes == [(6, 3)]

"""Numerics at the edges, against torch: non-finite entries where torch's Python
scalar arithmetic decides (Adafactor's ``max``), and subnormal numbers, which XLA's
CPU runtime flushes to zero where torch keeps them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch
from reference import (
    assert_trajectories_close,
    functional_trajectory,
    to_jax,
    to_numpy,
    to_torch,
    torch_trajectory,
)

import functorch_optim as fo

NAN, INF = float("nan"), float("inf")

# --- Adafactor: Python's max over a norm that is NaN or inf ---------------------------

# A vector (one variance) and a matrix (factored row and column variances), each
# with a NaN, an inf or both among its parameters, or a NaN in its first gradient.
NONFINITE = {
    "nan param": ([1.0, NAN, 3.0, -2.0], [[0.5, NAN], [-1.0, 2.0]], None),
    "inf param": ([1.0, INF, 3.0, -2.0], [[0.5, -INF], [-1.0, 2.0]], None),
    "nan and inf param": ([1.0, NAN, -INF, -2.0], [[NAN, INF], [-1.0, 2.0]], None),
    "nan grad": ([1.0, 0.5, 3.0, -2.0], [[0.5, 1.5], [-1.0, 2.0]], (1, 0)),
}
ADAFACTOR_STEPS = 3


def _adafactor_data(case: str):
    vector, matrix, nan_at = NONFINITE[case]
    rng = np.random.default_rng(0)
    params = [np.array(vector), np.array(matrix)]
    grads = [
        [rng.standard_normal(p.shape) for p in params] for _ in range(ADAFACTOR_STEPS)
    ]
    if nan_at is not None:
        grads[0][0][nan_at[0]] = NAN
        grads[0][1][nan_at] = NAN
    return params, grads


# The harness's largest-difference summary subtracts inf from inf.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", NONFINITE)
def test_adafactor_nonfinite_entries_match_torch(case, dtype):
    """torch takes ``max(eps2, RMS(param))`` and ``max(1, RMS(update) / d)`` with
    Python's ``max``, which keeps its first argument unless the second is greater:
    a NaN norm gives ``eps2`` (and 1), so one NaN entry stays one NaN entry; an inf
    norm gives inf. The NaN and inf entries land where torch's do, functional and
    facade alike."""
    params, grads = _adafactor_data(case)
    options = dict(lr=0.1, weight_decay=0.01)
    expected = torch_trajectory(
        lambda ts: torch.optim.Adafactor(ts, **options), params, grads, dtype
    )
    # torch's last step is non-finite somewhere in every case
    assert any(not np.isfinite(p).all() for p in expected[-1])
    functional = functional_trajectory(fo.adafactor(**options), params, grads, dtype)
    assert_trajectories_close(functional, expected, dtype)

    opt = fo.Adafactor([to_jax(p, dtype) for p in params], **options)
    facade = []
    for step_grads in grads:
        opt.step([to_jax(g, dtype) for g in step_grads])
        facade.append([to_numpy(p) for p in opt.params])
    assert_trajectories_close(facade, expected, dtype)


# --- subnormal numbers: flushed to zero by XLA on the CPU, kept by torch -------------

# (lr, param, grad) of the first entry, in units of the dtype's smallest normal
# number: a subnormal param, which a step with lr=0 keeps, or two normal numbers
# whose difference is subnormal. The other entries are normal.
SUBNORMAL = {"subnormal param": (0.0, 0.25, 1.0), "subnormal result": (1.0, 1.5, 1.0)}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="pins XLA's CPU runtime")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", SUBNORMAL)
def test_subnormals_flush_to_zero_on_xla_cpu_where_torch_keeps_them(case, dtype):
    """XLA's CPU runtime computes with flush-to-zero and denormals-are-zero set, so
    a subnormal input reads as 0 and a subnormal result is written as 0; torch's
    CPU kernels keep both. SGD with lr=0 still computes ``param - 0 * grad``, in
    torch and here. The normal entries are torch's exactly. (README, "Parity".)"""
    lr, param, grad = SUBNORMAL[case]
    tiny = float(np.finfo(dtype).smallest_normal)
    params, grads = (
        np.array([param * tiny, 1.5, -2.5]),
        np.array([grad * tiny, 0.25, 2]),
    )
    t = to_torch(params, dtype).requires_grad_()
    t.grad = to_torch(grads, dtype)
    torch.optim.SGD([t], lr=lr).step()
    theirs = to_numpy(t)
    assert theirs[0] != 0 and abs(theirs[0]) < np.finfo(dtype).smallest_normal

    tx = fo.sgd(lr=lr)
    p = to_jax(params, dtype)
    updates, _ = jax.jit(tx.update)(to_jax(grads, dtype), tx.init(p), p)
    functional = np.asarray(jax.jit(fo.apply_updates)(p, updates))
    opt = fo.SGD({"w": to_jax(params, dtype)}, lr=lr)
    opt.step({"w": to_jax(grads, dtype)})
    facade = np.asarray(opt.params["w"])
    for ours in (functional, facade):
        assert ours[0] == 0.0
        np.testing.assert_array_equal(ours[1:], theirs[1:])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="pins XLA's CPU runtime")
def test_no_xla_flag_keeps_subnormals_on_the_cpu():
    """``--xla_cpu_ftz=false`` only changes XLA's generated code; its CPU runtime
    still sets flush-to-zero, so subnormals are flushed either way."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        tiny = jnp.float32(3e-39)
        print(float(jax.jit(lambda x: x + x)(tiny)), float(tiny + tiny))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_ftz=false", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env
    )
    assert done.stdout.split() == ["0.0", "0.0"], done.stderr[-2000:]

"""``capturable=True`` and tensor hyperparameters compute with torch's scalar dtypes.

On that path torch keeps ``step`` (and ASGD's ``eta``/``mu``, NAdam's
``mu_product``) as float32 tensors, so the bias corrections and step sizes are
float32 tensors, for float64 parameters too; a float32 tensor ``lr`` likewise keeps
its dtype. torch's CPU build refuses ``capturable=True`` (its kernels are meant for
CUDA graphs), so the reference runs torch's own capturable code with the device
check widened to the CPU.

One float32 ulp of those scalars moves a float64 parameter by ~1e-10, so where
torch's own float32 result depends on the machine (its sqrt, which is not
correctly rounded on every machine; see ``reference.CorrectlyRounded``) a
trajectory is accepted when it is one of torch's possible trajectories, within
the same tolerance: the one torch gives here, or the one it gives with that sqrt
(and pow) correctly rounded. The library's own results do not depend on the
machine.
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reference import (
    MACHINES,
    CorrectlyRounded,
    assert_close_to_one_of,
    torch_spread,
)
from registry import BY_FACADE, SPECS

import functorch_optim as fo

# The registry's capturable options, by torch's class name.
CASES = {
    spec.facade: spec.capturable
    for spec in SPECS.values()
    if spec.capturable is not None
}
STEPS = 8


@pytest.fixture
def torch_capturable_on_cpu(monkeypatch):
    for name in CASES:
        module = importlib.import_module(f"torch.optim.{name.lower()}")
        if hasattr(module, "_get_capturable_supported_devices"):  # AdamW: Adam's
            monkeypatch.setattr(
                module, "_get_capturable_supported_devices", lambda *_, **__: ["cpu"]
            )


RTOL, ATOL = 1e-12, 1e-14


def _data():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3))
    return start, [rng.normal(size=(4, 3)) for _ in range(STEPS)]


def _torch_run(name: str, theirs: dict, start, grads):
    """A torch run from ``start`` fed ``grads``: the parameters after each step."""

    def run():
        tensor = torch.tensor(start, requires_grad=True)
        options = {
            k: v.clone() if isinstance(v, torch.Tensor) else v
            for k, v in theirs.items()
        }
        optimizer = BY_FACADE[name].torch_cls([tensor], **options)
        out = []
        for grad in grads:
            tensor.grad = torch.tensor(grad)
            optimizer.step()
            out.append(tensor.detach().numpy().copy())
        return out

    return run


def _our_run(name: str, ours: dict, start, grads) -> list:
    tx = BY_FACADE[name].functional(**ours)
    params = jnp.asarray(start)
    state = tx.init(params)
    out = []
    for grad in grads:
        updates, state = tx.update(jnp.asarray(grad), state, params)
        params = fo.apply_updates(params, updates)
        out.append(np.asarray(params))
    return out


def _trajectories(name: str, ours: dict, theirs: dict):
    start, grads = _data()
    expected = torch_spread(_torch_run(name, theirs, start, grads), MACHINES)
    actual = _our_run(name, ours, start, grads)
    assert_close_to_one_of(actual, expected, RTOL, ATOL)


@pytest.mark.usefixtures("torch_capturable_on_cpu")
@pytest.mark.parametrize("name", CASES)
def test_capturable_keeps_torchs_float32_scalars(name):
    options = {**CASES[name], "capturable": True}
    _trajectories(name, options, options)


@pytest.mark.usefixtures("torch_capturable_on_cpu")
@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("name", CASES)
def test_a_float32_tensor_lr_on_float64_params(name, capturable):
    lr = CASES[name]["lr"]
    ours = {**CASES[name], "lr": jnp.float32(lr), "capturable": capturable}
    theirs = {
        **CASES[name],
        "lr": torch.tensor(lr, dtype=torch.float32),
        "capturable": capturable,
    }
    _trajectories(name, ours, theirs)


# --- the spread on a machine whose torch rounds otherwise, simulated on any -----------

# The float32 value whose square root torch 2.13 rounds one ulp low on an AVX-512
# AMD EPYC: 0.0631975308 there, 0.0631975383 correctly rounded.
ROUNDED_LOW_THERE = np.float32(0.0039939284)


class _OneUlpLow(CorrectlyRounded):
    """A machine whose torch rounds every float32 sqrt and pow one ulp toward zero,
    as that EPYC's torch rounds ``sqrt(ROUNDED_LOW_THERE)``."""

    def adjust(self, func, result):
        if result.dtype != np.float32:
            return result
        return np.nextafter(result, np.float32(0))


def test_sqrt_correctly_rounded_and_one_ulp_low():
    """CorrectlyRounded gives IEEE 754's (NumPy's, XLA's) sqrt on any machine, and
    the simulation gives the value torch gives on that EPYC."""
    x = torch.tensor(ROUNDED_LOW_THERE)
    with CorrectlyRounded():
        assert torch.sqrt(x).item() == 0.0631975382566452
    with _OneUlpLow():
        assert torch.sqrt(x).item() == 0.0631975308060646
    assert float(jnp.sqrt(ROUNDED_LOW_THERE)) == 0.0631975382566452
    values = np.random.default_rng(0).random(10_000)
    for dtype in (torch.float32, torch.float64):
        tensor = torch.tensor(values, dtype=dtype)
        with CorrectlyRounded():
            corrected = tensor.sqrt().numpy()
        np.testing.assert_array_equal(corrected, np.sqrt(tensor.numpy()))
        np.testing.assert_array_equal(jnp.sqrt(tensor.numpy()), corrected)


@pytest.mark.usefixtures("torch_capturable_on_cpu")
@pytest.mark.parametrize("name", ["Adam", "RAdam", "ASGD"])
def test_the_spread_where_torch_rounds_one_ulp_low(name):
    """On a machine whose torch rounds its float32 sqrt (Adam, RAdam) and pow
    (ASGD) one ulp low, its trajectory alone rejects the library's, which the
    spread accepts as the correctly rounded one; a genuinely wrong trajectory (lr
    one float32 ulp high) is still rejected. capturable=True with a float32 tensor
    lr."""
    lr = CASES[name]["lr"]
    ours = {**CASES[name], "lr": jnp.float32(lr), "capturable": True}
    theirs = {**ours, "lr": torch.tensor(lr, dtype=torch.float32)}
    start, grads = _data()
    machines = {"rounding low": _OneUlpLow, "correctly rounded": CorrectlyRounded}
    expected = torch_spread(_torch_run(name, theirs, start, grads), machines)
    actual = _our_run(name, ours, start, grads)
    with pytest.raises(AssertionError):
        assert_close_to_one_of(actual, {"low": expected["rounding low"]}, RTOL, ATOL)
    assert assert_close_to_one_of(actual, expected, RTOL, ATOL) == "correctly rounded"
    wrong_lr = jnp.float32(np.nextafter(np.float32(lr), np.float32(1)))
    wrong = _our_run(name, {**ours, "lr": wrong_lr}, start, grads)
    with pytest.raises(AssertionError):
        assert_close_to_one_of(wrong, expected, RTOL, ATOL)

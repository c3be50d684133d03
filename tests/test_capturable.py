"""``capturable=True`` and tensor hyperparameters compute with torch's scalar dtypes.

On that path torch keeps ``step`` (and ASGD's ``eta``/``mu``, NAdam's
``mu_product``) as float32 tensors, so the bias corrections and step sizes are
float32 tensors, for float64 parameters too; a float32 tensor ``lr`` likewise keeps
its dtype. torch's CPU build refuses ``capturable=True`` (its kernels are meant for
CUDA graphs), so the reference runs torch's own capturable code with the device
check widened to the CPU.
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch
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


def _trajectories(name: str, ours: dict, theirs: dict):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(STEPS)]
    tensor = torch.tensor(start, requires_grad=True)
    spec = BY_FACADE[name]
    optimizer = spec.torch_cls([tensor], **theirs)
    tx = spec.functional(**ours)
    params = jnp.asarray(start)
    state = tx.init(params)
    for grad in grads:
        tensor.grad = torch.tensor(grad)
        optimizer.step()
        updates, state = tx.update(jnp.asarray(grad), state, params)
        params = fo.apply_updates(params, updates)
        np.testing.assert_allclose(
            np.asarray(params), tensor.detach().numpy(), rtol=1e-12, atol=1e-14
        )


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

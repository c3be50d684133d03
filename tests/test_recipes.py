"""The guide "Porting a PyTorch recipe" (docs/porting.rst): its recipes
(docs/recipes/*.py) run in torch as their authors wrote them and in both JAX
ports, facade and functional, in float64.

For each recipe and port: every logged step equals torch's (the params, the lr,
the gradient norm where the loop has one); a torch checkpoint, in the recipe's
own layout, resumes in JAX; and a checkpoint the port writes resumes in torch,
each continuing as the uninterrupted torch run.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import functorch_optim as fo

DOCS = Path(__file__).resolve().parents[1] / "docs"
APIS = ["facade", "functional"]
# recipe: (its three runs' name prefix, the whole run's length, where the first
# part of an interrupted run stops, the keyword that resumes)
RECIPES = {
    "nanogpt": ("train", 8, 4, {"init_from": "resume"}),
    "mnist": ("main", 4, 2, {"resume": True}),
    "layer_decay": ("main", 3, 1, {"resume": True}),
    "hf_glue": ("main", 3, 1, {"resume": True}),
}


def recipe(name: str):
    if str(DOCS) not in sys.path:
        sys.path.insert(0, str(DOCS))
    return importlib.import_module(f"recipes.{name}")


def run(name: str, api: str, out_dir: Path, part: bool = False, resume=False):
    """One run of the recipe's loop in ``api`` ("torch" or a port): the whole
    run, or the first part, or resumed from ``out_dir``'s checkpoint; returns its
    log: ``{key: (lr, norm, {name: params})}``."""
    prefix, length, first_part, resume_kwargs = RECIPES[name]
    log = {}

    def record(key, lr, norm, params):
        log[key] = (
            float(lr),
            None if norm is None else float(norm),
            {n: np.array(fo.interop.to_numpy(p)) for n, p in params.items()},
        )

    train = getattr(recipe(name), f"{prefix}_{api}")
    train(
        str(out_dir),
        first_part if part else length,
        log=record,
        **(resume_kwargs if resume else {}),
    )
    return log


_torch_runs: dict[str, dict] = {}


def torch_run(name: str, tmp_path_factory) -> dict:
    """The uninterrupted torch run, once per recipe."""
    if name not in _torch_runs:
        _torch_runs[name] = run(name, "torch", tmp_path_factory.mktemp(name))
    return _torch_runs[name]


def assert_log_equal(log: dict, expected: dict) -> None:
    assert log, "the run logged nothing"
    assert set(log) <= set(expected)
    for key, (lr, norm, params) in log.items():
        want_lr, want_norm, want_params = expected[key]
        np.testing.assert_allclose(lr, want_lr, rtol=1e-12, err_msg=f"lr at {key}")
        if want_norm is not None:
            np.testing.assert_allclose(norm, want_norm, rtol=1e-12)
        assert set(params) == set(want_params)
        for n, value in params.items():
            np.testing.assert_allclose(
                value, want_params[n], rtol=1e-12, atol=1e-14, err_msg=f"{n} at {key}"
            )


def assert_resumed(log: dict, expected: dict) -> None:
    """The run went on from a checkpoint (it did not start over) to the end."""
    assert min(log) > min(expected)
    assert set(log) == {key for key in expected if key >= min(log)}


def layout(out_dir: Path) -> dict:
    """What a run saved: each file's keys, and the keys of its dicts of tensors
    (a model's state dict)."""
    saved = {}
    for file in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        contents = torch.load(file)
        saved[str(file.relative_to(out_dir))] = {
            key: sorted(value)
            if isinstance(value, dict)
            and value
            and all(isinstance(v, torch.Tensor) for v in value.values())
            else None
            for key, value in contents.items()
        }
    return saved


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", list(RECIPES))
def test_every_step_equals_torch(name, api, tmp_path, tmp_path_factory):
    expected = torch_run(name, tmp_path_factory)
    log = run(name, api, tmp_path)
    assert set(log) == set(expected)
    assert_log_equal(log, expected)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", list(RECIPES))
def test_resumes_a_torch_checkpoint(name, api, tmp_path, tmp_path_factory):
    expected = torch_run(name, tmp_path_factory)
    run(name, "torch", tmp_path, part=True)
    log = run(name, api, tmp_path, resume=True)
    assert_resumed(log, expected)
    assert_log_equal(log, expected)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", list(RECIPES))
def test_torch_resumes_its_checkpoint(name, api, tmp_path, tmp_path_factory):
    expected = torch_run(name, tmp_path_factory)
    ours, theirs = tmp_path / api, tmp_path / "torch"
    ours.mkdir()
    theirs.mkdir()
    run(name, api, ours, part=True)
    run(name, "torch", theirs, part=True)
    assert layout(ours) == layout(theirs)  # the recipe's files, keys and names
    log = run(name, "torch", ours, resume=True)
    assert_resumed(log, expected)
    assert_log_equal(log, expected)


def test_torch_schedulers_refuse_the_facade():
    """transformers' scheduler factories build torch's LambdaLR, which takes
    only torch optimizers: the guide's reason to use fo.lr_scheduler.LambdaLR."""
    hf = recipe("hf_glue")
    optimizer = fo.AdamW({"w": jnp.ones(2)})
    with pytest.raises(TypeError, match="^AdamW is not an Optimizer$"):
        hf.get_linear_schedule_with_warmup(optimizer, 2, 10)
    scheduler = fo.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: hf._get_linear_schedule_with_warmup_lr_lambda(
            step, num_warmup_steps=2, num_training_steps=10
        ),
    )
    assert scheduler.get_last_lr() == [0.0]


def test_a_python_if_lambda_fails_under_jit_and_its_jnp_form_matches():
    """HF's lambda (Python's if) as a functional schedule raises under jit; the
    recipe's jnp.where form gives torch's lrs."""
    hf = recipe("hf_glue")

    def lr_lambda(step):
        return hf._get_linear_schedule_with_warmup_lr_lambda(
            step, num_warmup_steps=2, num_training_steps=10
        )

    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(fo.lambda_lr(1e-3, lr_lambda))(3)
    schedule = jax.jit(fo.lambda_lr(1e-3, hf.linear_schedule_with_warmup(2, 10)))
    for step in range(12):
        count = jnp.asarray(step, jnp.int32)  # the optimizer's count
        assert float(schedule(count)) == 1e-3 * lr_lambda(step)

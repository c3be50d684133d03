"""A functional state moves to a real torch optimizer and back
(``fo.interop.torch_state_dict`` / ``load_torch_state``), and both continue as one
run: for every algorithm that keeps per-param state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental import sparse
from registry import BY_FACADE, FIRST_ORDER, SPECS

import functorch_optim as fo

# Options under which each algorithm keeps every entry it has, by class name.
CASES = {SPECS[name].facade: SPECS[name].every_state for name in FIRST_ORDER}
STEPS_BEFORE = 2


class Model(torch.nn.Module):
    """Two equal-shaped params whose insertion order (``zeta``, ``alpha``) is not
    jax's sorted order: a mix-up between them passes every shape check."""

    def __init__(self, vector: bool):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.zeta = torch.nn.Parameter(
            torch.randn(2, 3, generator=generator, dtype=torch.float64)
        )
        self.alpha = torch.nn.Parameter(
            torch.randn(2, 3, generator=generator, dtype=torch.float64)
        )
        if vector:  # Muon takes matrices only
            self.bias = torch.nn.Parameter(
                torch.randn(3, generator=generator, dtype=torch.float64)
            )


def _grad(position: int, param: np.ndarray, step: int) -> np.ndarray:
    """The gradient fed at ``step`` to the param at ``position`` (insertion
    order), a function of its value: both runs compute it from their own params."""
    return np.cos(param * (step + 2.0) + position)


def _torch_steps(name: str, model, optimizer, steps) -> None:
    for step in steps:
        for position, p in enumerate(model.parameters()):
            grad = torch.from_numpy(_grad(position, p.detach().numpy(), step))
            p.grad = grad.to_sparse() if name == "SparseAdam" else grad
        optimizer.step()


def _fo_steps(name: str, tx, params: dict, state, names: list[str], steps):
    for step in steps:
        grads = {
            key: jnp.asarray(_grad(names.index(key), np.asarray(p), step))
            for key, p in params.items()
        }
        if name == "SparseAdam":
            grads = {k: sparse.BCOO.fromdense(g) for k, g in grads.items()}
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    return params, state


def _transform(name: str):
    return BY_FACADE[name].functional(**CASES[name])


def _assert_params_equal(model, params: dict) -> None:
    for key, p in model.named_parameters():
        np.testing.assert_allclose(
            np.asarray(fo.interop.to_numpy(params[key])),
            p.detach().numpy(),
            rtol=1e-12,
            atol=1e-14,
        )


@pytest.mark.parametrize("named", [True, False], ids=["param_names", "order"])
@pytest.mark.parametrize("name", list(CASES))
def test_torch_state_loads_and_continues_as_torch(name, named):
    """torch takes two steps, its state_dict becomes a functional state, and both
    take a third step to the same params."""
    model = Model(vector=name != "Muon")
    names = [n for n, _ in model.named_parameters()]
    given = model.named_parameters() if named else model.parameters()
    optimizer = getattr(torch.optim, name)(given, **CASES[name])
    _torch_steps(name, model, optimizer, range(STEPS_BEFORE))
    params = fo.interop.to_jax(dict(model.named_parameters()))
    tx = _transform(name)
    # without param_names, torch's ids are named by the model's order
    order = None if named else model
    state = fo.interop.load_torch_state(tx, optimizer.state_dict(), params, order)
    assert int(state.count) == (STEPS_BEFORE if name not in ("SGD", "Muon") else 1)
    params, _ = _fo_steps(name, tx, params, state, names, [STEPS_BEFORE])
    _torch_steps(name, model, optimizer, [STEPS_BEFORE])
    _assert_params_equal(model, params)


@pytest.mark.parametrize("name", list(CASES))
def test_functional_state_loads_into_torch_and_continues(name):
    """The functional run takes two steps, torch loads its state dict, and both
    take a third step to the same params."""
    model = Model(vector=name != "Muon")
    names = [n for n, _ in model.named_parameters()]
    tx = _transform(name)
    params = fo.interop.to_jax(dict(model.named_parameters()))
    params, state = _fo_steps(
        name, tx, params, tx.init(params), names, range(STEPS_BEFORE)
    )
    # torch loads by position: its ids follow torch's order, given by name (the
    # params came back from apply_updates with sorted keys)
    assert list(params) != names
    sd = fo.interop.torch_state_dict(tx, state, params, order=model)
    assert sd["param_groups"][0]["param_names"] == names
    with torch.no_grad():
        for key, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.array(params[key])))
    optimizer = getattr(torch.optim, name)(model.named_parameters(), **CASES[name])
    optimizer.load_state_dict(sd)
    params, _ = _fo_steps(name, tx, params, state, names, [STEPS_BEFORE])
    _torch_steps(name, model, optimizer, [STEPS_BEFORE])
    # torch's own run to the same point, its state dict loaded likewise
    twin = Model(vector=name != "Muon")
    twin_optimizer = getattr(torch.optim, name)(twin.named_parameters(), **CASES[name])
    _torch_steps(name, twin, twin_optimizer, range(STEPS_BEFORE))
    reloaded = getattr(torch.optim, name)(twin.named_parameters(), **CASES[name])
    reloaded.load_state_dict(twin_optimizer.state_dict())
    _torch_steps(name, twin, reloaded, [STEPS_BEFORE])
    _assert_params_equal(model, dict(twin.named_parameters()))
    # torch's load casts NAdam's float32 mu_product to the params' float64, so
    # its product rounds less afterwards than in an uninterrupted run (ours)
    if name != "NAdam":
        _assert_params_equal(model, params)


def test_every_group_is_read_by_name_or_by_order():
    model = Model(vector=True)
    groups = [
        {"params": [model.zeta, model.bias], "param_names": ["zeta", "bias"]},
        {"params": [model.alpha], "param_names": ["alpha"], "lr": 0.5},
    ]
    optimizer = torch.optim.Adam(groups, lr=0.05)
    _torch_steps("Adam", model, optimizer, range(2))
    params = fo.interop.to_jax(dict(model.named_parameters()))
    sd = optimizer.state_dict()
    state = fo.interop.load_torch_state(fo.adam(), sd, params)
    by_id = {
        pid: n
        for g in sd["param_groups"]
        for pid, n in zip(g["params"], g["param_names"])
    }
    for pid, name in by_id.items():
        np.testing.assert_array_equal(
            state.exp_avg[name], sd["state"][pid]["exp_avg"].numpy()
        )
    # without names, torch's ids in group order are the params in given order
    unnamed = {
        "state": sd["state"],
        "param_groups": [
            {k: v for k, v in g.items() if k != "param_names"}
            for g in sd["param_groups"]
        ],
    }
    reordered = {
        "zeta": params["zeta"],
        "bias": params["bias"],
        "alpha": params["alpha"],
    }
    with pytest.raises(ValueError, match="no param_names.*order=model"):
        fo.interop.load_torch_state(fo.adam(), unnamed, reordered)
    state = fo.interop.load_torch_state(
        fo.adam(), unnamed, reordered, order=["zeta", "bias", "alpha"]
    )
    for pid, name in by_id.items():
        np.testing.assert_array_equal(
            state.exp_avg[name], sd["state"][pid]["exp_avg"].numpy()
        )


def test_errors_name_the_missing_extra_or_mis_shaped_entry():
    model = Model(vector=True)
    optimizer = torch.optim.Adam(model.named_parameters(), lr=0.05)
    _torch_steps("Adam", model, optimizer, range(1))
    sd = optimizer.state_dict()
    params = fo.interop.to_jax(dict(model.named_parameters()))
    tx = fo.adam()
    with pytest.raises(ValueError, match=r"missing from it: \['extra'\]"):
        fo.interop.load_torch_state(tx, sd, {**params, "extra": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"not in params: \['bias'\]"):
        fo.interop.load_torch_state(
            tx, sd, {k: v for k, v in params.items() if k != "bias"}
        )
    with pytest.raises(ValueError, match=r"'exp_avg' of param 'bias' has shape \(3,\)"):
        fo.interop.load_torch_state(tx, sd, {**params, "bias": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"param 'zeta' has \['momentum_buffer'\]"):
        sd["state"][0]["momentum_buffer"] = sd["state"][0]["exp_avg"]
        fo.interop.load_torch_state(tx, sd, params)
    with pytest.raises(ValueError, match="3 params and no param_names, params has 2"):
        unnamed = torch.optim.Adam(model.parameters()).state_dict()
        fo.interop.load_torch_state(tx, unnamed, [params["zeta"], params["bias"]])
    with pytest.raises(TypeError, match="first-order algorithms"):
        fo.interop.torch_state_dict(fo.lbfgs(), {}, params)


def test_state_goes_to_torch_by_name_after_a_jitted_step():
    """Equal-shaped params whose insertion order is not sorted: a jitted step
    returns them sorted, and torch loads by position. The ids follow torch's order
    by name (or it is an error saying how to give it), and load_into_torch matches
    names, so each param gets its own state."""
    model = torch.nn.ModuleDict(
        {"second": torch.nn.Linear(3, 3), "first": torch.nn.Linear(3, 3)}
    ).double()
    names = [n for n, _ in model.named_parameters()]
    params = fo.interop.to_jax(dict(model.named_parameters()))
    tx = fo.adam(0.1)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    grads = {
        n: jnp.full(p.shape, float(i + 1)) for i, (n, p) in enumerate(params.items())
    }
    updates, state = step(params, tx.init(params), grads)
    params = fo.apply_updates(params, updates)
    assert list(params) != names  # sorted: first.*, second.*
    with pytest.raises(ValueError, match="order=model"):
        fo.interop.torch_state_dict(tx, state, params)
    by_model = fo.interop.torch_state_dict(tx, state, params, order=model)
    torch_opt = torch.optim.Adam(model.named_parameters(), lr=0.1)
    torch_opt.load_state_dict(by_model)
    # a state dict in another order goes in by name too
    sorted_order = fo.interop.torch_state_dict(tx, state, params, order=sorted(names))
    by_name = torch.optim.Adam(model.named_parameters(), lr=0.1)
    fo.interop.load_into_torch(by_name, sorted_order)
    for loaded in (torch_opt, by_name):
        for p, (name, _) in zip(
            loaded.param_groups[0]["params"], model.named_parameters()
        ):
            np.testing.assert_array_equal(
                loaded.state[p]["exp_avg"].numpy(), np.asarray(state.exp_avg[name])
            )
    unnamed = torch.optim.Adam(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no param_names: build it from"):
        fo.interop.load_into_torch(unnamed, sorted_order)

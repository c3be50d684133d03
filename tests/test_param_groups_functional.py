"""``fo.with_param_groups``: torch's per-group options in one functional transform,
step by step against a torch optimizer built with the same groups, per-group lr
changes without recompiling, and the state to and from torch, every group."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import functorch_optim as fo

STEPS = 3
NANOGPT_GROUPS = [
    {"params": lambda name, p: p.ndim >= 2, "weight_decay": 0.1},
    {"params": lambda name, p: p.ndim < 2, "weight_decay": 0.0},
]
NANOGPT_DEFAULTS = {"lr": 0.05, "betas": (0.9, 0.95)}


def _model(seed: int = 0) -> torch.nn.Module:
    """Two layers whose insertion order ("second", "first") is not jax's sorted
    order, and same-shaped params in two groups."""
    torch.manual_seed(seed)
    return torch.nn.ModuleDict(
        {"second": torch.nn.Linear(3, 4), "first": torch.nn.Linear(4, 2)}
    ).double()


def _params(model: torch.nn.Module) -> dict:
    return fo.interop.to_jax(dict(model.named_parameters()))


def _grads(params: dict, step: int) -> dict:
    """The gradient at ``step``, a function of the params (both runs compute it
    from their own)."""
    return {
        name: jnp.cos(p * (step + 2.0) + position)
        for position, (name, p) in enumerate(sorted(params.items()))
    }


def _torch_groups(model: torch.nn.Module, groups: list) -> list:
    """torch's param groups for ``groups``: each group's named params, in the
    model's order, with its options (the first group that takes a param)."""
    named = list(model.named_parameters())
    taken: set[str] = set()
    torch_groups = []
    for group in groups:
        selector = group["params"]
        takes = selector if callable(selector) else (lambda n, p, s=selector: n in s)
        members = [(n, p) for n, p in named if n not in taken and takes(n, p)]
        taken |= {n for n, _ in members}
        torch_groups.append({**group, "params": members})
    return torch_groups


def _torch_step(model: torch.nn.Module, optimizer, step: int) -> None:
    params = {n: jnp.asarray(p.detach().numpy()) for n, p in model.named_parameters()}
    grads = _grads(params, step)
    for name, p in model.named_parameters():
        p.grad = torch.from_numpy(np.array(grads[name]))
    optimizer.step()


def _assert_equal(model: torch.nn.Module, params: dict) -> None:
    for name, p in model.named_parameters():
        np.testing.assert_allclose(
            np.asarray(params[name]), p.detach().numpy(), rtol=1e-12, atol=1e-14
        )


def _traced_step(tx):
    """``tx.update`` jitted, counting its traces (each one a compile)."""
    traces = []

    def update(grads, state, params):
        traces.append(None)
        return tx.update(grads, state, params)

    return jax.jit(update), traces


def _nanogpt():
    return fo.with_param_groups(fo.adamw, NANOGPT_GROUPS, **NANOGPT_DEFAULTS)


def _nanogpt_torch(model):
    return torch.optim.AdamW(_torch_groups(model, NANOGPT_GROUPS), **NANOGPT_DEFAULTS)


def test_nanogpt_groups_step_as_torch_adamw():
    """Matrices decayed, vectors not: every jitted step equals torch's AdamW
    built from the same named groups; the state reads as optax expects."""
    model = _model()
    optimizer = _nanogpt_torch(model)
    tx = _nanogpt()
    params = _params(model)
    state = tx.init(params)
    step, traces = _traced_step(tx)
    for t in range(STEPS):
        updates, state = step(_grads(params, t), state, params)
        params = fo.apply_updates(params, updates)
        _torch_step(model, optimizer, t)
        _assert_equal(model, params)
    assert len(traces) == 1
    assert int(optax.tree_utils.tree_get(state, "count")) == STEPS
    shapes = optax.tree_utils.tree_map_params(
        tx, lambda x: x.shape, state, transform_non_params=lambda x: None
    )
    assert shapes.inner.exp_avg == {k: v.shape for k, v in params.items()}
    assert shapes.inner.count is None and shapes.hyperparams[0]["lr"] is None


def test_group_lr_changes_as_torch_without_recompiling():
    """A warmup written into each group's lr (torch's param_groups[g]['lr'], ours
    by set_group_options) before every step: the same params, one compile."""
    model = _model()
    optimizer = _nanogpt_torch(model)
    tx = _nanogpt()
    params = _params(model)
    state = tx.init(params)
    step, traces = _traced_step(tx)
    for t in range(STEPS):
        for g, peak in enumerate((0.05, 0.02)):
            lr = peak * (t + 1) / STEPS
            optimizer.param_groups[g]["lr"] = lr
            state = fo.set_group_options(state, g, lr=lr)
        updates, state = step(_grads(params, t), state, params)
        params = fo.apply_updates(params, updates)
        _torch_step(model, optimizer, t)
        _assert_equal(model, params)
    assert len(traces) == 1
    assert float(state.hyperparams[1]["lr"]) == 0.02


def test_groups_compile_the_single_transforms_rules():
    """Groups differing in traced options share the per-leaf rule's traces: the
    grouped step lowers to as many functions as the single transform's."""
    params = _params(_model())
    grads = _grads(params, 0)

    def functions(tx) -> int:
        lowered = jax.jit(tx.update).lower(grads, tx.init(params), params)
        return lowered.as_text().count("func.func")

    single = fo.adamw(weight_decay=0.1, **NANOGPT_DEFAULTS)
    assert functions(_nanogpt()) == functions(single)


def test_hugging_face_no_decay_names():
    """Groups selected by lists of names, as Hugging Face's no_decay recipe."""
    torch.manual_seed(1)
    model = torch.nn.ModuleDict(
        {"dense": torch.nn.Linear(3, 3), "LayerNorm": torch.nn.LayerNorm(3)}
    ).double()
    names = [n for n, _ in model.named_parameters()]
    no_decay = ["bias", "LayerNorm.weight"]
    exempt = [n for n in names if any(nd in n for nd in no_decay)]
    groups = [
        {"params": [n for n in names if n not in exempt], "weight_decay": 0.01},
        {"params": exempt, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(_torch_groups(model, groups), lr=0.1)
    tx = fo.with_param_groups(fo.adamw, groups, lr=0.1)
    params = _params(model)
    state = tx.init(params)
    for t in range(2):  # eagerly, op by op
        updates, state = tx.update(_grads(params, t), state, params)
        params = fo.apply_updates(params, updates)
        _torch_step(model, optimizer, t)
        _assert_equal(model, params)


# Every algorithm runs generically: the scalar entries (ASGD's eta, mu) per group,
# and SGD's momentum buffer only in a group with momentum (torch keeps no state
# for the other group's params).
CASES = {
    "AdamW": (NANOGPT_GROUPS, NANOGPT_DEFAULTS),
    "SGD": (
        [
            {"params": lambda n, p: p.ndim >= 2, "momentum": 0.9, "nesterov": True},
            {"params": ["second.bias"], "momentum": 0.5, "dampening": 0.1},
            {"params": lambda n, p: True, "momentum": 0.0},
        ],
        {"lr": 0.1, "weight_decay": 0.01},
    ),
    "ASGD": (
        [
            {"params": lambda n, p: n.startswith("first"), "lr": 0.2},
            {"params": lambda n, p: True, "t0": 1.0},
        ],
        {"lr": 0.1},
    ),
}


def _case(name):
    groups, defaults = CASES[name]
    tx = fo.with_param_groups(getattr(fo, name.lower()), groups, **defaults)
    return tx, groups, defaults


@pytest.mark.parametrize("name", list(CASES))
def test_torch_state_loads_into_every_group_and_continues(name):
    """torch takes two steps (its lr then changed, as a scheduler does), its
    state_dict becomes the grouped state, and both take two more steps alike."""
    tx, groups, defaults = _case(name)
    model = _model()
    optimizer = getattr(torch.optim, name)(_torch_groups(model, groups), **defaults)
    for t in range(2):
        _torch_step(model, optimizer, t)
    optimizer.param_groups[0]["lr"] = 0.03
    params = _params(model)
    state = fo.interop.load_torch_state(tx, optimizer.state_dict(), params)
    assert float(state.hyperparams[0]["lr"]) == 0.03
    step = jax.jit(tx.update)
    for t in range(2, 4):
        updates, state = step(_grads(params, t), state, params)
        params = fo.apply_updates(params, updates)
        _torch_step(model, optimizer, t)
        _assert_equal(model, params)


@pytest.mark.parametrize("name", list(CASES))
def test_grouped_state_loads_into_torch_and_continues(name):
    """Ours takes two steps (an lr then set), torch built with the same groups
    loads torch_state_dict (ids in the model's order) and both continue alike."""
    tx, groups, defaults = _case(name)
    model = _model()
    params = _params(model)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(2):
        updates, state = step(_grads(params, t), state, params)
        params = fo.apply_updates(params, updates)
    state = fo.set_group_options(state, 0, lr=0.03)
    # apply_updates returned the dict with sorted keys; torch's order is by name
    assert list(params) != [n for n, _ in model.named_parameters()]
    sd = fo.interop.torch_state_dict(tx, state, params, order=model)
    with torch.no_grad():
        for key, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.array(params[key])))
    optimizer = getattr(torch.optim, name)(_torch_groups(model, groups), **defaults)
    assert [g["param_names"] for g in sd["param_groups"]] == [
        g["param_names"] for g in optimizer.state_dict()["param_groups"]
    ]
    optimizer.load_state_dict(sd)
    assert optimizer.param_groups[0]["lr"] == 0.03
    for t in range(2, 4):
        updates, state = step(_grads(params, t), state, params)
        params = fo.apply_updates(params, updates)
        _torch_step(model, optimizer, t)
        _assert_equal(model, params)


# --- errors ---------------------------------------------------------------------------


def test_a_leaf_no_group_takes_is_named():
    tx = fo.with_param_groups(fo.adamw, [{"params": lambda n, p: p.ndim >= 2}])
    with pytest.raises(ValueError, match=r"\['first.bias', 'second.bias'\]"):
        tx.init(_params(_model()))


def test_bad_group_options_get_torchs_messages():
    params = [torch.nn.Parameter(torch.ones(2))]
    for bad in ({"lr": -1.0}, {"betas": (0.9, 1.5)}, {"weight_decay": -0.1}):
        with pytest.raises(ValueError) as torch_error:
            torch.optim.AdamW(params, **bad)
        groups = [{"params": ["w"]}, {"params": lambda n, p: True, **bad}]
        with pytest.raises(ValueError, match=f"^{torch_error.value}$"):
            fo.with_param_groups(fo.adamw, groups)
    with pytest.raises(TypeError, match="unexpected keyword.*'momentum'"):
        fo.with_param_groups(fo.adamw, [{"params": ["w"]}], momentum=0.9)
    # a group key that is no option is kept, as torch keeps it in the group dict
    kept = fo.with_param_groups(fo.adamw, [{"params": ["w"], "momentum": 0.9}])
    assert kept.update.extras == ({"momentum": 0.9},)
    with pytest.raises(TypeError, match="param group 0 must be a dict"):
        fo.with_param_groups(fo.adamw, [["w"]])
    with pytest.raises(ValueError, match="empty parameter list"):
        fo.with_param_groups(fo.adamw, [])


def test_torch_groups_other_than_ours_are_named():
    model = _model()
    tx = _nanogpt()
    params = _params(model)
    # torch decays first.bias too
    moved = [
        {"params": lambda n, p: p.ndim >= 2 or n == "first.bias"},
        {"params": lambda n, p: True},
    ]
    optimizer = torch.optim.AdamW(_torch_groups(model, moved))
    _torch_step(model, optimizer, 0)
    with pytest.raises(
        ValueError, match=r"param group 0 .*not in the transform's: \['first.bias'\]"
    ):
        fo.interop.load_torch_state(tx, optimizer.state_dict(), params)
    one_group = torch.optim.AdamW(model.named_parameters())
    with pytest.raises(ValueError, match="1 param groups, the transform 2"):
        fo.interop.load_torch_state(tx, one_group.state_dict(), params)
    # a fixed option (a flag) differs: torch's state would be read as another's
    amsgrad = torch.optim.AdamW(
        _torch_groups(model, NANOGPT_GROUPS), amsgrad=True, **NANOGPT_DEFAULTS
    )
    with pytest.raises(ValueError, match=r"group 0 has options \{'amsgrad': \(True"):
        fo.interop.load_torch_state(tx, amsgrad.state_dict(), params)


def test_only_traced_options_are_set():
    state = _nanogpt().init(_params(_model()))
    with pytest.raises(ValueError, match=r"no traced options \['betas'\]"):
        fo.set_group_options(state, 0, betas=(0.8, 0.9))
    with pytest.raises(IndexError, match="2 param groups"):
        fo.set_group_options(state, 2, lr=0.1)


def test_recipe_checkpoints_without_names_extra_keys_and_a_grouped_scheduler():
    """What recipes' torch checkpoints hold: groups built from bare tensors (no
    param_names: torch's ids follow the model's order group by group, given by
    order=model), a group key torch keeps (MAE's lr_scale, written back), and one
    scheduler over every group (one entry per group in base_lrs and _last_lr)."""
    model = _model()
    named = list(model.named_parameters())
    torch_opt = torch.optim.AdamW(
        [
            {"params": [p for _, p in named if p.ndim >= 2], "lr_scale": 0.5},
            {"params": [p for _, p in named if p.ndim < 2], "lr_scale": 1.0},
        ],
        lr=0.05,
    )
    torch_sched = torch.optim.lr_scheduler.StepLR(torch_opt, step_size=2)
    groups = [
        {"params": lambda name, p: p.ndim >= 2, "lr_scale": 0.5},
        {"params": lambda name, p: p.ndim < 2, "lr_scale": 1.0},
    ]
    tx = fo.with_param_groups(fo.adamw, groups, lr=0.05)
    for step in range(2):
        grads = _grads(_params(model), step)
        for name, p in named:
            p.grad = torch.tensor(np.asarray(grads[name]))
        torch_opt.step()
        torch_sched.step()
    params = _params(model)
    with pytest.raises(ValueError, match="order=model"):
        fo.interop.load_torch_state(tx, torch_opt.state_dict(), params)
    state = fo.interop.load_torch_state(tx, torch_opt.state_dict(), params, model)
    assert int(state.count) == 2 == int(state.inner.count)
    np.testing.assert_array_equal(
        state.inner.exp_avg["first.weight"],
        torch_opt.state[model["first"].weight]["exp_avg"].numpy(),
    )
    sd = fo.interop.torch_state_dict(tx, state, params, order=model)
    assert [g["lr_scale"] for g in sd["param_groups"]] == [0.5, 1.0]
    schedules = [fo.step_lr(0.05, step_size=2)] * 2
    assert (
        fo.interop.torch_scheduler_state_dict(schedules, state.count)
        == torch_sched.state_dict()
    )

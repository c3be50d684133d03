"""Moving a run between torch and the facade: what a migrating user holds, names,
misuse, checkpoints, and a torch run resumed in JAX and back.

Each test states one of the facade's guarantees (see the README's "Migrating from
torch.optim" and "Checkpoints"): arrays handed out stay valid, params are numbered
and named as torch numbers and names them, misuse fails before anything changes, and
a checkpoint (this library's or torch's file) continues a run exactly.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from reference import assert_same_error

import functorch_optim as fo


def _pairs(n: int, size: int = 3) -> list:
    return [jnp.full(size, float(i + 1)) for i in range(n)]


# --- held arrays stay valid ---------------------------------------------------------


def test_every_array_a_user_holds_survives_later_steps(layout):
    given = _pairs(4)
    opt = fo.Adam(given, lr=0.1)
    held = [list(given)]
    values = [np.asarray(p) for p in given]
    opt.step([jnp.ones(3)] * 4)
    assert any(opt.debug_layout()) == (layout == "packed")
    for _ in range(2):
        held += [opt.params, opt.grads, opt.state[0], opt.state_dict()]
        opt.step([jnp.full(3, 0.5)] * 4)
        _ = opt.state_dict()
    leaves = [x for x in jax.tree.leaves(held) if isinstance(x, jax.Array)]
    assert len(leaves) > 30 and not any(leaf.is_deleted() for leaf in leaves)
    for value, p in zip(values, given):  # the constructor's inputs are unchanged
        np.testing.assert_array_equal(np.asarray(p), value)
    jax.block_until_ready([leaf + 1 for leaf in leaves])


def test_a_step_consumes_only_the_params_nobody_else_holds():
    """A param that only the optimizer references is donated to the step (its
    buffer holds the new values); one the user holds, or views through NumPy,
    is copied first and stays valid."""
    opt = fo.Adam({"a": jnp.ones((64, 64)), "b": jnp.ones((64, 64))}, lr=0.1)
    grads = {"a": jnp.ones((64, 64)), "b": jnp.ones((64, 64))}
    opt.step(grads)

    def buffers() -> list:
        return [p.unsafe_buffer_pointer() for p in opt.param_groups[0]["params"]]

    before = buffers()
    opt.step(grads)
    assert buffers() == before  # both consumed: nobody else held them

    held, view = opt.params["a"], np.asarray(opt.params["b"])
    values = np.asarray(held).copy(), view.copy()
    before = buffers()
    opt.step(grads)
    assert not held.is_deleted()
    np.testing.assert_array_equal(np.asarray(held), values[0])
    np.testing.assert_array_equal(view, values[1])
    assert all(new != old for new, old in zip(buffers(), before))


def test_lbfgs_keeps_the_arrays_a_user_holds():
    given = {"x": jnp.array([1.5, -0.5])}
    opt = fo.LBFGS(given, lr=0.5, max_iter=3)
    held = [given]
    for _ in range(2):
        opt.step(lambda p: jnp.sum((p["x"] - 1.0) ** 2))
        held += [opt.params, opt.state_dict()]
    leaves = [x for x in jax.tree.leaves(held) if isinstance(x, jax.Array)]
    assert not any(leaf.is_deleted() for leaf in leaves)
    np.testing.assert_array_equal(np.asarray(given["x"]), [1.5, -0.5])


# --- names and ids ------------------------------------------------------------------


def _torch_named(names_and_arrays, **options):
    tensors = {
        n: torch.tensor(np.asarray(a)).requires_grad_() for n, a in names_and_arrays
    }
    return torch.optim.Adam(list(tensors.items()), **options), tensors


def _torch_steps(opt, tensors, grads: dict, steps: int = 2) -> None:
    for k in range(steps):
        for name, t in tensors.items():
            t.grad = torch.tensor(np.asarray(grads[name]) * (k + 1))
        opt.step()


def _assert_named_state(opt, torch_opt, tensors: dict, names: list) -> None:
    """``opt``'s ids 0, 1, ... are ``names``, each with its torch tensor's state."""
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == names
    for pid, name in enumerate(names):
        np.testing.assert_array_equal(
            np.asarray(sd["state"][pid]["exp_avg"]),
            torch_opt.state[tensors[name]]["exp_avg"].numpy(),
        )


def test_dict_params_are_numbered_in_insertion_order_and_named():
    # torch's order (weight before bias) differs from sorted order, with one shape
    params = {"weight": jnp.full(2, 1.0), "bias": jnp.full(2, 2.0)}
    grads = {"weight": jnp.array([1.0, 2.0]), "bias": jnp.array([-3.0, 0.5])}
    torch_opt, tensors = _torch_named(params.items(), lr=0.1)
    _torch_steps(torch_opt, tensors, grads)

    opt = fo.Adam(
        {name: jnp.asarray(t.detach().numpy()) for name, t in tensors.items()}, lr=0.1
    )
    assert list(opt.params) == ["weight", "bias"]
    opt.load_state_dict(torch_opt.state_dict())
    assert list(opt.params) == ["weight", "bias"]
    assert all(isinstance(p, jax.Array) for p in opt.params.values())
    _assert_named_state(opt, torch_opt, tensors, ["weight", "bias"])
    opt.step(grads)
    for name, t in tensors.items():
        t.grad = torch.tensor(np.asarray(grads[name]))
    torch_opt.step()
    for name, t in tensors.items():
        np.testing.assert_allclose(
            np.asarray(opt.params[name]), t.detach().numpy(), rtol=1e-12
        )


def test_nested_params_are_named_as_torch_names_them():
    params = {
        "fc1": {"weight": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        "blocks": [{"w": jnp.ones(2)}],
    }
    opt = fo.SGD(params, lr=0.1)
    names = opt.state_dict()["param_groups"][0]["param_names"]
    assert names == ["fc1.weight", "fc1.bias", "blocks.0.w"]
    opt = fo.SGD([("a", jnp.ones(2)), ("b", jnp.ones(2))], lr=0.1)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["a", "b"]
    assert "param_names" not in fo.SGD([jnp.ones(2)], lr=0.1).param_groups[0]


def test_param_names_are_matched_on_load_and_others_are_an_error_naming_both():
    params = {"encoder": jnp.ones(2), "decoder": jnp.ones(2)}
    torch_opt, tensors = _torch_named(
        [("decoder", params["decoder"]), ("encoder", params["encoder"])], lr=0.1
    )
    _torch_steps(torch_opt, tensors, {"encoder": jnp.ones(2), "decoder": -jnp.ones(2)})
    # the same names in torch's other order: each param gets its own state
    opt = fo.Adam(params, lr=0.1)
    opt.load_state_dict(torch_opt.state_dict())
    _assert_named_state(opt, torch_opt, tensors, ["encoder", "decoder"])
    # other names: an error naming both, nothing loaded
    other = fo.Adam({"encoder": jnp.ones(2), "head": jnp.ones(2)}, lr=0.1)
    with pytest.raises(
        ValueError, match=r"\['decoder', 'encoder'\].*\['encoder', 'head'\]"
    ):
        other.load_state_dict(torch_opt.state_dict())
    assert other.state_dict()["state"] == {}
    assert list(other.params) == ["encoder", "head"]


# --- misuse fails early, optimizer unchanged ------------------------------------------


def _unchanged(opt, params_before) -> None:
    for a, b in zip(jax.tree.leaves(opt.params), params_before, strict=True):
        assert isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
        np.testing.assert_array_equal(np.asarray(a), b)
    opt.step()  # still usable


@pytest.mark.parametrize("transform", ["jit", "vmap", "grad"])
def test_facade_under_a_jax_transformation_raises_at_once(transform):
    opt = fo.Adam([jnp.ones(2)], lr=0.1)
    opt.step([jnp.ones(2)])
    before = [np.asarray(p) for p in jax.tree.leaves(opt.params)]

    def step(g):
        opt.step([g])
        return jnp.sum(opt.params[0])

    run = {
        "jit": jax.jit(step),
        "vmap": jax.vmap(step),
        "grad": jax.grad(step),
    }[transform]
    x = jnp.ones((3, 2)) if transform == "vmap" else jnp.ones(2)
    with pytest.raises(RuntimeError, match="jax.jit, jax.vmap or jax.grad"):
        run(x)
    _unchanged(opt, before)


def test_closure_with_traced_values_raises_at_once():
    opt = fo.SGD([jnp.ones(2)], lr=0.1)
    opt.step([jnp.ones(2)])
    before = [np.asarray(p) for p in jax.tree.leaves(opt.params)]

    @jax.jit
    def run(scale):
        return opt.step(lambda p: jnp.sum(p[0] * scale))

    with pytest.raises(RuntimeError, match="jax.jit, jax.vmap or jax.grad"):
        run(2.0)
    _unchanged(opt, before)


def test_a_traced_hyperparameter_raises_at_once():
    opt = fo.SGD([jnp.ones(2)], lr=0.1)
    opt.step([jnp.ones(2)])
    before = [np.asarray(p) for p in jax.tree.leaves(opt.params)]

    @jax.jit
    def run(lr):
        opt.param_groups[0]["lr"] = lr
        opt.step()  # the stored grads, concrete

    with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['lr'\]"):
        run(0.5)
    opt.param_groups[0]["lr"] = 0.1
    _unchanged(opt, before)


def test_torch_tensors_as_params_name_to_jax():
    model = torch.nn.Linear(2, 1)
    for given in (
        model.parameters(),
        list(model.parameters()),
        [{"params": model.parameters()}],
        dict(model.named_parameters()),
        model.weight,
    ):
        with pytest.raises(TypeError, match=r"fo\.interop\.to_jax"):
            fo.SGD(given, lr=0.1)
    opt = fo.SGD(fo.interop.to_jax(dict(model.named_parameters())), lr=0.1)
    assert list(opt.params) == ["weight", "bias"]
    pairs = fo.interop.to_jax(model.named_parameters())
    assert [n for n, _ in pairs] == ["weight", "bias"]
    np.testing.assert_array_equal(np.asarray(pairs[0][1]), model.weight.detach())


def test_to_jax_gives_plain_dicts_that_optax_partition_labels():
    """torch's model.state_dict() is an OrderedDict, another pytree node than the
    dict labels optax.partition matches against: to_jax returns plain dicts."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    params = fo.interop.to_jax(model.state_dict())
    assert type(params) is dict and list(params) == list(model.state_dict())
    labels = {
        name: "decay" if p.ndim >= 2 else "no_decay" for name, p in params.items()
    }
    tx = optax.partition(
        {"decay": fo.adamw(0.1, weight_decay=0.1), "no_decay": fo.adamw(0.1)}, labels
    )
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert set(updates) == set(params)  # (jax.tree returns dicts key-sorted)


@pytest.mark.parametrize(
    "ours, theirs", [(fo.Adam, torch.optim.Adam), (fo.SGD, torch.optim.SGD)]
)
def test_a_callable_lr_gets_torchs_error(ours, theirs):
    def schedule(count):
        return 0.1

    assert_same_error(
        lambda: theirs([torch.zeros(2, requires_grad=True)], lr=schedule),
        lambda: ours([jnp.zeros(2)], lr=schedule),
    )
    # torch's add_param_group takes it and fails later; here it fails at once
    opt = ours([jnp.zeros(2)], lr=0.1)
    assert_same_error(
        lambda: theirs([torch.zeros(2, requires_grad=True)], lr=schedule),
        lambda: opt.add_param_group({"params": [jnp.zeros(1)], "lr": schedule}),
    )
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(
    "grads, match",
    [
        ({"w": [jnp.ones(2)], "b": jnp.ones(1)}, r"grads\['w'\].*list"),
        ({"w": "ones", "b": jnp.ones(1)}, r"grads\['w'\].*str"),
        ({"w": jnp.ones(2), "b": {"x": jnp.ones(1)}}, r"grads\['b'\].*dict"),
        ({"w": jnp.ones(2), "b": 1.0}, r"grads\['b'\].*float"),
        ({"w": jnp.ones(2)}, "structure"),
    ],
)
def test_every_bad_grads_tree_names_the_leaf(grads, match):
    opt = fo.Adam({"w": jnp.ones(2), "b": jnp.ones(1)}, lr=0.1)
    before = [np.asarray(p) for p in jax.tree.leaves(opt.params)]
    with pytest.raises((TypeError, ValueError), match=match):
        opt.step(grads)
    with pytest.raises((TypeError, ValueError), match=match):
        opt.grads = grads
    assert opt.state_dict()["state"] == {}
    _unchanged(opt, before)


def test_a_state_entry_of_another_dtype_kind_is_an_error():
    opt = fo.Adam([jnp.ones(2)], lr=0.1)
    opt.step([jnp.ones(2)])
    sd = opt.state_dict()
    before = copy.deepcopy(sd)
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg"] = np.array([3, 4], np.int64)
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 0.*int64"):
        opt.load_state_dict(bad)
    np.testing.assert_array_equal(
        np.asarray(opt.state[0]["exp_avg"]), np.asarray(before["state"][0]["exp_avg"])
    )


def test_bcoo_params_to_sparse_adam_get_torchs_message():
    from jax.experimental import sparse

    dense = torch.zeros(3, 2)
    assert_same_error(
        lambda: torch.optim.SparseAdam([torch.zeros(2), dense.to_sparse()]),
        lambda: fo.SparseAdam([jnp.zeros(2), sparse.BCOO.fromdense(jnp.zeros((3, 2)))]),
    )
    with pytest.raises(TypeError, match="dense arrays.*BCOO"):
        fo.Adam([sparse.BCOO.fromdense(jnp.zeros((3, 2)))])


# --- checkpoints: one path for any facade, and torch's file ---------------------------


def _two_groups():
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([0.5])}
    opt = fo.Adam(
        [{"params": {"w": params["w"]}, "lr": 0.1}, {"params": {"b": params["b"]}}],
        lr=0.05,
        weight_decay=0.01,
    )
    return opt, fo.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _grads(k: int) -> list:
    return [{"w": jnp.array([1.0, 2.0, -1.0]) * (k + 1)}, {"b": jnp.array([k - 1.5])}]


def _run(opt, sched, steps) -> None:
    for k in steps:
        opt.step(_grads(k))
        sched.step()


def _restored(checkpoint) -> tuple:
    """The README's recipe: build the optimizer and scheduler as the run did, then
    load the params, the optimizer's and the scheduler's state."""
    opt, sched = _two_groups()
    opt.params = checkpoint["params"]
    opt.load_state_dict(checkpoint["optimizer"])
    sched.load_state_dict(checkpoint["scheduler"])
    return opt, sched


def _assert_same_run(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [g["lr"] for g in a.param_groups] == [g["lr"] for g in b.param_groups]


@pytest.mark.parametrize("format", ["msgpack", "orbax"])
def test_checkpoint_of_a_multi_group_run_continues_bit_for_bit(
    tmp_path, monkeypatch, format
):
    opt, sched = _two_groups()
    _run(opt, sched, range(3))
    monkeypatch.chdir(tmp_path)
    path = "run.ckpt"  # relative, as the README writes it
    checkpoint = {
        "params": opt.params,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
    }
    fo.checkpoint.save(path, checkpoint, format=format)
    resumed, resumed_sched = _restored(fo.checkpoint.restore(path))
    _assert_same_run(resumed, opt)
    _run(opt, sched, range(3, 6))
    _run(resumed, resumed_sched, range(3, 6))
    _assert_same_run(resumed, opt)


@pytest.mark.parametrize("format", ["msgpack", "orbax"])
def test_functional_states_come_back_as_their_class(tmp_path, format):
    params = {"w": jnp.ones(2)}
    tx = fo.chain(fo.clip_grad_norm(1.0), fo.adam(lr=0.1))
    state = tx.init(params)
    fo.checkpoint.save(tmp_path / "state", (params, state), format=format)
    restored = fo.checkpoint.restore(tmp_path / "state")
    assert type(restored[1][1]) is type(state[1])
    assert jax.tree.structure(restored) == jax.tree.structure((params, state))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves((params, state))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(fo.checkpoint.CheckpointError, match="like"):
        fo.checkpoint.restore(tmp_path / "state", like=(params, tx.init(params)[1]))


def test_assigning_params_checks_them_all_before_changing_any():
    opt, _ = _two_groups()
    before = [np.asarray(p) for p in jax.tree.leaves(opt.params)]
    for bad, match in [
        ([{"w": jnp.zeros(3)}, {"b": jnp.zeros(2)}], r"params\[1\]\['b'\].*\[2\]"),
        ([{"w": jnp.zeros(3)}, {"b": jnp.zeros(1, jnp.float32)}], "float32"),
        ([{"w": jnp.zeros(3)}, {"c": jnp.zeros(1)}], "structure"),
        ([{"w": jnp.zeros(3)}], "groups"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.params = bad
        _unchanged(opt, before)
    opt.params = [{"w": jnp.zeros(3)}, {"b": np.ones(1)}]
    np.testing.assert_array_equal(np.asarray(opt.params[1]["b"]), [1.0])


def test_a_state_dict_through_plain_orbax_loads(tmp_path):
    """orbax's own checkpointer turns integer dict keys into strings (and stores no
    strings: these params are unnamed)."""
    import orbax.checkpoint as ocp

    def make():
        return fo.SGD(
            [{"params": [jnp.ones(2)], "lr": 0.1}, {"params": [jnp.ones(3)]}],
            lr=0.05,
            momentum=0.9,
        )

    def grads(k):
        return [[jnp.full(2, k + 1.0)], [jnp.full(3, -1.0)]]

    opt = make()
    opt.step(grads(0))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "sd", opt.state_dict())
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "sd")
    assert set(restored["state"]) == {"0", "1"}
    resumed = make()
    resumed.params = opt.params
    resumed.load_state_dict(restored)
    opt.step(grads(1))
    resumed.step(grads(1))
    for x, y in zip(jax.tree.leaves(opt.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("layout", ["fixed", "recipe's own"])
def test_torch_file_of_a_facade_run_loads_into_torch(tmp_path, layout):
    """save_torch writes the fixed {'model', 'optimizer', 'scheduler'} layout, or
    any dict the recipe's torch code reads (nanoGPT's 'iter_num' and 'config')."""
    opt, sched = _two_groups()
    _run(opt, sched, range(3))
    path = tmp_path / "run.pt"
    if layout == "fixed":
        fo.checkpoint.save_torch(path, opt, sched)
    else:
        config = {"n_layer": 2, "betas": (0.9, 0.95)}
        fo.checkpoint.save_torch(
            path,
            {
                "model": fo.checkpoint.model_state_dict(opt),
                "optimizer": opt,
                "lr_scheduler": sched,
                "iter_num": 3,
                "config": config,
            },
        )
    saved = torch.load(path)  # weights_only: plain tensors and Python values
    if layout != "fixed":
        assert saved["iter_num"] == 3 and saved["config"] == config
        saved["scheduler"] = saved.pop("lr_scheduler")
    model = {k: torch.nn.Parameter(v) for k, v in saved["model"].items()}
    torch_opt = torch.optim.Adam(
        [
            {"params": [("w", model["w"])], "lr": 0.1},
            {"params": [("b", model["b"])]},
        ],
        lr=0.05,
        weight_decay=0.01,
    )
    torch_sched = torch.optim.lr_scheduler.StepLR(torch_opt, step_size=2, gamma=0.5)
    torch_opt.load_state_dict(saved["optimizer"])
    torch_sched.load_state_dict(saved["scheduler"])
    for k in range(3, 6):
        grads = _grads(k)
        for g, name in ((0, "w"), (1, "b")):
            model[name].grad = torch.tensor(np.asarray(grads[g][name]))
        torch_opt.step()
        torch_sched.step()
    _run(opt, sched, range(3, 6))
    assert torch_sched.get_last_lr() == sched.get_last_lr()
    for g, name in ((0, "w"), (1, "b")):
        np.testing.assert_allclose(
            np.asarray(opt.params[g][name]), model[name].detach().numpy(), rtol=1e-12
        )


# --- a torch run resumed in JAX, and back ---------------------------------------------


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.encoder(x)))


def _loss(params, x, y):
    h = jnp.tanh(x @ params["encoder.weight"].T + params["encoder.bias"])
    out = h @ params["head.weight"].T + params["head.bias"]
    return jnp.mean((out - y) ** 2)


_DATA = [
    (
        np.random.default_rng(k).standard_normal((5, 3)),
        np.random.default_rng(k + 50).standard_normal((5, 2)),
    )
    for k in range(8)
]


def _torch_run(checkpoint=None):
    torch.manual_seed(0)
    model = _Model().double()
    groups = [
        {"params": list(model.encoder.named_parameters(prefix="encoder")), "lr": 0.05},
        {"params": list(model.head.named_parameters(prefix="head"))},
    ]
    opt = torch.optim.AdamW(groups, lr=0.02, weight_decay=0.1, amsgrad=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        sched.load_state_dict(checkpoint["scheduler"])
    return model, opt, sched


def _torch_steps_with(model, opt, sched, grads: dict) -> None:
    for name, p in model.named_parameters():
        p.grad = torch.tensor(np.asarray(grads[name]))
    opt.step()
    sched.step()


def _torch_params(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}


def test_a_torch_run_resumes_in_jax_and_back(tmp_path):
    model, opt, sched = _torch_run()
    for x, y in _DATA[:3]:
        opt.zero_grad()
        torch.mean((model(torch.tensor(x)) - torch.tensor(y)) ** 2).backward()
        opt.step()
        sched.step()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        },
        tmp_path / "torch.pt",
    )

    saved = torch.load(tmp_path / "torch.pt")
    params = fo.interop.to_jax(saved["model"])
    fo_opt = fo.AdamW(
        [
            {"params": {n: params[n] for n in group["param_names"]}}
            for group in saved["optimizer"]["param_groups"]
        ],
        lr=0.02,
        weight_decay=0.1,
        amsgrad=True,
    )
    fo_opt.load_state_dict(saved["optimizer"])
    fo_sched = fo.lr_scheduler.StepLR(fo_opt, step_size=2, gamma=0.7)
    fo_sched.load_state_dict(saved["scheduler"])

    t_model, t_opt, t_sched = _torch_run(torch.load(tmp_path / "torch.pt"))
    grad_fn = jax.jit(jax.grad(_loss))

    def flat(fo_params):
        return {k: v for group in fo_params for k, v in group.items()}

    def continue_both(data):
        for x, y in data:
            grads = grad_fn(flat(fo_opt.params), x, y)
            fo_opt.step([{n: grads[n] for n in g} for g in fo_opt.params])
            fo_sched.step()
            _torch_steps_with(t_model, t_opt, t_sched, grads)
            theirs = _torch_params(t_model)
            for name, value in flat(fo_opt.params).items():
                np.testing.assert_allclose(
                    np.asarray(value), theirs[name], rtol=1e-10, atol=1e-12
                )
            assert fo_sched.get_last_lr() == t_sched.get_last_lr()

    continue_both(_DATA[3:6])

    # and back: the JAX run saved as torch's file, continued by torch
    fo.checkpoint.save_torch(tmp_path / "back.pt", fo_opt, fo_sched)
    t_model, t_opt, t_sched = _torch_run(torch.load(tmp_path / "back.pt"))
    continue_both(_DATA[6:])

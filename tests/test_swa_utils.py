"""swa_utils against torch.optim.swa_utils in float64, step by step.

Each averaging case runs torch's AveragedModel and this library's on the same
sequence of model states (the model's parameters and buffers are set, not trained,
so that both models hold equal values at every step) and compares the averages
after every update. SWALR runs on a torch and a facade optimizer with two param
groups; update_bn on an nnx model and the equal torch model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.optim.swa_utils as T
from flax import nnx

import functorch_optim as fo
from functorch_optim import swa_utils as S

STEPS = 5
RTOL, ATOL = 1e-12, 1e-14


@pytest.fixture
def torch_default_float64():
    """torch with float64 as its default dtype, as JAX's default float dtype is here
    (x64 is on): the averaging functions compute in it where torch computes in its
    default dtype (the SWA weight, integer leaves)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(
        np.asarray(fo.interop.to_numpy(actual)),
        np.asarray(fo.interop.to_numpy(expected)),
        rtol=rtol,
        atol=atol,
    )


def assert_state_dicts_close(ours: dict, theirs: dict) -> None:
    # Keys as torch's; their order is the flattening order (a dict's sorted keys).
    assert next(iter(ours)) == "n_averaged" and set(ours) == set(theirs)
    for key in theirs:
        if key != "n_averaged" and not jnp.issubdtype(ours[key].dtype, jnp.inexact):
            # an integer average is truncated from float32 arithmetic that XLA
            # fuses into an fma where torch rounds each product: it may be one off
            assert_close(ours[key], theirs[key], rtol=0, atol=1)
        else:
            assert_close(ours[key], theirs[key])


# --- a torch model and the same model as a pytree, moved through set states -----------


def torch_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    ).double()


def set_random_state(model: torch.nn.Module, rng, with_buffers=False) -> dict:
    """Give every parameter (and float buffer) new random values; return the
    model's state as a pytree with torch's names."""
    with torch.no_grad():
        tensors = list(model.parameters())
        if with_buffers:
            tensors += [b for b in model.buffers() if b.is_floating_point()]
        for t in tensors:
            t.copy_(torch.tensor(rng.standard_normal(t.shape)))
        for b in model.buffers():
            if not b.is_floating_point():
                b.add_(int(rng.integers(1, 5)))
    source = model.state_dict() if with_buffers else dict(model.named_parameters())
    return {k: jnp.asarray(v.detach().numpy()) for k, v in source.items()}


def torch_ema_in_place(averaged, current, num_averaged):
    for a, c in zip(averaged, current):
        a.copy_(0.25 * a + 0.75 * c)


def ours_ema(averaged, current, num_averaged):
    return [0.25 * a + 0.75 * c for a, c in zip(averaged, current)]


AVERAGING = {
    "default": (lambda: {}, lambda: {}),
    "swa_avg_fn": (
        lambda: {"avg_fn": T.get_swa_avg_fn()},
        lambda: {"avg_fn": S.get_swa_avg_fn()},
    ),
    "ema_avg_fn": (
        lambda: {"avg_fn": T.get_ema_avg_fn(0.9)},
        lambda: {"avg_fn": S.get_ema_avg_fn(0.9)},
    ),
    "swa_multi_avg_fn": (
        lambda: {"multi_avg_fn": T.get_swa_multi_avg_fn()},
        lambda: {"multi_avg_fn": S.get_swa_multi_avg_fn()},
    ),
    "ema_multi_avg_fn": (
        lambda: {"multi_avg_fn": T.get_ema_multi_avg_fn(0.9)},
        lambda: {"multi_avg_fn": S.get_ema_multi_avg_fn(0.9)},
    ),
    "custom_avg_fn": (
        lambda: {"avg_fn": lambda a, c, n: a + (c - a) * 2 / (n + 2)},
        lambda: {"avg_fn": lambda a, c, n: a + (c - a) * 2 / (n + 2)},
    ),
    "custom_multi_avg_fn": (
        lambda: {"multi_avg_fn": torch_ema_in_place},
        lambda: {"multi_avg_fn": ours_ema},
    ),
}


@pytest.mark.usefixtures("torch_default_float64")
@pytest.mark.parametrize("name", AVERAGING)
def test_averaged_model_matches_torch_every_step(name):
    torch_kwargs, our_kwargs = AVERAGING[name]
    rng = np.random.default_rng(1)
    model = torch_mlp()
    ours = S.AveragedModel(set_random_state(model, rng), **our_kwargs())
    theirs = T.AveragedModel(model, **torch_kwargs())
    for _ in range(STEPS):
        params = set_random_state(model, rng)
        theirs.update_parameters(model)
        ours.update_parameters(params)
        assert_state_dicts_close(ours.state_dict(), theirs.state_dict())
    assert int(ours.n_averaged) == STEPS


LOW_PRECISION = {"float32": (1e-6, 1e-6), "bfloat16": (8e-3, 8e-3)}  # one ulp


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize(
    "name", ["default", "ema_avg_fn", "swa_multi_avg_fn", "ema_multi_avg_fn"]
)
def test_low_precision_leaves_match_torch(name, dtype):
    torch_kwargs, our_kwargs = AVERAGING[name]
    rng = np.random.default_rng(11)
    model = torch.nn.Linear(5, 4).to(getattr(torch, dtype))
    ours = S.AveragedModel(
        fo.interop.to_jax(dict(model.named_parameters())), **our_kwargs()
    )
    theirs = T.AveragedModel(model, **torch_kwargs())
    for _ in range(STEPS):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.tensor(rng.standard_normal(p.shape)))
        theirs.update_parameters(model)
        ours.update_parameters(
            fo.interop.to_jax({k: v.detach() for k, v in model.named_parameters()})
        )
    rtol, atol = LOW_PRECISION[dtype]
    for key, value in theirs.module.named_parameters():
        assert ours.module[key].dtype == jnp.dtype(dtype)
        assert_close(
            ours.module[key].astype(jnp.float64), value.detach().double(), rtol, atol
        )


def test_update_is_compiled_once():
    traces = []

    def counting_avg_fn(averaged, current, num_averaged):
        traces.append(averaged.shape)
        return averaged + (current - averaged) / (num_averaged + 1)

    rng = np.random.default_rng(2)
    model = torch_mlp()
    ours = S.AveragedModel(set_random_state(model, rng), avg_fn=counting_avg_fn)
    for _ in range(STEPS):
        ours.update_parameters(set_random_state(model, rng))
    assert len(traces) == len(list(model.parameters()))  # one trace, once per leaf


def test_first_update_copies_and_models_are_independent():
    params = {"w": jnp.arange(3.0)}
    avg = S.AveragedModel(
        params, jax.devices()[0], multi_avg_fn=S.get_ema_multi_avg_fn(0.5)
    )
    assert avg.module["w"] is not params["w"]
    assert_close(avg.module["w"], params["w"])
    avg.update_parameters({"w": jnp.full(3, 7.0)})
    assert_close(avg.module["w"], np.full(3, 7.0))  # the first update copies
    avg.update_parameters({"w": jnp.full(3, 1.0)})
    assert_close(avg.module["w"], np.full(3, 4.0))
    assert int(avg.n_averaged) == 2


@pytest.mark.usefixtures("torch_default_float64")
def test_buffers_of_a_pytree_with_an_integer_leaf_are_averaged_as_torch():
    """A BatchNorm model's full state dict as a pytree: every leaf is averaged,
    as torch's use_buffers=True averages num_batches_tracked (int64) too."""
    for torch_kwargs, our_kwargs in (
        AVERAGING["default"],
        AVERAGING["ema_multi_avg_fn"],
    ):
        rng = np.random.default_rng(3)
        model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        model.double()
        ours = S.AveragedModel(set_random_state(model, rng, True), **our_kwargs())
        theirs = T.AveragedModel(model, use_buffers=True, **torch_kwargs())
        for _ in range(STEPS):
            state = set_random_state(model, rng, with_buffers=True)
            theirs.update_parameters(model)
            ours.update_parameters(state)
            expected = {
                "n_averaged": theirs.n_averaged,
                **{f"module.{k}": v for k, v in theirs.module.state_dict().items()},
            }
            assert_state_dicts_close(ours.state_dict(), expected)
        assert ours.module["1.num_batches_tracked"].dtype == jnp.int64


@pytest.mark.usefixtures("torch_default_float64")
def test_swa_multi_avg_fn_weight_is_in_the_default_dtype():
    """torch's weight ``1 / (n + 1)`` is a tensor in its default dtype: float64
    here, not float32 (whose 1 / 3 is 3e-8 off)."""
    rng = np.random.default_rng(5)
    model = torch_mlp()
    ours = S.AveragedModel(
        set_random_state(model, rng), multi_avg_fn=S.get_swa_multi_avg_fn()
    )
    theirs = T.AveragedModel(model, multi_avg_fn=T.get_swa_multi_avg_fn())
    for _ in range(STEPS):
        params = set_random_state(model, rng)
        theirs.update_parameters(model)
        ours.update_parameters(params)
        for name, tensor in theirs.module.named_parameters():
            assert_close(ours.module[name], tensor.detach(), rtol=1e-15, atol=0)


@pytest.mark.usefixtures("torch_default_float64")
def test_integer_leaves_average_in_the_default_dtype():
    """torch's arithmetic of an integer leaf with a float is in its default dtype:
    float64 here, where float32 rounds 16777235 / 2 up to an integer and 1.1 off."""
    cases = [
        (T.get_swa_avg_fn(), S.get_swa_avg_fn(), 0, 16777235, 1),
        (T.get_ema_avg_fn(0.9), S.get_ema_avg_fn(0.9), 1, 2, 1),
    ]
    for theirs, ours, averaged, current, n in cases:
        expected = theirs(torch.tensor(averaged), torch.tensor(current), n)
        actual = ours(jnp.asarray(averaged), jnp.asarray(current), jnp.asarray(n))
        assert expected.dtype == torch.float64 and actual.dtype == jnp.float64
        assert float(actual) == expected.item()


def test_swa_multi_avg_fn_on_integers_raises_torchs_error():
    model = torch.nn.BatchNorm1d(2)
    theirs = T.AveragedModel(
        model, multi_avg_fn=T.get_swa_multi_avg_fn(), use_buffers=True
    )
    theirs.update_parameters(model)
    with pytest.raises(RuntimeError) as expected:
        theirs.update_parameters(model)
    ours = S.AveragedModel(
        {"count": jnp.zeros((), jnp.int64)}, multi_avg_fn=S.get_swa_multi_avg_fn()
    )
    with pytest.raises(RuntimeError) as raised:
        ours.update_parameters({"count": jnp.ones((), jnp.int64)})
    assert str(raised.value) == str(expected.value)
    assert int(ours.n_averaged) == 0  # nothing changed


def test_invalid_arguments_raise_torchs_errors():
    cases = [
        (lambda m: m.get_ema_multi_avg_fn(1.5), ValueError),
        (lambda m: m.get_ema_avg_fn(-0.1), ValueError),
    ]
    for make, error in cases:
        with pytest.raises(error) as expected:
            make(T)
        with pytest.raises(error) as raised:
            make(S)
        assert str(raised.value) == str(expected.value)
    fn = S.get_swa_avg_fn()
    with pytest.raises(AssertionError) as expected:
        T.AveragedModel(torch_mlp(), avg_fn=fn, multi_avg_fn=fn)
    with pytest.raises(AssertionError) as raised:
        S.AveragedModel({"w": jnp.zeros(2)}, avg_fn=fn, multi_avg_fn=fn)
    assert str(raised.value) == str(expected.value)


def test_update_rejects_another_structure_or_shape():
    avg = S.AveragedModel({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="structure"):
        avg.update_parameters({"v": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"params\['w'\] has shape \(3,\)"):
        avg.update_parameters({"w": jnp.zeros(3)})
    assert int(avg.n_averaged) == 0


# --- the functional form --------------------------------------------------------------


def test_averaged_under_scan_and_vmap_matches_torch():
    rng = np.random.default_rng(4)
    model = torch_mlp()
    theirs = T.AveragedModel(model, multi_avg_fn=T.get_ema_multi_avg_fn(0.8))
    states = []
    for _ in range(STEPS):
        states.append(set_random_state(model, rng))
        theirs.update_parameters(model)
    ema = S.averaged(multi_avg_fn=S.get_ema_multi_avg_fn(0.8))

    def run(trajectory):
        first = jax.tree.map(lambda x: x[0], trajectory)
        final, _ = jax.lax.scan(
            lambda state, params: (ema.update(params, state), None),
            ema.init(first),
            trajectory,
        )
        return final

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    final = jax.jit(run)(stacked)
    assert int(final.n_averaged) == STEPS
    for name, tensor in theirs.module.named_parameters():
        assert_close(final.params[name], tensor.detach())
    # A batch of two trajectories: the same result twice.
    batched = jax.vmap(run)(jax.tree.map(lambda x: jnp.stack([x, x]), stacked))
    for name, tensor in theirs.module.named_parameters():
        assert_close(batched.params[name][1], tensor.detach())


def test_averaged_keeps_shardings_on_several_devices():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from functorch_optim import swa_utils as S
        mesh = jax.make_mesh((4,), ("x",))
        sharding = NamedSharding(mesh, P("x"))
        params = {"w": jax.device_put(jnp.arange(8.0), sharding), "b": jnp.ones(3)}
        swa = S.averaged()
        state = jax.jit(swa.init)(params)
        update = jax.jit(swa.update)
        for k in range(3):
            state = update(jax.tree.map(lambda x: x + k, params), state)
        assert state.params["w"].sharding.is_equivalent_to(sharding, 1)
        np.testing.assert_allclose(np.asarray(state.params["w"]), np.arange(8.0) + 1)
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(Path(__file__).parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env
    )
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


# --- nnx models with BatchNorm --------------------------------------------------------


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype=jnp.float64):
        kw = dict(param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(3, 4, **kw)
        self.bn1 = nnx.BatchNorm(4, use_running_average=True, **kw)
        self.fc2 = nnx.Linear(4, 3, **kw)
        self.bn2 = nnx.BatchNorm(3, use_running_average=True, **kw)
        for norm in (self.bn1, self.bn2):  # flax keeps them in float32, torch in
            norm.mean = nnx.BatchStat(jnp.zeros_like(norm.scale[...]))  # the model's
            norm.var = nnx.BatchStat(jnp.ones_like(norm.scale[...]))  # dtype

    def __call__(self, x):
        return self.bn2(self.fc2(jax.nn.relu(self.bn1(self.fc1(x)))))


def torch_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4),
        torch.nn.BatchNorm1d(4),
        torch.nn.ReLU(),
        torch.nn.Linear(4, 3),
        torch.nn.BatchNorm1d(3),
    ).double()


# nnx name -> (torch name, nnx array -> torch layout)
NNX_TO_TORCH = {
    "fc1.kernel": ("0.weight", np.transpose),
    "fc1.bias": ("0.bias", np.asarray),
    "bn1.scale": ("1.weight", np.asarray),
    "bn1.bias": ("1.bias", np.asarray),
    "bn1.mean": ("1.running_mean", np.asarray),
    "bn1.var": ("1.running_var", np.asarray),
    "fc2.kernel": ("3.weight", np.transpose),
    "fc2.bias": ("3.bias", np.asarray),
    "bn2.scale": ("4.weight", np.asarray),
    "bn2.bias": ("4.bias", np.asarray),
    "bn2.mean": ("4.running_mean", np.asarray),
    "bn2.var": ("4.running_var", np.asarray),
}


def nnx_values(model: nnx.Module) -> dict:
    """The nnx model's params and batch stats, under torch's names and layouts."""
    flat = {
        ".".join(map(str, path)): np.asarray(value)
        for path, value in jax.tree_util.tree_flatten_with_path(
            nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
        )[0]
        for path in [tuple(getattr(k, "key", k) for k in path)]
    }
    return {NNX_TO_TORCH[k][0]: NNX_TO_TORCH[k][1](v) for k, v in flat.items()}


def set_nnx_like_torch(model: nnx.Module, net: torch.nn.Module) -> None:
    torch_state = {k: v.numpy() for k, v in net.state_dict().items()}
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    for module_name, variables in pure.items():
        for var_name in variables:
            torch_name, to_torch = NNX_TO_TORCH[f"{module_name}.{var_name}"]
            # both layout maps are their own inverses
            variables[var_name] = jnp.asarray(to_torch(torch_state[torch_name]))
    nnx.update(model, pure)


@pytest.mark.parametrize("use_buffers", [False, True])
def test_nnx_batchnorm_model_matches_torch(use_buffers):
    rng = np.random.default_rng(5)
    net, model = torch_net(), NnxNet(nnx.Rngs(0))
    set_random_state(net, rng, with_buffers=True)
    set_nnx_like_torch(model, net)
    theirs = T.AveragedModel(
        net, multi_avg_fn=T.get_ema_multi_avg_fn(0.7), use_buffers=use_buffers
    )
    ours = S.AveragedModel(
        model, multi_avg_fn=S.get_ema_multi_avg_fn(0.7), use_buffers=use_buffers
    )
    assert isinstance(ours.module, NnxNet) and ours.module is not model
    for _ in range(STEPS):
        set_random_state(net, rng, with_buffers=True)
        set_nnx_like_torch(model, net)
        theirs.update_parameters(net)
        ours.update_parameters(model)
        expected = theirs.module.state_dict()
        for name, value in nnx_values(ours.module).items():
            assert_close(value, expected[name])
    x = rng.standard_normal((5, 3))
    theirs.eval()
    assert_close(ours(jnp.asarray(x)), theirs(torch.tensor(x)).detach())


def test_nnx_state_dict_round_trip_mid_run():
    rng = np.random.default_rng(6)
    net, model = torch_net(), NnxNet(nnx.Rngs(0))
    first, second = (S.AveragedModel(model, use_buffers=True) for _ in range(2))
    for _ in range(2):
        set_random_state(net, rng, with_buffers=True)
        set_nnx_like_torch(model, net)
        first.update_parameters(model)
    second.load_state_dict(fo.interop.to_torch(first.state_dict()))
    assert "module.bn1.mean" in second.state_dict()
    for _ in range(2):
        set_random_state(net, rng, with_buffers=True)
        set_nnx_like_torch(model, net)
        first.update_parameters(model)
        second.update_parameters(model)
        assert_state_dicts_close(second.state_dict(), first.state_dict())


# --- state dicts with torch, both ways ------------------------------------------------


def test_state_dicts_move_between_torch_and_jax_mid_run():
    rng = np.random.default_rng(7)
    model = torch_mlp()
    kwargs = {"multi_avg_fn": T.get_ema_multi_avg_fn(0.9)}
    ours = S.AveragedModel(
        set_random_state(model, rng), multi_avg_fn=S.get_ema_multi_avg_fn(0.9)
    )
    reference = T.AveragedModel(model, **kwargs)  # the uninterrupted run
    for _ in range(2):
        set_random_state(model, rng)
        reference.update_parameters(model)
    ours.load_state_dict(reference.state_dict())  # torch -> here
    for _ in range(2):
        params = set_random_state(model, rng)
        reference.update_parameters(model)
        ours.update_parameters(params)
        assert_state_dicts_close(ours.state_dict(), reference.state_dict())
    theirs = T.AveragedModel(torch_mlp(), **kwargs)
    theirs.load_state_dict(fo.interop.to_torch(ours.state_dict()))  # here -> torch
    for _ in range(2):
        set_random_state(model, rng)
        reference.update_parameters(model)
        theirs.update_parameters(model)
        assert_state_dicts_close(
            fo.interop.to_jax(theirs.state_dict()), reference.state_dict()
        )


def test_load_state_dict_errors_are_torchs_and_change_nothing():
    model = torch_mlp()
    theirs = T.AveragedModel(model)
    ours = S.AveragedModel(
        {k: jnp.asarray(v.detach().numpy()) for k, v in model.named_parameters()}
    )
    before = ours.state_dict()
    bad = theirs.state_dict()
    del bad["module.0.bias"]
    bad["extra"] = torch.zeros(1)
    bad["module.2.weight"] = torch.zeros(5, 4, dtype=torch.float64)
    bad["module.2.bias"] = "not an array"
    with pytest.raises(RuntimeError) as expected:
        theirs.load_state_dict(bad)
    with pytest.raises(RuntimeError) as raised:
        ours.load_state_dict(bad)
    assert str(raised.value) == str(expected.value)
    for key, value in ours.state_dict().items():
        assert value is before[key]


# --- SWALR ----------------------------------------------------------------------------


def optimizers():
    groups = [
        {"params": [torch.zeros(2, requires_grad=True)]},
        {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.5},
    ]
    theirs = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    ours = fo.SGD(
        [{"params": [jnp.zeros(2)]}, {"params": [jnp.zeros(1)], "lr": 0.5}],
        lr=0.1,
        momentum=0.9,
    )
    return theirs, ours


def step_both(theirs, ours, their_sched, our_sched):
    theirs.step()
    ours.step(jax.tree.map(jnp.ones_like, ours.params))
    their_sched.step()
    our_sched.step()


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("anneal_epochs", [0, 1, 3])
def test_swalr_matches_torch_and_the_pure_schedule(strategy, anneal_epochs):
    theirs, ours = optimizers()
    kwargs = dict(swa_lr=[0.05, 0.2], anneal_epochs=anneal_epochs)
    their_sched = T.SWALR(theirs, anneal_strategy=strategy, **kwargs)
    our_sched = S.SWALR(ours, anneal_strategy=strategy, **kwargs)
    schedules = [
        S.swalr(lr, swa, anneal_epochs, strategy)
        for lr, swa in zip((0.1, 0.5), kwargs["swa_lr"])
    ]
    for count in range(6):
        lrs = [g["lr"] for g in theirs.param_groups]
        assert [g["lr"] for g in ours.param_groups] == lrs
        assert our_sched.get_last_lr() == their_sched.get_last_lr()
        for schedule, lr in zip(schedules, lrs):
            np.testing.assert_allclose(float(schedule(count)), lr, rtol=RTOL)
        step_both(theirs, ours, their_sched, our_sched)
    assert our_sched.state_dict() == their_sched.state_dict()


def test_swalr_anneals_from_an_lr_another_scheduler_set():
    theirs, ours = optimizers()
    their_sched = T.SWALR(theirs, swa_lr=0.01, anneal_epochs=4)
    our_sched = S.SWALR(ours, swa_lr=0.01, anneal_epochs=4)
    their_cos = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=5)
    our_cos = fo.lr_scheduler.CosineAnnealingLR(ours, T_max=5)
    for step in range(8):
        if step < 3:
            step_both(theirs, ours, their_cos, our_cos)
        else:
            step_both(theirs, ours, their_sched, our_sched)
        assert [g["lr"] for g in ours.param_groups] == [
            g["lr"] for g in theirs.param_groups
        ]


def test_swalr_state_dicts_move_both_ways_mid_run():
    theirs, ours = optimizers()
    their_sched = T.SWALR(
        theirs, swa_lr=0.05, anneal_epochs=5, anneal_strategy="linear"
    )
    our_sched = S.SWALR(ours, swa_lr=0.05, anneal_epochs=5)  # "cos", until loaded
    step_both(theirs, ours, their_sched, our_sched)
    our_sched.load_state_dict(their_sched.state_dict())
    for group, their_group in zip(ours.param_groups, theirs.param_groups):
        group["lr"] = their_group["lr"]
    for _ in range(2):
        step_both(theirs, ours, their_sched, our_sched)
        assert our_sched.get_last_lr() == their_sched.get_last_lr()
    fresh, _ = optimizers()
    for group, our_group in zip(fresh.param_groups, ours.param_groups):
        group["lr"] = our_group["lr"]
    resumed = T.SWALR(fresh, swa_lr=0.05)
    resumed.load_state_dict(our_sched.state_dict())
    for _ in range(3):
        fresh.step()
        resumed.step()
        step_both(theirs, ours, their_sched, our_sched)
        assert resumed.get_last_lr() == our_sched.get_last_lr()


SWALR_ERRORS = {
    "strategy": dict(swa_lr=0.05, anneal_strategy="exp"),
    "negative_epochs": dict(swa_lr=0.05, anneal_epochs=-1),
    "float_epochs": dict(swa_lr=0.05, anneal_epochs=2.0),
    "swa_lr_length": dict(swa_lr=[0.05, 0.01, 0.02]),
}


@pytest.mark.parametrize("name", SWALR_ERRORS)
def test_swalr_errors_match_torch(name):
    theirs, ours = optimizers()
    with pytest.raises(ValueError) as expected:
        T.SWALR(theirs, **SWALR_ERRORS[name])
    with pytest.raises(ValueError) as raised:
        S.SWALR(ours, **SWALR_ERRORS[name])
    assert str(raised.value) == str(expected.value)
    assert all("swa_lr" not in g and "initial_lr" not in g for g in ours.param_groups)
    if name != "swa_lr_length":
        kwargs = {k: v for k, v in SWALR_ERRORS[name].items() if k != "swa_lr"}
        with pytest.raises(ValueError, match=str(expected.value)):
            S.swalr(0.1, 0.05, **kwargs)


def test_swalr_get_lr_outside_step_warns_as_torch():
    _, ours = optimizers()
    sched = S.SWALR(ours, swa_lr=0.05)
    with pytest.warns(UserWarning, match="get_last_lr"):
        sched.get_lr()


def test_swalr_schedule_drives_functional_sgd():
    tx = fo.sgd(lr=S.swalr(0.1, swa_lr=0.02, anneal_epochs=2, anneal_strategy="linear"))
    params = jnp.zeros(())
    state = tx.init(params)
    update = jax.jit(tx.update)
    moves = []
    for _ in range(4):
        updates, state = update(jnp.ones(()), state, params)
        moves.append(-float(updates))
    np.testing.assert_allclose(moves, [0.1, 0.06, 0.02, 0.02], rtol=RTOL)


# --- update_bn ------------------------------------------------------------------------


def batches(rng, sizes=(8, 8, 5), shape=(3,)):
    return [
        (rng.standard_normal((n, *shape)) * 2 + 1, rng.integers(0, 2, n)) for n in sizes
    ]


def test_update_bn_matches_torch():
    rng = np.random.default_rng(8)
    net, model = torch_net(), NnxNet(nnx.Rngs(0))
    set_random_state(net, rng, with_buffers=True)
    set_nnx_like_torch(model, net)
    net.eval()
    loader = batches(rng)
    T.update_bn([(torch.tensor(x), torch.tensor(y)) for x, y in loader], net)
    S.update_bn(loader, model)
    expected = net.state_dict()
    for name, value in nnx_values(model).items():
        assert_close(value, expected[name])
    assert not net.training  # torch restores eval mode; nnx's mode is kept as given
    assert model.bn1.use_running_average and model.bn1.momentum == 0.99
    assert type(model.bn1) is nnx.BatchNorm and not hasattr(
        model.bn1, "num_batches_tracked"
    )


def test_update_bn_reduces_over_every_axis_but_the_features():
    rng = np.random.default_rng(9)
    norm = nnx.BatchNorm(
        3, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
    )
    norm.mean, norm.var = nnx.BatchStat(jnp.zeros(3)), nnx.BatchStat(jnp.ones(3))
    torch_norm = torch.nn.BatchNorm2d(3).double()
    loader = [x for x, _ in batches(rng, sizes=(4, 2), shape=(2, 5, 3))]
    # torch's layout is NCHW, flax's NHWC
    T.update_bn([torch.tensor(x).permute(0, 3, 1, 2) for x in loader], torch_norm)
    S.update_bn(iter(loader), norm)
    assert_close(norm.mean[...], torch_norm.running_mean)
    assert_close(norm.var[...], torch_norm.running_var)


def test_update_bn_on_an_averaged_model_and_edge_cases():
    rng = np.random.default_rng(10)
    model = NnxNet(nnx.Rngs(0))
    avg = S.AveragedModel(model)
    loader = batches(rng, sizes=(6,))
    # one batch: the batch mean and unbiased variance
    S.update_bn(loader, avg, device=jax.devices()[0])
    features = avg.module.fc1(jnp.asarray(loader[0][0]))
    assert_close(avg.module.bn1.mean[...], jnp.mean(features, 0))
    assert_close(avg.module.bn1.var[...], jnp.var(features, 0, ddof=1))
    S.update_bn([], model)  # an empty loader leaves the reset statistics
    assert_close(model.bn1.mean[...], np.zeros(4))
    assert_close(model.bn1.var[...], np.ones(4))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        S.update_bn([np.ones((1, 3))], model)
    synced = nnx.BatchNorm(3, axis_name="batch", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="axis_name='batch' is not supported"):
        S.update_bn([np.ones((4, 3))], synced)
    plain = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    S.update_bn([np.ones((4, 3))], plain)  # no BatchNorm: nothing to do
    with pytest.raises(TypeError, match="nnx.Module"):
        S.update_bn([], {"w": jnp.zeros(2)})


def test_swa_utils_is_exported():
    assert fo.swa_utils is S
    assert "swa_utils" in fo.__all__ and "swa_utils" in dir(fo)

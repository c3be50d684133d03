"""One compile per distinct step (issue 26), counted by JAX's own events.

Each test builds trees of shapes no other test uses, after a warm-up on another
tree has compiled what a process compiles once (scalar conversions), so the
counts are those of a new problem: its step, once. Every count is checked twice:
``fo.optim.compile_count()`` and JAX's ``backend_compile`` events agree.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_optim as fo

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_widths = itertools.count(11)  # a fresh width per tree: shapes no test used


class Compiles:
    """JAX's compile events and ``compile_count()`` across a block."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event == _BACKEND_COMPILE:
            self.events.append(kwargs.get("fun_name", "?"))

    def __enter__(self) -> Compiles:
        self._count = fo.optim.compile_count()
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)
        self.counted = fo.optim.compile_count() - self._count


def compiles(run) -> list[str]:
    """The programs ``run()`` compiled (by name), after checking that
    ``compile_count()`` counted each of them."""
    with Compiles() as seen:
        jax.block_until_ready(run())
    assert seen.counted == len(seen.events), (seen.counted, seen.events)
    return seen.events


def transformer_tree(layers: int, width: int | None = None) -> dict:
    """Per layer two (d, d) and one (d, 4d) matrices and three vectors, as a
    transformer's: all small enough to be packed."""
    d = next(_widths) if width is None else width
    rng = np.random.default_rng(d)
    shapes = {"q": (d, d), "o": (d, d), "fc": (d, 4 * d), "ln": (d,), "b": (d,)}
    shapes["fc_b"] = (4 * d,)
    return {
        f"h{layer}": {
            name: jnp.asarray(rng.standard_normal(shape), jnp.float32)
            for name, shape in shapes.items()
        }
        for layer in range(layers)
    }


def ones_like(tree: dict) -> dict:
    return jax.tree.map(jnp.ones_like, tree)


def sequence(params: dict, grads: dict) -> dict[str, list[str]]:
    """The programs compiled by each call of a training run's life."""
    counts: dict[str, list[str]] = {}
    holder: dict = {}

    def construct():
        holder["opt"] = fo.Adam(params, lr=1e-3)

    counts["construct"] = compiles(construct)
    opt = holder["opt"]
    counts["step 1"] = compiles(lambda: opt.step(grads))
    counts["step 2"] = compiles(lambda: opt.step(grads))
    counts["step 3"] = compiles(lambda: opt.step(grads))
    counts["state_dict"] = compiles(lambda: holder.update(sd=opt.state_dict()))
    counts["load_state_dict"] = compiles(lambda: opt.load_state_dict(holder["sd"]))
    counts["step after load"] = compiles(lambda: opt.step(grads))

    def new_lr():
        opt.param_groups[0]["lr"] = 0.5
        opt.step(grads)

    counts["lr change, step"] = compiles(new_lr)

    def zero_grad():
        opt.zero_grad(set_to_none=False)
        opt.step()

    counts["zero_grad, step"] = compiles(zero_grad)
    return counts


@pytest.fixture(scope="module", autouse=True)
def warm():
    """What any process compiles once (scalar casts, a one-element state fill)."""
    params = transformer_tree(2, width=7)
    sequence(params, ones_like(params))
    fo.swa_utils.AveragedModel(params).update_parameters(params)


def test_a_new_problem_compiles_its_step_once():
    params = transformer_tree(4)
    counts = sequence(params, ones_like(params))
    assert counts == {
        "construct": [],
        "step 1": ["jit(_step_groups)"],
        "step 2": [],
        "step 3": [],
        "state_dict": [],
        "load_state_dict": [],
        "step after load": [],
        "lr change, step": [],
        "zero_grad, step": [],
    }


def test_state_dict_compiles_the_same_for_any_leaf_count():
    """No program per tree: unpacking is done on the host."""
    small, large = transformer_tree(2), transformer_tree(8)
    seen = []
    for params in (small, large):
        opt = fo.Adam(params, lr=1e-3)
        opt.step(ones_like(params))
        seen.append((compiles(opt.state_dict), compiles(lambda o=opt: o.state)))
    assert seen[0] == seen[1] == ([], [])


def test_a_second_optimizer_on_the_same_problem_compiles_nothing():
    params = transformer_tree(3)
    grads = ones_like(params)
    first = fo.Adam(params, lr=1e-3)
    first.step(grads)
    saved = first.state_dict()
    assert all(seen == [] for seen in sequence(params, grads).values())

    def resumed():
        opt = fo.Adam(params, lr=1e-3)
        opt.load_state_dict(saved)
        opt.step(grads)  # the first step after loading: the step already compiled

    assert compiles(resumed) == []


def test_grads_committed_or_not_share_the_step():
    """jit keys on whether an argument is committed to its device: grads made
    eagerly (not committed) and grads of the params a step returned (committed)
    run the same program."""
    params = transformer_tree(2)
    opt = fo.Adam(params, lr=1e-3)
    loose = ones_like(params)
    held = jax.device_put(loose, jax.devices()[0])
    assert compiles(lambda: opt.step(loose)) == ["jit(_step_groups)"]
    assert compiles(lambda: opt.step(held)) == []
    assert compiles(lambda: opt.step(loose)) == []
    grads = jax.grad(lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p)))
    new = grads(opt.params)
    assert compiles(lambda: opt.step(new)) == []


def test_averaged_models_share_one_compiled_update():
    params = transformer_tree(2)
    later = jax.tree.map(lambda x: x + 1, params)
    first = fo.swa_utils.AveragedModel(params)
    assert len(compiles(lambda: first.update_parameters(params))) == 1
    assert compiles(lambda: first.update_parameters(later)) == []
    second = fo.swa_utils.AveragedModel(params)
    assert compiles(lambda: second.update_parameters(later)) == []
    # an EMA made twice is one averaging function: one compile for both models
    ema = [
        fo.swa_utils.AveragedModel(
            params, multi_avg_fn=fo.swa_utils.get_ema_multi_avg_fn(0.99)
        )
        for _ in range(2)
    ]
    assert len(compiles(lambda: ema[0].update_parameters(params))) == 1
    assert compiles(lambda: ema[1].update_parameters(later)) == []
    assert compiles(lambda: ema[1].load_state_dict(first.state_dict())) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: fo.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        lambda opt: fo.lr_scheduler.CosineAnnealingLR(opt, T_max=3),
        lambda opt: fo.lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (epoch + 1)),
        lambda opt: fo.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10),
        lambda opt: fo.lr_scheduler.ReduceLROnPlateau(opt, patience=0),
    ],
    ids=["StepLR", "CosineAnnealingLR", "LambdaLR", "OneCycleLR", "ReduceLROnPlateau"],
)
def test_schedulers_compile_nothing(make):
    """A scheduler computes and sets an array lr on the host (issue 26): its steps
    compile nothing, whatever the lr's dtype (float16: one no other test casts
    to), and the lr stays an array of its dtype, near the values a float lr gets."""
    params = transformer_tree(1)
    grads = ones_like(params)
    # made on the host, so that no float16 cast is compiled before the scheduler's
    held_lr = jax.device_put(np.asarray(0.25, np.float16))
    held = fo.SGD(params, lr=held_lr, momentum=0.9)
    loose = fo.SGD(params, lr=0.25, momentum=0.9)
    held_sched, loose_sched = make(held), make(loose)
    held.step(grads)
    loose.step(grads)
    # ReduceLROnPlateau steps on a metric (a constant one: it reduces every step)
    metric = [1.0] if isinstance(held_sched, fo.lr_scheduler.ReduceLROnPlateau) else []
    with Compiles() as seen:
        for _ in range(4):
            held_sched.step(*metric)
    assert seen.events == []
    for _ in range(4):
        loose_sched.step(*metric)
    lr = held.param_groups[0]["lr"]
    assert isinstance(lr, jax.Array) and lr.dtype == jnp.float16
    np.testing.assert_allclose(float(lr), loose.param_groups[0]["lr"], rtol=2e-3)


def test_a_restored_state_runs_the_step_already_compiled(tmp_path):
    """``restore(like=...)`` places each array as its ``like`` leaf is placed,
    committed or not (issue 26): jit keys on that, so the step after a restore
    runs the program the run before it compiled."""
    params = transformer_tree(2)
    grads = ones_like(params)
    tx = fo.packed(fo.adam(lr=1e-3))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    fresh = tx.init(params)  # made eagerly: not committed
    later_params, later = step(*step(params, fresh))  # a step's outputs: committed
    path = tmp_path / "state.fockpt"
    for at, state in ((params, fresh), (later_params, later)):
        fo.checkpoint.save(path, state)
        restored = fo.checkpoint.restore(path, like=state)
        with Compiles() as seen:
            jax.block_until_ready(step(at, restored))
        assert seen.events == []

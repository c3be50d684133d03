"""A functional schedule's position moves to and from torch's scheduler state.

Each case pairs a schedule of ``functorch_optim.schedules`` with the torch scheduler
built with the same arguments on a one-group optimizer. After ``k`` torch steps,
``count_from_torch`` reads ``k`` and the schedule's value there is torch's lr;
``torch_state_dict(k)`` is torch's ``state_dict()`` key for key, and a fresh torch
scheduler loading it (with the optimizer's state, as a resumed script loads both)
continues as the uninterrupted one. Only the schedulers' arithmetic runs: the
optimizers are never stepped.
"""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import optax
import pytest
import torch
import torch.optim.lr_scheduler as T

import functorch_optim.schedules as S

LR = 0.1
POSITIONS = (0, 1, 3, 6, 11)  # across the cases' milestones, cycles and phases
AFTER = 10  # torch steps after resuming
# CyclicLR's and OneCycleLR's momentum half, which an lr schedule leaves open
MOMENTUM = {"cycle_momentum", "use_beta1", "base_momentums", "max_momentums"}


def _inverse_time(epoch):
    return 1.0 / (1 + 0.5 * epoch)


# name -> (schedule, build(torch optimizer) -> torch scheduler)
CASES = {
    "step": (S.step_lr(LR, 3, 0.5), lambda o: T.StepLR(o, 3, 0.5)),
    "multi_step": (
        S.multi_step_lr(LR, [5, 2, 5]),
        lambda o: T.MultiStepLR(o, [5, 2, 5]),
    ),
    "exponential": (S.exponential_lr(LR, 0.9), lambda o: T.ExponentialLR(o, 0.9)),
    "cosine": (
        S.cosine_annealing_lr(LR, 8, 0.001),
        lambda o: T.CosineAnnealingLR(o, 8, 0.001),
    ),
    "linear": (
        S.linear_lr(LR, 0.2, 0.9, 6),
        lambda o: T.LinearLR(o, 0.2, 0.9, 6),
    ),
    "constant": (S.constant_lr(LR, 0.25, 4), lambda o: T.ConstantLR(o, 0.25, 4)),
    "lambda": (
        S.lambda_lr(LR, _inverse_time),
        lambda o: T.LambdaLR(o, _inverse_time),
    ),
    "multiplicative": (
        S.multiplicative_lr(LR, lambda k: 0.95),
        lambda o: T.MultiplicativeLR(o, lambda k: 0.95),
    ),
    "polynomial": (S.polynomial_lr(LR, 8, 2.0), lambda o: T.PolynomialLR(o, 8, 2.0)),
    "one_cycle": (
        S.one_cycle_lr(0.5, total_steps=30, three_phase=True),
        lambda o: T.OneCycleLR(o, 0.5, total_steps=30, three_phase=True),
    ),
    "warm_restarts": (
        S.cosine_annealing_warm_restarts(LR, 2, 2, 0.001),
        lambda o: T.CosineAnnealingWarmRestarts(o, 2, 2, 0.001),
    ),
    "cyclic": (
        S.cyclic_lr(0.01, 0.1, 4, 3, mode="triangular2"),
        lambda o: T.CyclicLR(o, 0.01, 0.1, 4, 3, mode="triangular2"),
    ),
    "sequential": (
        S.sequential_lr(
            [
                S.linear_lr(LR, 0.1, total_iters=4),
                S.exponential_lr(LR, 0.9),
                S.cosine_annealing_warm_restarts(LR, 3),
            ],
            milestones=[3, 6],
        ),
        lambda o: T.SequentialLR(
            o,
            [
                T.LinearLR(o, 0.1, total_iters=4),
                T.ExponentialLR(o, 0.9),
                T.CosineAnnealingWarmRestarts(o, 3),
            ],
            milestones=[3, 6],
        ),
    ),
    "chained": (
        S.chained_lr(LR, [S.constant_lr(1.0, 0.5, 4), S.step_lr(1.0, 2, 0.8)]),
        lambda o: T.ChainedScheduler([T.ConstantLR(o, 0.5, 4), T.StepLR(o, 2, 0.8)]),
    ),
}


def torch_optimizer(lr=LR):
    return torch.optim.SGD([torch.zeros((), requires_grad=True)], lr=lr, momentum=0.9)


def stepped(build, k, *, optimizer=None):
    """A torch scheduler built on a fresh optimizer and stepped ``k`` times."""
    scheduler = build(optimizer or torch_optimizer())
    for _ in range(k):
        scheduler.step()
    return scheduler


def assert_same_state(ours, torchs, where="state"):
    """Equal keys; floats equal to rounding (torch multiplies step by step)."""
    assert ours.keys() == torchs.keys(), where
    for key, theirs in torchs.items():
        mine = ours[key]
        if key == "_schedulers":
            assert len(mine) == len(theirs), where
            for i, (m, t) in enumerate(zip(mine, theirs, strict=True)):
                assert_same_state(m, t, f"{where}._schedulers[{i}]")
        elif key == "_last_lr":
            assert mine == pytest.approx(theirs, rel=1e-12, abs=0), f"{where}.{key}"
            assert all(type(v) is float for v in mine), f"{where}.{key}"
        else:
            assert mine == theirs, f"{where}.{key}"
            assert type(mine) is type(theirs), f"{where}.{key}"


def without_momentum(state):
    state = {k: v for k, v in state.items() if k not in MOMENTUM}
    if "_schedulers" in state:
        state["_schedulers"] = [without_momentum(s) for s in state["_schedulers"]]
    return state


@pytest.mark.filterwarnings("ignore:Detected call of")  # optimizers never stepped
@pytest.mark.parametrize("k", POSITIONS)
@pytest.mark.parametrize("name", CASES)
def test_count_from_torch_reads_torch_position(name, k):
    schedule, build = CASES[name]
    scheduler = stepped(build, k)
    assert schedule.count_from_torch(scheduler.state_dict()) == k
    assert float(schedule(k)) == pytest.approx(scheduler.get_last_lr()[0], rel=1e-12)


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("k", POSITIONS)
@pytest.mark.parametrize("name", CASES)
def test_torch_state_dict_is_torch_state_and_continues_torch_run(name, k):
    schedule, build = CASES[name]
    uninterrupted = stepped(build, k)
    ours = schedule.torch_state_dict(k)
    assert_same_state(ours, without_momentum(uninterrupted.state_dict()))

    # Resume as a script does: build, load the optimizer's state and the schedule's.
    optimizer = torch_optimizer()
    resumed = build(optimizer)
    optimizer.load_state_dict(uninterrupted.optimizer.state_dict())
    resumed.load_state_dict(pickle.loads(pickle.dumps(ours)))
    for step in range(AFTER):
        uninterrupted.step()
        resumed.step()
        where = f"step {k + step + 1}"
        assert resumed.get_last_lr() == uninterrupted.get_last_lr(), where
        assert optimizer.param_groups == uninterrupted.optimizer.param_groups, where
    # equal but for a finished scheduler's last lr (SequentialLR's), to rounding
    assert_same_state(resumed.state_dict(), uninterrupted.state_dict())


def test_count_accepts_a_state_count_and_rejects_a_negative_one():
    schedule = S.step_lr(LR, 3)
    assert schedule.torch_state_dict(torch.tensor(4).numpy())["last_epoch"] == 4
    with pytest.raises(ValueError, match="count >= 0, but got -1"):
        schedule.torch_state_dict(-1)
    with pytest.raises(TypeError):
        schedule.torch_state_dict(4.0)


def test_option_mismatch_names_both_values():
    state = T.StepLR(torch_optimizer(), step_size=10).state_dict()
    with pytest.raises(
        ValueError,
        match="StepLR's step_size: the schedule has 30, the state dict has 10",
    ):
        S.step_lr(LR, 30).count_from_torch(state)
    with pytest.raises(
        ValueError,
        match=r"StepLR's base_lrs: the schedule has 0\.2, the state dict has 0\.1",
    ):
        S.step_lr(0.2, 10).count_from_torch(state)


def test_another_class_state_is_rejected():
    state = T.ExponentialLR(torch_optimizer(), gamma=0.9).state_dict()
    with pytest.raises(
        ValueError, match=r"not a StepLR's: it has \[\] and lacks \['step_size'\]"
    ):
        S.step_lr(LR, 30, gamma=0.9).count_from_torch(state)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_nested_mismatch_names_the_scheduler():
    _, build = CASES["sequential"]
    schedule = S.sequential_lr(
        [
            S.linear_lr(LR, 0.1, total_iters=4),
            S.exponential_lr(LR, 0.8),
            S.cosine_annealing_warm_restarts(LR, 3),
        ],
        milestones=[3, 6],
    )
    with pytest.raises(
        ValueError,
        match=r"SequentialLR's scheduler 1 \(ExponentialLR\)'s gamma: "
        r"the schedule has 0\.8, the state dict has 0\.9",
    ):
        schedule.count_from_torch(stepped(build, 4).state_dict())


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_several_param_groups_need_group_where_they_differ():
    optimizer = torch.optim.SGD(
        [
            {"params": [torch.zeros((), requires_grad=True)]},
            {"params": [torch.zeros((), requires_grad=True)], "lr": 0.05},
        ],
        lr=LR,
    )
    state = stepped(lambda o: T.StepLR(o, 3), 5, optimizer=optimizer).state_dict()
    with pytest.raises(
        ValueError,
        match=r"base_lrs differ between its 2 param groups \(\[0\.1, 0\.05\]\): "
        "pass group=",
    ):
        S.step_lr(LR, 3).count_from_torch(state)
    assert S.step_lr(LR, 3).count_from_torch(state, group=0) == 5
    assert S.step_lr(0.05, 3).count_from_torch(state, group=1) == 5
    with pytest.raises(
        ValueError, match="base_lrs: the schedule has 0.1, the state dict has 0.05"
    ):
        S.step_lr(LR, 3).count_from_torch(state, group=1)
    with pytest.raises(
        ValueError, match="group=2, but the state dict has 2 param groups"
    ):
        S.step_lr(LR, 3).count_from_torch(state, group=2)


STEPS_PER_EPOCH = 3


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_per_epoch_follows_a_scheduler_stepped_each_epoch():
    schedule = S.per_epoch(S.step_lr(LR, 2, 0.5), steps_per_epoch=STEPS_PER_EPOCH)
    optimizer = torch_optimizer()
    scheduler = T.StepLR(optimizer, 2, 0.5)
    for count in range(8 * STEPS_PER_EPOCH):
        epoch = count // STEPS_PER_EPOCH
        # the lr of optimizer step count + 1, and torch's scheduler after `epoch` epochs
        assert float(schedule(count)) == optimizer.param_groups[0]["lr"], count
        assert schedule.torch_state_dict(count) == scheduler.state_dict(), count
        # torch's state has the epoch only: the count of the epoch's start
        assert (
            schedule.count_from_torch(scheduler.state_dict()) == epoch * STEPS_PER_EPOCH
        )
        if count % STEPS_PER_EPOCH == STEPS_PER_EPOCH - 1:  # the epoch's last batch
            scheduler.step()


def test_per_epoch_of_per_epoch_multiplies_the_lengths():
    schedule = S.per_epoch(S.per_epoch(S.exponential_lr(LR, 0.5), 2), 3)
    assert float(schedule(11)) == float(S.exponential_lr(LR, 0.5)(1))
    assert schedule.torch_state_dict(12)["last_epoch"] == 2
    with pytest.raises(ValueError, match="positive integer steps_per_epoch, but got 0"):
        S.per_epoch(S.step_lr(LR, 3), 0)


def test_schedules_without_a_torch_scheduler_say_so():
    with pytest.raises(ValueError, match="has no torch scheduler"):
        S.cyclic_momentum(step_size_up=4).torch_state_dict(3)
    with pytest.raises(ValueError, match="has no torch scheduler"):
        S.sequential_lr([lambda t: LR, S.step_lr(LR, 3)], [2]).torch_state_dict(3)
    per_epoch_inside = S.sequential_lr(
        [S.per_epoch(S.step_lr(LR, 3), 2), S.step_lr(LR, 3)], [4]
    )
    with pytest.raises(ValueError, match="apply per_epoch to it, not to its schedules"):
        per_epoch_inside.count_from_torch({})
    with pytest.raises(
        ValueError, match=r"one initial lr; the schedules start from \[0\.1, 0\.2\]"
    ):
        S.sequential_lr([S.step_lr(LR, 3), S.step_lr(0.2, 3)], [4]).torch_state_dict(5)


def test_state_is_double_with_x64_off():
    """torch keeps its lrs as Python floats: the state's are computed in double."""
    with jax.enable_x64(False):
        schedule = S.cosine_annealing_warm_restarts(LR, 3, 2, 0.001)
        assert schedule(7).dtype == "float32"
        state = schedule.torch_state_dict(7)
    assert state == S.cosine_annealing_warm_restarts(LR, 3, 2, 0.001).torch_state_dict(
        7
    )


def test_a_schedule_is_still_a_function_of_the_count():
    schedule = S.per_epoch(S.multi_step_lr(LR, [2, 4]), 3)
    counts = jax.numpy.arange(15)
    values = jax.jit(jax.vmap(schedule))(counts)
    assert list(values) == [float(schedule(int(c))) for c in counts]
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    state = tx.init(jax.numpy.zeros(()))
    for _ in range(7):
        _, state = jax.jit(tx.update)(jax.numpy.ones(()), state)
    assert state.hyperparams["learning_rate"] == schedule(6)


def test_a_lambda_divides_the_count_as_torch_does():
    """torch calls lr_lambda with a Python int, so t / n divides in double; the
    count a lambda gets divides in the default float type too (an int32 count
    would divide in float32, 3e-6 off after a few steps of a warmup)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: t / 3)
    schedule = S.lambda_lr(1.0, lambda t: t / 3)
    jitted = jax.jit(schedule)
    for count in range(1, 5):
        optimizer.step()
        scheduler.step()
        assert float(jitted(jnp.int32(count))) == scheduler.get_last_lr()[0]

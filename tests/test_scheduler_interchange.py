"""Every fo.lr_scheduler class continues a torch scheduler's run, and torch continues
its run, from a state dict taken mid-run.

Each case runs the source scheduler (torch's or ours) for some steps, moves its
optimizer's and its own ``state_dict()`` through pickle (as a checkpoint file carries
them) into a freshly built twin on the other side, then steps both: the twin's
scheduled values equal the source's at every step and both end in the same state, as
one uninterrupted run would. The optimizers have two param groups of scalar params
and are never stepped: schedulers only read and write ``param_groups``.
"""

from __future__ import annotations

import math
import pickle

import jax.numpy as jnp
import pytest
import torch
import torch.optim.lr_scheduler as T

import functorch_optim as fo
import functorch_optim.lr_scheduler as L

BEFORE = 7  # steps of the source before the state moves
AFTER = 30  # steps of both after it
GROUP_LRS = (0.1, 0.05)
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, fo.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, fo.Adam, {"betas": (0.9, 0.99)}),
}


def torch_opt(kind):
    cls, _, kwargs = OPTIMIZERS[kind]
    groups = [
        {"params": [torch.zeros((), requires_grad=True)]},
        {"params": [torch.zeros((), requires_grad=True)], "lr": GROUP_LRS[1]},
    ]
    return cls(groups, lr=GROUP_LRS[0], **kwargs)


def fo_opt(kind):
    _, cls, kwargs = OPTIMIZERS[kind]
    groups = [
        {"params": [jnp.zeros(())]},
        {"params": [jnp.zeros(())], "lr": GROUP_LRS[1]},
    ]
    return cls(groups, lr=GROUP_LRS[0], **kwargs)


class CalledDecay:
    """A callable object with state of its own (how often it was called), which
    torch's state dict carries as the object's ``__dict__``."""

    def __init__(self, rate):
        self.rate = rate
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return self.rate**self.calls


def _inverse_time(epoch):
    return 1.0 / (1 + 0.5 * epoch)


# name -> (optimizer kind, build(module, optimizer)); one or more per class.
CASES = {
    "LambdaLR": (
        "sgd",
        lambda m, o: m.LambdaLR(o, [CalledDecay(0.95), _inverse_time]),
    ),
    "MultiplicativeLR": (
        "sgd",
        lambda m, o: m.MultiplicativeLR(o, [lambda e: 0.9, CalledDecay(0.99)]),
    ),
    "StepLR": ("sgd", lambda m, o: m.StepLR(o, step_size=3, gamma=0.5)),
    "MultiStepLR": ("sgd", lambda m, o: m.MultiStepLR(o, milestones=[2, 9, 9, 20])),
    "ConstantLR": ("sgd", lambda m, o: m.ConstantLR(o, factor=0.25, total_iters=10)),
    "LinearLR": (
        "sgd",
        lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=0.8, total_iters=12),
    ),
    "ExponentialLR": ("sgd", lambda m, o: m.ExponentialLR(o, gamma=0.9)),
    "SequentialLR": (
        "sgd",
        lambda m, o: m.SequentialLR(
            o,
            [
                # torch's SequentialLR restarts a later scheduler through its
                # get_lr, which a ChainedScheduler has not: it can only come first.
                m.ChainedScheduler(
                    [
                        m.ConstantLR(o, factor=0.5, total_iters=3),
                        m.LambdaLR(o, CalledDecay(0.97)),
                    ]
                ),
                m.LinearLR(o, start_factor=0.2, total_iters=5),
                m.CosineAnnealingLR(o, T_max=8),
            ],
            milestones=[5, 12],
        ),
    ),
    "PolynomialLR": ("sgd", lambda m, o: m.PolynomialLR(o, total_iters=15, power=2.0)),
    # T_max=10 crosses the minimum, where the recursion steps off 1 + cos(pi) = 0.
    "CosineAnnealingLR": (
        "sgd",
        lambda m, o: m.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
    ),
    "ChainedScheduler": (
        "sgd",
        lambda m, o: m.ChainedScheduler(
            [
                m.StepLR(o, step_size=4, gamma=0.5),
                m.MultiplicativeLR(o, CalledDecay(0.98)),
            ],
            optimizer=o,
        ),
    ),
    "ReduceLROnPlateau": (
        "sgd",
        lambda m, o: m.ReduceLROnPlateau(
            o, patience=1, cooldown=2, factor=0.5, min_lr=[0.0, 0.01]
        ),
    ),
    "ReduceLROnPlateau_max_abs": (
        "sgd",
        lambda m, o: m.ReduceLROnPlateau(
            o, mode="max", threshold_mode="abs", threshold=0.01, patience=2
        ),
    ),
    "CyclicLR": (
        "sgd",
        lambda m, o: m.CyclicLR(
            o,
            base_lr=[0.01, 0.02],
            max_lr=[0.1, 0.2],
            step_size_up=4,
            step_size_down=3,
            mode="triangular2",
        ),
    ),
    "CyclicLR_scale_object": (
        "adam",
        lambda m, o: m.CyclicLR(
            o,
            base_lr=0.01,
            max_lr=0.1,
            step_size_up=3,
            scale_fn=CalledDecay(0.9),
            scale_mode="iterations",
        ),
    ),
    "CosineAnnealingWarmRestarts": (
        "sgd",
        lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.001),
    ),
    "OneCycleLR": (
        "adam",
        lambda m, o: m.OneCycleLR(
            o, max_lr=[0.5, 0.2], total_steps=BEFORE + AFTER, three_phase=True
        ),
    ),
}

# Losses that improve every fourth step and stall in between; a nan and an inf never
# improve on the best (torch's comparisons are False for them).
METRICS = [1.0 / (1 + k // 4) for k in range(BEFORE + AFTER)]
METRICS[BEFORE + 3] = math.nan
METRICS[BEFORE + 9] = math.inf

SCHEDULED = (
    "lr",
    "initial_lr",
    "momentum",
    "betas",
    "max_lr",
    "min_lr",
    "max_momentum",
    "base_momentum",
)


def scheduled_values(opt):
    """Every group's scheduled entries as Python floats (betas flattened)."""
    return [
        {
            key: tuple(map(float, group[key])) if key == "betas" else float(group[key])
            for key in SCHEDULED
            if key in group
        }
        for group in opt.param_groups
    ]


def advance(scheduler, k):
    if isinstance(scheduler, (T.ReduceLROnPlateau, L.ReduceLROnPlateau)):
        scheduler.step(METRICS[k])
    else:
        scheduler.step()


def carried(state_dict):
    """A state dict as a checkpoint file gives it back."""
    return pickle.loads(pickle.dumps(state_dict))


SIDES = {
    "torch": (T, torch_opt, fo.interop.to_torch_state_dict),
    # the facade loads torch's tensors as they are
    "fo": (L, fo_opt, lambda state_dict: state_dict),
}


def test_every_scheduler_class_has_a_case():
    classes = {name.split("_")[0] for name in CASES}
    assert classes == set(L.__all__) - {"LRScheduler"}
    assert classes == set(T.__all__) - {"LRScheduler"}


@pytest.mark.filterwarnings("ignore:Detected call of")  # optimizers never stepped
@pytest.mark.parametrize("source,target", [("torch", "fo"), ("fo", "torch")])
@pytest.mark.parametrize("name", CASES)
def test_state_dict_continues_the_run_on_the_other_side(name, source, target):
    kind, build = CASES[name]
    source_module, source_opt_of, _ = SIDES[source]
    target_module, target_opt_of, optimizer_state_for_target = SIDES[target]

    source_opt = source_opt_of(kind)
    source_sched = build(source_module, source_opt)
    for k in range(BEFORE):
        advance(source_sched, k)

    # Resuming as a training script does: build both, then load both.
    target_opt = target_opt_of(kind)
    target_sched = build(target_module, target_opt)
    target_opt.load_state_dict(
        optimizer_state_for_target(carried(source_opt.state_dict()))
    )
    target_sched.load_state_dict(carried(source_sched.state_dict()))
    assert scheduled_values(target_opt) == scheduled_values(source_opt)

    for k in range(BEFORE, BEFORE + AFTER):
        advance(source_sched, k)
        advance(target_sched, k)
        assert scheduled_values(target_opt) == scheduled_values(source_opt), f"step {k}"
        assert target_sched.get_last_lr() == source_sched.get_last_lr(), f"step {k}"
    assert target_sched.state_dict() == source_sched.state_dict()

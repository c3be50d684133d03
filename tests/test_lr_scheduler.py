"""lr_scheduler and schedules against torch.optim.lr_scheduler, step by step.

Each case builds the same scheduler on a torch optimizer and on the facade one
(two param groups with different lrs) and compares every group's lr and, where
cycled, momentum / betas after each of 300 steps. The pure schedules are checked
against both, and as hyperparameters of the functional transforms under jit.
"""

from __future__ import annotations

import copy
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as T

import functorch_optim as fo
import functorch_optim.lr_scheduler as L
import functorch_optim.schedules as S

STEPS = 300
RTOL = 1e-12

# --- optimizers ---------------------------------------------------------------

GROUP_LRS = (0.1, 0.05)
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, "SGD", {"momentum": 0.9}),
    "adam": (torch.optim.Adam, "Adam", {"betas": (0.9, 0.99)}),
}


def torch_opt(kind="sgd"):
    cls, _, kwargs = OPTIMIZERS[kind]
    groups = [
        {"params": [torch.zeros(2, requires_grad=True)]},
        {"params": [torch.zeros(1, requires_grad=True)], "lr": GROUP_LRS[1]},
    ]
    opt = cls(groups, lr=GROUP_LRS[0], **kwargs)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    return opt


def fo_opt(kind="sgd"):
    _, name, kwargs = OPTIMIZERS[kind]
    groups = [
        {"params": [jnp.zeros(2)]},
        {"params": [jnp.zeros(1)], "lr": GROUP_LRS[1]},
    ]
    return getattr(fo, name)(groups, lr=GROUP_LRS[0], **kwargs)


def fo_step(opt):
    opt.step(jax.tree.map(jnp.ones_like, opt.params))


HYPERS = (
    "lr",
    "momentum",
    "betas",
    "initial_lr",
    "max_lr",
    "min_lr",
    "max_momentum",
    "base_momentum",
)


def group_values(opt):
    """The scheduled entries of every group, as floats (betas flattened)."""
    out = []
    for group in opt.param_groups:
        row = {}
        for key in HYPERS:
            if key in group:
                value = group[key]
                row[key] = tuple(map(float, value)) if key == "betas" else float(value)
        out.append(row)
    return out


def assert_groups_close(ours, theirs, context):
    assert len(ours) == len(theirs)
    worst = 0.0
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine.keys() == ref.keys(), context
        for key in ref:
            a, b = np.asarray(mine[key]), np.asarray(ref[key])
            np.testing.assert_allclose(
                a, b, rtol=RTOL, atol=1e-15, err_msg=f"{key} {context}"
            )
            worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


# --- scheduler cases: build(module, optimizer) -----------------------------------


def _lambda_factor(epoch):
    return 0.97**epoch


class Warmup:
    """A callable object: its __dict__ travels in the state dict."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, epoch):
        return min(1.0, (epoch + 1) / self.steps)


CASES = {
    "lambda": lambda m, o: m.LambdaLR(o, _lambda_factor),
    "lambda_per_group": lambda m, o: m.LambdaLR(
        o, [_lambda_factor, lambda e: 1.0 / (1 + e)]
    ),
    "lambda_object": lambda m, o: m.LambdaLR(o, Warmup(25)),
    "multiplicative": lambda m, o: m.MultiplicativeLR(o, lambda e: 0.99),
    "step": lambda m, o: m.StepLR(o, step_size=7, gamma=0.5),
    "step_default": lambda m, o: m.StepLR(o, step_size=30),
    "multistep": lambda m, o: m.MultiStepLR(o, milestones=[3, 10, 10, 50]),
    "constant": lambda m, o: m.ConstantLR(o, factor=0.25, total_iters=10),
    "constant_default": lambda m, o: m.ConstantLR(o),
    "linear": lambda m, o: m.LinearLR(
        o, start_factor=0.1, end_factor=0.9, total_iters=20
    ),
    "linear_default": lambda m, o: m.LinearLR(o),
    "exponential": lambda m, o: m.ExponentialLR(o, gamma=0.98),
    "polynomial": lambda m, o: m.PolynomialLR(o, total_iters=50, power=2.0),
    "polynomial_default": lambda m, o: m.PolynomialLR(o),
    "cosine": lambda m, o: m.CosineAnnealingLR(o, T_max=40, eta_min=0.001),
    "cosine_default": lambda m, o: m.CosineAnnealingLR(o, T_max=300),
    "warm_restarts": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=13),
    "warm_restarts_mult": lambda m, o: m.CosineAnnealingWarmRestarts(
        o, T_0=5, T_mult=2, eta_min=0.001
    ),
    "warm_restarts_mult3": lambda m, o: m.CosineAnnealingWarmRestarts(
        o, T_0=3, T_mult=3
    ),
    "cyclic": lambda m, o: m.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=7),
    "cyclic_triangular2": lambda m, o: m.CyclicLR(
        o,
        base_lr=[0.01, 0.02],
        max_lr=[0.1, 0.2],
        step_size_up=7,
        step_size_down=4,
        mode="triangular2",
        base_momentum=[0.8, 0.7],
        max_momentum=0.95,
    ),
    "cyclic_exp_range": lambda m, o: m.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=9, mode="exp_range", gamma=0.99
    ),
    "cyclic_scale_fn": lambda m, o: m.CyclicLR(
        o,
        base_lr=0.01,
        max_lr=0.1,
        step_size_up=5,
        scale_fn=lambda x: 0.9**x,
        scale_mode="iterations",
        cycle_momentum=False,
    ),
    "one_cycle": lambda m, o: m.OneCycleLR(o, max_lr=0.5, total_steps=STEPS),
    "one_cycle_three_phase": lambda m, o: m.OneCycleLR(
        o,
        max_lr=[0.5, 0.2],
        total_steps=STEPS,
        three_phase=True,
        pct_start=0.25,
        base_momentum=[0.8, 0.85],
        max_momentum=0.9,
    ),
    "one_cycle_linear": lambda m, o: m.OneCycleLR(
        o,
        max_lr=0.3,
        epochs=30,
        steps_per_epoch=10,
        anneal_strategy="linear",
        div_factor=10.0,
        final_div_factor=100.0,
    ),
    "one_cycle_no_momentum": lambda m, o: m.OneCycleLR(
        o, max_lr=0.3, total_steps=STEPS, cycle_momentum=False
    ),
    "sequential": lambda m, o: m.SequentialLR(
        o,
        [
            m.LinearLR(o, start_factor=0.1, total_iters=10),
            m.CosineAnnealingLR(o, T_max=100),
            m.ExponentialLR(o, gamma=0.99),
        ],
        milestones=[10, 110],
    ),
    "sequential_lambda": lambda m, o: m.SequentialLR(
        o,
        [m.ConstantLR(o, factor=0.5, total_iters=20), m.LambdaLR(o, _lambda_factor)],
        milestones=[30],
    ),
    "chained": lambda m, o: m.ChainedScheduler(
        [m.ConstantLR(o, factor=0.1, total_iters=20), m.ExponentialLR(o, gamma=0.99)]
    ),
    "chained_three": lambda m, o: m.ChainedScheduler(
        [
            m.LinearLR(o, start_factor=0.2, total_iters=15),
            m.StepLR(o, step_size=40, gamma=0.5),
            m.MultiStepLR(o, milestones=[100, 200], gamma=0.3),
        ],
        optimizer=o,
    ),
    "sequential_of_chained": lambda m, o: m.SequentialLR(
        o,
        [
            m.ChainedScheduler(
                [
                    m.ConstantLR(o, factor=0.5, total_iters=8),
                    m.ExponentialLR(o, gamma=0.95),
                ]
            ),
            m.StepLR(o, step_size=25),
        ],
        milestones=[50],
    ),
}

# Cases cycling momentum/betas also run on Adam (betas[0] is cycled).
ADAM_CASES = (
    "cyclic",
    "cyclic_triangular2",
    "one_cycle",
    "one_cycle_three_phase",
    "cosine",
    "sequential",
)

PARAMS = [(name, "sgd") for name in CASES] + [(name, "adam") for name in ADAM_CASES]


def run_both(name, kind, steps=STEPS):
    """Step torch's and our scheduler in lockstep, checking that they warn alike."""
    topt, oopt = torch_opt(kind), fo_opt(kind)
    built = []
    construct = _warnings_of(lambda: built.append(CASES[name](T, topt)))
    assert _warnings_of(lambda: built.append(CASES[name](L, oopt))) == construct
    tsched, osched = built
    yield topt, oopt, tsched, osched
    for k in range(steps):
        # The schedulers read only param_groups; stepping the optimizers at the
        # start is what the order warnings look at (and keeps the test fast).
        if k < 3:
            topt.step()
            fo_step(oopt)
        theirs = _warnings_of(tsched.step)
        assert _warnings_of(osched.step) == theirs
        yield topt, oopt, tsched, osched


@pytest.mark.parametrize("name,kind", PARAMS)
def test_matches_torch_every_step(name, kind):
    worst = 0.0
    for k, (topt, oopt, tsched, osched) in enumerate(run_both(name, kind)):
        worst = max(
            worst,
            assert_groups_close(
                group_values(oopt), group_values(topt), f"{name}/{kind} step {k}"
            ),
        )
        np.testing.assert_allclose(
            osched.get_last_lr(), tsched.get_last_lr(), rtol=RTOL
        )
        assert getattr(osched, "last_epoch", None) == getattr(
            tsched, "last_epoch", None
        )
    assert worst < 1e-12


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_state_dict_has_torchs_keys():
    for name in CASES:
        tsched = CASES[name](T, torch_opt())
        osched = CASES[name](L, fo_opt())
        assert osched.state_dict().keys() == tsched.state_dict().keys(), name


def _copy_hypers(source, target):
    for sgroup, tgroup in zip(source.param_groups, target.param_groups, strict=True):
        for key, value in sgroup.items():
            if key != "params":
                tgroup[key] = copy.deepcopy(value)


ROUND_TRIP = (
    "lambda_object",
    "multiplicative",
    "step",
    "multistep",
    "linear",
    "cosine",
    "warm_restarts_mult",
    "cyclic_triangular2",
    "one_cycle_three_phase",
    "sequential",
    "chained",
    "polynomial",
)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_state_dict_round_trip_continues_identically(name):
    half = STEPS // 2
    opt = fo_opt()
    sched = CASES[name](L, opt)
    fo_step(opt)
    for _ in range(half):
        sched.step()
    saved = copy.deepcopy(sched.state_dict())

    # A fresh optimizer and scheduler, as on resuming: build, then load.
    opt2 = fo_opt()
    sched2 = CASES[name](L, opt2)
    _copy_hypers(opt, opt2)
    sched2.load_state_dict(copy.deepcopy(saved))
    if name == "lambda_object":
        assert sched2.lr_lambdas[0].steps == 25
    fo_step(opt2)
    for _ in range(STEPS - half):
        for s in (sched, sched2):
            s.step()
        assert group_values(opt2) == group_values(opt)
        assert sched2.get_last_lr() == sched.get_last_lr()


@pytest.mark.parametrize(
    "name", ["step", "cosine", "one_cycle", "sequential", "cyclic"]
)
def test_loads_torch_scheduler_state_dict(name):
    """A torch scheduler's state dict continues here as it does in torch."""
    topt, oopt = torch_opt(), fo_opt()
    tsched = CASES[name](T, topt)
    topt.step()
    for _ in range(100):
        tsched.step()
    osched = CASES[name](L, oopt)
    _copy_hypers(topt, oopt)
    osched.load_state_dict(copy.deepcopy(tsched.state_dict()))
    fo_step(oopt)
    for _ in range(100):
        tsched.step()
        osched.step()
        assert_groups_close(group_values(oopt), group_values(topt), name)


def test_resume_with_last_epoch():
    """last_epoch >= 0 resumes from param_groups' initial_lr, as torch."""
    for m, make in ((T, torch_opt), (L, fo_opt)):
        opt = make()
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
        sched = m.CosineAnnealingLR(opt, T_max=20, last_epoch=5)
        m.ExponentialLR(opt, gamma=0.5, last_epoch=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # not stepped: warns
            sched.step()
        if m is T:
            expected = group_values(opt)
        else:
            assert_groups_close(group_values(opt), expected, "resume")


# --- step(epoch): the closed forms ------------------------------------------------

EPOCHS = [0, 1, 2, 5, 5, 9, 3, 20, 41, 40, 60, 7, 120]
CLOSED_FORM = (
    "step",
    "multistep",
    "constant",
    "linear",
    "exponential",
    "polynomial",
    "cosine",
    "warm_restarts",
    "warm_restarts_mult",
    "warm_restarts_mult3",
    "lambda",
)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_step_with_epoch_uses_closed_form(name):
    topt, oopt = torch_opt(), fo_opt()
    tsched, osched = CASES[name](T, topt), CASES[name](L, oopt)
    epochs = EPOCHS + [2.5, 13.75, 30.2] if "warm" in name else EPOCHS
    for epoch in epochs:
        with warnings.catch_warnings(record=True) as tw:
            warnings.simplefilter("always")
            topt.step()
            tsched.step(epoch)
        with warnings.catch_warnings(record=True) as ow:
            warnings.simplefilter("always")
            fo_step(oopt)
            osched.step(epoch)
        assert [str(w.message) for w in ow] == [str(w.message) for w in tw]
        assert_groups_close(group_values(oopt), group_values(topt), f"{name} {epoch}")
        assert osched.last_epoch == tsched.last_epoch
        if "warm" not in name:
            tsched.step()
            osched.step()
            assert_groups_close(group_values(oopt), group_values(topt), name)


# --- ReduceLROnPlateau ----------------------------------------------------------------


def plateau_metrics(n=STEPS, seed=0):
    """Losses that improve, stall, get worse and recover, for both modes."""
    rng = np.random.default_rng(seed)
    trend = np.concatenate(
        [
            np.linspace(1, 0.5, n // 4),
            np.full(n // 4, 0.5),
            np.linspace(0.5, 0.7, n // 4),
            np.linspace(0.7, 0.2, n // 4),
        ]
    )
    return list(trend + 0.002 * rng.standard_normal(trend.shape))


PLATEAU = {
    "default": {},
    "max_abs": {
        "mode": "max",
        "threshold_mode": "abs",
        "threshold": 0.01,
        "patience": 3,
    },
    "min_abs_cooldown": {
        "threshold_mode": "abs",
        "threshold": 0.001,
        "patience": 2,
        "cooldown": 4,
        "factor": 0.5,
    },
    "max_rel_min_lrs": {
        "mode": "max",
        "patience": 1,
        "factor": 0.7,
        "min_lr": [0.01, 0.02],
    },
    "min_rel_min_lr_eps": {
        "patience": 0,
        "factor": 0.9,
        "min_lr": 0.03,
        "eps": 1e-3,
        "cooldown": 1,
    },
}


@pytest.mark.parametrize("options", PLATEAU.values(), ids=PLATEAU.keys())
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_reduce_on_plateau_matches_torch(options, kind):
    topt, oopt = torch_opt(kind), fo_opt(kind)
    tsched = T.ReduceLROnPlateau(topt, **options)
    osched = L.ReduceLROnPlateau(oopt, **options)
    sign = -1.0 if options.get("mode") == "max" else 1.0
    reductions = 0
    topt.step()
    fo_step(oopt)
    for k, metric in enumerate(plateau_metrics()):
        before = group_values(topt)
        tsched.step(torch.tensor(sign * metric))
        osched.step(jnp.asarray(sign * metric))
        reductions += group_values(topt) != before
        assert_groups_close(group_values(oopt), group_values(topt), f"step {k}")
        assert osched.get_last_lr() == tsched.get_last_lr()
        assert (osched.best, osched.num_bad_epochs, osched.cooldown_counter) == (
            tsched.best,
            tsched.num_bad_epochs,
            tsched.cooldown_counter,
        )
    assert reductions >= 2  # the metrics do exercise the reductions
    assert osched.state_dict().keys() == tsched.state_dict().keys()


def test_reduce_on_plateau_state_dict_round_trip():
    metrics = plateau_metrics()
    opt = fo_opt()
    sched = L.ReduceLROnPlateau(opt, patience=2, cooldown=3)
    for metric in metrics[:150]:
        sched.step(metric)
    opt2 = fo_opt()
    sched2 = L.ReduceLROnPlateau(opt2, mode="max")
    _copy_hypers(opt, opt2)
    sched2.load_state_dict(copy.deepcopy(sched.state_dict()))
    assert sched2.mode == "min" and sched2.mode_worse == math.inf
    for metric in metrics[150:]:
        sched.step(metric)
        sched2.step(metric)
        assert group_values(opt2) == group_values(opt)


# Metrics torch's comparisons treat specially: a nan never improves, an inf or -inf
# becomes the best only where it compares as better.
NONFINITE_METRICS = [0.5, math.nan, 0.4, 0.4, math.inf, 0.3, -math.inf, 0.2]
NONFINITE_METRICS += [math.nan, math.inf, 0.1, -math.inf, math.nan, 0.0]
NONFINITE_PLATEAU = {
    "min_rel": {},
    "max_rel": {"mode": "max"},
    "max_abs": {"mode": "max", "threshold_mode": "abs", "threshold": 0.05},
    # the first best is inf * (1 - 1) = nan: nothing ever improves on it
    "min_rel_threshold_1": {"threshold": 1.0},
}


@pytest.mark.parametrize(
    "options", NONFINITE_PLATEAU.values(), ids=NONFINITE_PLATEAU.keys()
)
def test_reduce_on_plateau_nonfinite_metrics_as_torch(options):
    """The class and the transform (jitted) keep torch's state for every metric."""
    options = {"patience": 1, "cooldown": 1, "factor": 0.5, **options}
    topt, oopt = torch_opt(), fo_opt()
    tsched = T.ReduceLROnPlateau(topt, **options)
    osched = L.ReduceLROnPlateau(oopt, **options)
    tx = S.reduce_on_plateau(**options)
    update = jax.jit(lambda state, loss: tx.update(jnp.ones(()), state, value=loss))
    state = tx.init(jnp.zeros(()))
    for k, metric in enumerate(NONFINITE_METRICS):
        tsched.step(metric)
        osched.step(metric)
        _, state = update(state, metric)
        expected = (tsched.best, tsched.num_bad_epochs, tsched.cooldown_counter)
        assert (osched.best, osched.num_bad_epochs, osched.cooldown_counter) == (
            expected
        ), f"step {k}"
        assert (
            float(state.best),
            int(state.num_bad_epochs),
            int(state.cooldown_counter),
        ) == expected, f"step {k}"
        assert group_values(oopt) == group_values(topt), f"step {k}"
        np.testing.assert_allclose(
            float(state.scale) * GROUP_LRS[0], topt.param_groups[0]["lr"], rtol=1e-15
        )


def test_reduce_on_plateau_failed_reduction_keeps_torchs_state():
    """A reduction that raises (a group added, min_lr a list) has counted the
    epoch, as torch's has."""
    outcomes = []
    for m, make, param in (
        (T, torch_opt, torch.zeros(1, requires_grad=True)),
        (L, fo_opt, jnp.zeros(1)),
    ):
        opt = make()
        sched = m.ReduceLROnPlateau(opt, patience=0, cooldown=2, min_lr=[0.0, 0.0])
        sched.step(1.0)
        opt.add_param_group({"params": [param]})
        with pytest.raises(RuntimeError) as info:
            sched.step(2.0)
        state = (sched.best, sched.num_bad_epochs, sched.cooldown_counter)
        outcomes.append((str(info.value), state, sched.last_epoch))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == (1.0, 1, 0)


# --- the pure schedules --------------------------------------------------------------

# (scheduler case, the same shape as a schedule of the initial value, momentum)
SCHEDULES = {
    "lambda": (S.lambda_lr, (_lambda_factor,), None),
    "multiplicative": (S.multiplicative_lr, (lambda k: 0.99,), None),
    "step": (S.step_lr, (7, 0.5), None),
    "step_default": (lambda lr: S.step_lr(lr, step_size=30), (), None),
    "multistep": (lambda lr: S.multi_step_lr(lr, [3, 10, 10, 50]), (), None),
    "constant": (lambda lr: S.constant_lr(lr, 0.25, 10), (), None),
    "constant_default": (S.constant_lr, (), None),
    "linear": (lambda lr: S.linear_lr(lr, 0.1, 0.9, 20), (), None),
    "linear_default": (S.linear_lr, (), None),
    "exponential": (lambda lr: S.exponential_lr(lr, 0.98), (), None),
    "polynomial": (lambda lr: S.polynomial_lr(lr, 50, 2.0), (), None),
    "polynomial_default": (S.polynomial_lr, (), None),
    "cosine": (lambda lr: S.cosine_annealing_lr(lr, 40, 0.001), (), None),
    "cosine_default": (lambda lr: S.cosine_annealing_lr(lr, 300), (), None),
    "warm_restarts": (lambda lr: S.cosine_annealing_warm_restarts(lr, 13), (), None),
    "warm_restarts_mult": (
        lambda lr: S.cosine_annealing_warm_restarts(lr, 5, 2, 0.001),
        (),
        None,
    ),
    "warm_restarts_mult3": (
        lambda lr: S.cosine_annealing_warm_restarts(lr, T_0=3, T_mult=3),
        (),
        None,
    ),
    "cyclic": (
        lambda lr: S.cyclic_lr(0.01, 0.1, 7),
        (),
        S.cyclic_momentum(step_size_up=7),
    ),
    "cyclic_exp_range": (
        lambda lr: S.cyclic_lr(0.01, 0.1, 9, mode="exp_range", gamma=0.99),
        (),
        S.cyclic_momentum(0.8, 0.9, 9, mode="exp_range", gamma=0.99),
    ),
    "cyclic_scale_fn": (
        lambda lr: S.cyclic_lr(
            0.01, 0.1, 5, scale_fn=lambda x: 0.9**x, scale_mode="iterations"
        ),
        (),
        None,
    ),
    "one_cycle": (
        lambda lr: S.one_cycle_lr(0.5, total_steps=STEPS),
        (),
        S.one_cycle_momentum(total_steps=STEPS),
    ),
    "one_cycle_linear": (
        lambda lr: S.one_cycle_lr(
            0.3,
            epochs=30,
            steps_per_epoch=10,
            anneal_strategy="linear",
            div_factor=10.0,
            final_div_factor=100.0,
        ),
        (),
        S.one_cycle_momentum(epochs=30, steps_per_epoch=10, anneal_strategy="linear"),
    ),
    "sequential": (
        lambda lr: S.sequential_lr(
            [
                S.linear_lr(lr, start_factor=0.1, total_iters=10),
                S.cosine_annealing_lr(lr, 100),
                S.exponential_lr(lr, 0.99),
            ],
            [10, 110],
        ),
        (),
        None,
    ),
    "sequential_lambda": (
        lambda lr: S.sequential_lr(
            [S.constant_lr(lr, 0.5, 20), S.lambda_lr(lr, _lambda_factor)], [30]
        ),
        (),
        None,
    ),
    "chained": (
        lambda lr: S.chained_lr(
            lr, [S.constant_lr(1.0, 0.1, 20), S.exponential_lr(1.0, 0.99)]
        ),
        (),
        None,
    ),
    "chained_three": (
        lambda lr: S.chained_lr(
            lr,
            [
                S.linear_lr(1.0, 0.2, total_iters=15),
                S.step_lr(1.0, 40, 0.5),
                S.multi_step_lr(1.0, [100, 200], 0.3),
            ],
        ),
        (),
        None,
    ),
}

# Facade-scheduler values (the first group's), computed once per case.
_FACADE_VALUES: dict = {}


def scheduler_values(name, module, make):
    opt = make()
    sched = CASES[name](module, opt)
    lrs, momentums = [], []
    with warnings.catch_warnings():
        # Only the schedule matters here: the optimizer is not stepped.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(STEPS):
            lrs.append(float(opt.param_groups[0]["lr"]))
            momentums.append(float(opt.param_groups[0].get("momentum", 0.0)))
            sched.step()
    return np.array(lrs), np.array(momentums)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_equals_scheduler_and_torch(name):
    build, args, momentum = SCHEDULES[name]
    schedule = build(GROUP_LRS[0], *args)
    counts = jnp.arange(STEPS)
    values = np.asarray(jax.jit(jax.vmap(schedule))(counts))
    eager = np.array([float(schedule(k)) for k in (0, 1, 17, STEPS - 1)])
    np.testing.assert_allclose(eager, values[[0, 1, 17, STEPS - 1]], rtol=1e-13)
    torch_lrs, torch_momentums = scheduler_values(name, T, torch_opt)
    our_lrs, our_momentums = scheduler_values(name, L, fo_opt)
    np.testing.assert_allclose(values, torch_lrs, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(values, our_lrs, rtol=1e-11, atol=1e-15)
    if momentum is not None:
        m = np.asarray(jax.jit(jax.vmap(momentum))(counts))
        np.testing.assert_allclose(m, torch_momentums, rtol=1e-13)
        np.testing.assert_allclose(m, our_momentums, rtol=1e-13)


def test_schedules_drive_functional_sgd_like_torch():
    """lr and momentum schedules as hyperparameters of fo.sgd, under one jit."""
    steps = 30
    rng = np.random.default_rng(0)
    param = rng.standard_normal(3)
    grads = [rng.standard_normal(3) for _ in range(steps)]

    p = torch.tensor(param, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    sched = T.OneCycleLR(opt, max_lr=0.5, total_steps=steps, three_phase=True)
    expected = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        sched.step()
        expected.append(p.detach().numpy().copy())

    tx = fo.sgd(
        lr=S.one_cycle_lr(0.5, total_steps=steps, three_phase=True),
        momentum=S.one_cycle_momentum(total_steps=steps, three_phase=True),
        nesterov=True,
    )
    traces = []

    @jax.jit
    def step(params, state, grad):
        traces.append(1)
        updates, state = tx.update(grad, state, params)
        return fo.apply_updates(params, updates), state

    params = jnp.asarray(param)
    state = tx.init(params)
    for g, e in zip(grads, expected, strict=True):
        params, state = step(params, state, jnp.asarray(g))
        np.testing.assert_allclose(np.asarray(params), e, rtol=1e-12, atol=1e-14)
    assert len(traces) == 1


def test_schedule_under_x32_keeps_float32():
    with jax.enable_x64(False):
        value = jax.jit(S.cosine_annealing_lr(0.1, T_max=10))(jnp.int32(3))
        assert value.dtype == jnp.float32
        expected = 0.5 * 0.1 * (1 + math.cos(math.pi * 3 / 10))
        np.testing.assert_allclose(float(value), expected, rtol=1e-6)


def test_schedules_module_exports_the_schedules_only():
    defined = {
        name
        for name, value in vars(S).items()
        if getattr(value, "__module__", None) == S.__name__ and not name.startswith("_")
    }
    assert set(S.__all__) == defined | {"reduce_on_plateau"}
    for name in S.__all__:
        assert getattr(fo, name) is getattr(S, name)
        assert "Example:" in getattr(S, name).__doc__, name


# --- reduce_on_plateau transform ------------------------------------------------


@pytest.mark.parametrize("options", PLATEAU.values(), ids=PLATEAU.keys())
def test_reduce_on_plateau_transform_matches_torch(options):
    options = dict(options)
    min_lr = options.pop("min_lr", 0.0)
    if isinstance(min_lr, list):
        min_lr = min_lr[0]
    base_lr = 0.1
    metrics = plateau_metrics()[:120]
    if options.get("mode") == "max":
        metrics = [-m for m in metrics]
    rng = np.random.default_rng(1)
    param = rng.standard_normal(3)
    grads = [rng.standard_normal(3) for _ in metrics]

    p = torch.tensor(param, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr, momentum=0.5)
    # torch's lr is base_lr * scale: its min_lr and eps are in lr units.
    eps = options.pop("eps", 1e-8)
    sched = T.ReduceLROnPlateau(opt, min_lr=min_lr, eps=eps * base_lr, **options)
    expected, lrs = [], []
    for g, metric in zip(grads, metrics, strict=True):
        sched.step(metric)
        p.grad = torch.tensor(g)
        opt.step()
        expected.append(p.detach().numpy().copy())
        lrs.append(opt.param_groups[0]["lr"])

    plateau = S.reduce_on_plateau(min_scale=min_lr / base_lr, eps=eps, **options)
    tx = fo.chain(fo.sgd(lr=base_lr, momentum=0.5), plateau)

    @jax.jit
    def step(params, state, grad, loss):
        updates, state = tx.update(grad, state, params, value=loss)
        return fo.apply_updates(params, updates), state

    params = jnp.asarray(param)
    state = tx.init(params)
    # SGD's update is linear in lr (momentum included: lr multiplies the buffer),
    # so scaling the update is scaling the lr.
    for k, (g, metric) in enumerate(zip(grads, metrics, strict=True)):
        params, state = step(params, state, jnp.asarray(g), metric)
        np.testing.assert_allclose(
            float(state[1].scale) * base_lr, lrs[k], rtol=1e-12, err_msg=f"step {k}"
        )
        np.testing.assert_allclose(
            np.asarray(params), expected[k], rtol=1e-11, atol=1e-13, err_msg=f"step {k}"
        )
    assert min(lrs) < base_lr  # the losses do trigger reductions


def test_reduce_on_plateau_transform_scales_sgd_updates_like_torch():
    base_lr = 0.2
    metrics = plateau_metrics()[:80]
    rng = np.random.default_rng(2)
    param = rng.standard_normal(4)
    grads = [rng.standard_normal(4) for _ in metrics]
    p = torch.tensor(param, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr, weight_decay=0.01)
    sched = T.ReduceLROnPlateau(opt, patience=2, factor=0.5)
    expected = []
    for g, metric in zip(grads, metrics, strict=True):
        sched.step(metric)
        p.grad = torch.tensor(g)
        opt.step()
        expected.append(p.detach().numpy().copy())

    tx = fo.chain(
        fo.sgd(lr=base_lr, weight_decay=0.01),
        S.reduce_on_plateau(patience=2, factor=0.5),
    )
    step = jax.jit(lambda params, state, g, loss: _apply(tx, params, state, g, loss))
    params, state = jnp.asarray(param), None
    state = tx.init(params)
    for g, metric, e in zip(grads, metrics, expected, strict=True):
        params, state = step(params, state, jnp.asarray(g), metric)
        np.testing.assert_allclose(np.asarray(params), e, rtol=1e-12, atol=1e-14)
    assert float(state[1].scale) < 1.0


def _apply(tx, params, state, grad, loss):
    updates, state = tx.update(grad, state, params, value=loss)
    return fo.apply_updates(params, updates), state


def test_reduce_on_plateau_transform_needs_value_and_validates():
    tx = S.reduce_on_plateau()
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(jnp.ones(2), state)
    for kwargs in ({"factor": 1.0}, {"mode": "up"}, {"threshold_mode": "x"}):
        with pytest.raises(ValueError) as ours:
            S.reduce_on_plateau(**kwargs)
        with pytest.raises(ValueError) as theirs:
            T.ReduceLROnPlateau(torch_opt(), **kwargs)
        assert str(ours.value) == str(theirs.value)


# --- errors and warnings --------------------------------------------------------------

BAD = {
    "constant_factor": lambda m, o: m.ConstantLR(o, factor=1.5),
    "constant_negative": lambda m, o: m.ConstantLR(o, factor=-0.1),
    "linear_start": lambda m, o: m.LinearLR(o, start_factor=0),
    "linear_end": lambda m, o: m.LinearLR(o, end_factor=1.5),
    "lambda_count": lambda m, o: m.LambdaLR(o, [_lambda_factor]),
    "multiplicative_count": lambda m, o: m.MultiplicativeLR(o, [_lambda_factor] * 3),
    "multiplicative_not_callable": lambda m, o: m.MultiplicativeLR(o, 0.9),
    "warm_T_0": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=0),
    "warm_T_0_float": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=2.5),
    "warm_T_mult": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0),
    "warm_eta_min": lambda m, o: m.CosineAnnealingWarmRestarts(o, 2, eta_min="0"),
    "cyclic_mode": lambda m, o: m.CyclicLR(o, 0.01, 0.1, mode="square"),
    "cyclic_max_lr_count": lambda m, o: m.CyclicLR(o, 0.01, [0.1, 0.2, 0.3]),
    "cyclic_base_lr_count": lambda m, o: m.CyclicLR(o, [0.01], 0.1),
    "cyclic_momentum_count": lambda m, o: m.CyclicLR(o, 0.01, 0.1, base_momentum=[0.8]),
    "one_cycle_no_total": lambda m, o: m.OneCycleLR(o, 0.1),
    "one_cycle_total": lambda m, o: m.OneCycleLR(o, 0.1, total_steps=0),
    "one_cycle_total_float": lambda m, o: m.OneCycleLR(o, 0.1, total_steps=10.0),
    "one_cycle_epochs": lambda m, o: m.OneCycleLR(o, 0.1, epochs=0, steps_per_epoch=3),
    "one_cycle_steps_per_epoch": lambda m, o: m.OneCycleLR(
        o, 0.1, epochs=2, steps_per_epoch=-3
    ),
    "one_cycle_pct": lambda m, o: m.OneCycleLR(o, 0.1, total_steps=9, pct_start=1.5),
    "one_cycle_pct_int": lambda m, o: m.OneCycleLR(o, 0.1, total_steps=9, pct_start=1),
    "one_cycle_anneal": lambda m, o: m.OneCycleLR(
        o, 0.1, total_steps=9, anneal_strategy="exp"
    ),
    "one_cycle_max_lr_count": lambda m, o: m.OneCycleLR(o, [0.1], total_steps=9),
    "plateau_factor": lambda m, o: m.ReduceLROnPlateau(o, factor=1.0),
    "plateau_mode": lambda m, o: m.ReduceLROnPlateau(o, mode="up"),
    "plateau_threshold_mode": lambda m, o: m.ReduceLROnPlateau(o, threshold_mode="x"),
    "plateau_min_lr_count": lambda m, o: m.ReduceLROnPlateau(o, min_lr=[0.1]),
    "sequential_empty": lambda m, o: m.SequentialLR(o, [], []),
    "sequential_milestones": lambda m, o: m.SequentialLR(
        o, [m.StepLR(o, 3), m.StepLR(o, 4)], [1, 2]
    ),
    "sequential_plateau": lambda m, o: m.SequentialLR(
        o, [m.StepLR(o, 3), m.ReduceLROnPlateau(o)], [4]
    ),
    "sequential_not_scheduler": lambda m, o: m.SequentialLR(o, [object()], []),
    "chained_empty": lambda m, o: m.ChainedScheduler([]),
    "chained_plateau": lambda m, o: m.ChainedScheduler([m.ReduceLROnPlateau(o)], o),
    "resume_without_initial_lr": lambda m, o: m.StepLR(o, 3, last_epoch=4),
    "not_an_optimizer": lambda m, o: m.StepLR([0.1], 3),
    "plateau_not_an_optimizer": lambda m, o: m.ReduceLROnPlateau({"lr": 0.1}),
    "one_cycle_past_total": lambda m, o: _step_times(
        m.OneCycleLR(o, 0.1, total_steps=2), 3
    ),
    "warm_negative_epoch": lambda m, o: m.CosineAnnealingWarmRestarts(o, 3).step(-1),
}


def _step_times(scheduler, n):
    for _ in range(n):
        scheduler.step()


def _raised(build, module, make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            build(module, make())
        except Exception as e:  # noqa: BLE001 - the exception itself is compared
            return e
    raise AssertionError("no exception")


@pytest.mark.parametrize("name", BAD)
def test_errors_match_torch(name):
    theirs = _raised(BAD[name], T, torch_opt)
    ours = _raised(BAD[name], L, fo_opt)
    assert type(ours) is type(theirs)
    assert str(ours) == str(theirs)


def test_error_for_schedulers_of_another_optimizer():
    messages = []
    for m, make in ((T, torch_opt), (L, fo_opt)):
        a, b = make(), make()
        with pytest.raises(ValueError) as info:
            m.SequentialLR(a, [m.StepLR(a, 3), m.StepLR(b, 3)], [2])
        messages.append(str(info.value).split(" has ")[0])
    assert messages[0] == messages[1]


def test_cycle_momentum_needs_momentum_or_betas():
    messages = []
    for opt in (torch.optim.Adagrad([torch.zeros(1)]), fo.Adagrad([jnp.zeros(1)])):
        for build in (
            lambda o: L.CyclicLR(o, 0.01, 0.1),
            lambda o: L.OneCycleLR(o, 0.1, total_steps=5),
        ):
            with pytest.raises(ValueError) as info:
                build(opt)
            messages.append(str(info.value))
        with pytest.raises(ValueError) as info:
            T.CyclicLR(torch.optim.Adagrad([torch.zeros(1)]), 0.01, 0.1)
        messages.append(str(info.value))
    assert len(set(messages)) == 1


def _warnings_of(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [(w.category, str(w.message)) for w in caught]


def test_warnings_match_torch():
    def scheduler_before_optimizer(m, opt, step):
        sched = m.StepLR(opt, 3)
        return lambda: sched.step()

    def overridden_step(m, opt, step):
        sched = m.StepLR(opt, 3)
        opt.step = lambda *a, **k: None
        return lambda: sched.step()

    def get_lr_outside_step(m, opt, step):
        sched = m.ExponentialLR(opt, 0.9)
        return lambda: sched.get_lr()

    def epoch_argument(m, opt, step):
        sched = m.ExponentialLR(opt, 0.9)
        return lambda: (step(opt), sched.step(3))

    def plateau_epoch(m, opt, step):
        sched = m.ReduceLROnPlateau(opt)
        return lambda: sched.step(1.0, 5)

    def right_order(m, opt, step):
        sched = m.CosineAnnealingLR(opt, 10)
        return lambda: (step(opt), sched.step(), step(opt), sched.step())

    for case in (
        scheduler_before_optimizer,
        overridden_step,
        get_lr_outside_step,
        epoch_argument,
        plateau_epoch,
        right_order,
    ):
        theirs = _warnings_of(case(T, torch_opt(), lambda o: o.step()))
        ours = _warnings_of(case(L, fo_opt(), fo_step))
        assert ours == theirs, case.__name__
        if case is not right_order:
            assert theirs, case.__name__


def test_step_wrapper_keeps_the_optimizer_working():
    opt = fo_opt()
    L.StepLR(opt, 3)
    wrapped = opt.step
    L.ExponentialLR(opt, 0.9)  # a second scheduler does not wrap again
    assert opt.step is wrapped and opt.step._wrapped_by_lr_sched
    before = jax.tree.map(np.asarray, opt.params)
    fo_step(opt)
    assert opt._opt_called
    after = jax.tree.map(np.asarray, opt.params)
    assert not np.allclose(before[0][0], after[0][0])


# --- no recompilation -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind,name", [("sgd", "one_cycle"), ("adam", "one_cycle_three_phase")]
)
def test_scheduler_never_recompiles_the_step(kind, name):
    opt = fo_opt(kind)
    sched = CASES[name](L, opt)
    for _ in range(2):  # compile the step once
        fo_step(opt)
        sched.step()
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    traced = fo.optim.compile_count()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        seen = set()
        for _ in range(10):
            fo_step(opt)
            sched.step()
            seen.add(tuple(map(str, group_values(opt)[0].values())))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(seen) == 10  # the lr and momentum did change every step
    assert compiles == []
    assert fo.optim.compile_count() == traced

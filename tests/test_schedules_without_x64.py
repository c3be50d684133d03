"""The functional schedules with JAX's x64 off: their values as torch's doubles.

torch's schedulers compute the lr in Python double, and its optimizers use it in
double scalar arithmetic before one rounding. With x64 off, the schedules compute
their closed forms in float32 pairs (:mod:`functorch_optim.doubled`):
:meth:`~functorch_optim.schedules.Schedule.exact_value` gives the pair, calling the
schedule its float32 rounding. In a fresh process with x64 off (one, for every case
here, with one compile of all the schedules), each schedule runs over torch's own
scheduler's steps (``get_last_lr()``, or the optimizer's momentum), against the
exact value of its closed form (``decimal``, 60 digits, on torch's double inputs).

Each pair is within a few units of ``2**-48`` of the exact value; its float32
rounding is ``np.float32`` of torch's double, but where torch's double lies within
the two's errors of a midpoint between float32 numbers (torch's recursive
schedulers drift from the closed form by their roundings; none does here). A
functional Adam on a cosine schedule then steps as close to torch with x64 off as
with it on, to the params x64 on gives; that needs the runner to take a
schedule's ``exact_value``, as torch's optimizer takes its double (with
``__call__``'s float32 lr, ``lr / bias_correction1`` rounds the lr twice).
"""

from __future__ import annotations

import decimal
import json
import os
import pathlib
import subprocess
import sys
import warnings
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as T

import functorch_optim as fo
import functorch_optim.schedules as S
from functorch_optim import schedule_math

CONTEXT = decimal.Context(prec=60)
D = decimal.Decimal
PI = D("3.14159265358979323846264338327950288419716939937510582097494459")
UNIT = 2.0**-48
STEPS = 48
LR = 0.05

# --- exact closed forms (torch's formulas on its double inputs, in decimal) ---------


def cos_pi(q: Fraction) -> decimal.Decimal:
    """``cos(pi q)`` to 60 digits."""
    q = q - 2 * (q // 2)  # [0, 2)
    x = CONTEXT.multiply(PI, CONTEXT.divide(q.numerator, q.denominator))
    total, term, n = D(0), D(1), 0
    while abs(term) > D("1e-70"):
        total = CONTEXT.add(total, term)
        n += 2
        term = CONTEXT.divide(CONTEXT.multiply(-term, x * x), n * (n - 1))
    return total


def exact(x) -> Fraction:
    return Fraction(x)


def cosine(base, eta_min, t_cur, t_i) -> decimal.Decimal:
    base, eta_min = exact(base), exact(eta_min)
    factor = CONTEXT.add(1, cos_pi(Fraction(t_cur, 1) / exact(t_i)))
    return _d(eta_min) + _d(base - eta_min) * factor / 2


def _d(x: Fraction) -> decimal.Decimal:
    return CONTEXT.divide(x.numerator, x.denominator)


def warm_restarts(base, t_0, t_mult, eta_min):
    def value(t):
        t_cur, t_i = t, t_0
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= t_mult
        return cosine(base, eta_min, t_cur, t_i)

    return value


def cyclic(low, high, up, down, mode, gamma, momentum=False):
    total = float(up) + float(down)
    ratio = float(up) / total  # torch's double

    def value(t):
        cycle = 1 + t // int(total)
        x = Fraction(t % int(total), int(total))
        r = exact(ratio)
        factor = x / r if x <= r else (x - 1) / (r - 1)
        scale = {
            "triangular": Fraction(1),
            "triangular2": Fraction(1, 2 ** (cycle - 1)),
            "exp_range": exact(gamma) ** t,
        }[mode]
        height = (exact(high) - exact(low)) * factor * scale
        return _d(exact(high) - height if momentum else exact(low) + height)

    return value


def one_cycle(total, pct_start, strategy, three_phase, values, quantity):
    """``values``: OneCycleLR's group entries (Python doubles, as torch's)."""
    phases = schedule_math.one_cycle_phases(total, pct_start, three_phase, strategy)

    def value(t):
        start_step = 0.0
        for i, phase in enumerate(phases):
            if t <= phase["end_step"] or i == len(phases) - 1:
                pct = (t - exact(start_step)) / (
                    exact(phase["end_step"]) - exact(start_step)
                )
                start = exact(values[phase[f"start_{quantity}"]])
                end = exact(values[phase[f"end_{quantity}"]])
                if strategy == "cos":
                    factor = CONTEXT.add(1, cos_pi(pct))
                    return _d(end) + _d(start - end) / 2 * factor
                return _d((end - start) * pct + start)
            start_step = phase["end_step"]
        raise AssertionError

    return value


def one_cycle_values(max_lr, div_factor=25.0, final_div_factor=1e4):
    initial = max_lr / div_factor
    return {
        "initial_lr": initial,
        "max_lr": max_lr,
        "min_lr": initial / final_div_factor,
        "base_momentum": 0.85,
        "max_momentum": 0.95,
    }


def linear(base, start, end, total):
    def value(t):
        ratio = Fraction(min(total, t), total)
        return _d(exact(base) * (exact(start) + (exact(end) - exact(start)) * ratio))

    return value


def polynomial(base, total, power):
    def value(t):
        x = Fraction(total - min(total, t), total)
        if float(power).is_integer():
            return _d(exact(base) * x ** int(power))
        return _d(exact(base)) * CONTEXT.power(_d(x), D(power))

    return value


# name: (our schedule, torch's scheduler on an SGD with momentum, quantity read,
# the exact value at a count, torch scheduler steps per optimizer step)
ONE = one_cycle_values(0.5)
LINEAR_ONE = one_cycle_values(0.3, 10.0, 100.0)
CASES = {
    "step": (
        lambda: S.step_lr(LR, 7, 0.5),
        lambda opt: T.StepLR(opt, 7, 0.5),
        lambda t: _d(exact(LR) * exact(0.5) ** (t // 7)),
    ),
    "multi_step": (
        lambda: S.multi_step_lr(LR, [3, 10, 10, 25], 0.3),
        lambda opt: T.MultiStepLR(opt, [3, 10, 10, 25], 0.3),
        lambda t: _d(exact(LR) * exact(0.3) ** sum(t >= m for m in [3, 10, 10, 25])),
    ),
    "constant": (
        lambda: S.constant_lr(LR, 0.25, 10),
        lambda opt: T.ConstantLR(opt, 0.25, 10),
        lambda t: _d(exact(LR) * (exact(0.25) + (t >= 10) * (1 - exact(0.25)))),
    ),
    "constant_default": (
        lambda: S.constant_lr(LR),
        lambda opt: T.ConstantLR(opt),
        lambda t: _d(exact(LR) * (exact(1 / 3) + (t >= 5) * (1 - exact(1 / 3)))),
    ),
    "linear": (
        lambda: S.linear_lr(LR, 0.1, 0.9, 20),
        lambda opt: T.LinearLR(opt, 0.1, 0.9, 20),
        linear(LR, 0.1, 0.9, 20),
    ),
    "linear_default": (
        lambda: S.linear_lr(LR),
        lambda opt: T.LinearLR(opt),
        linear(LR, 1 / 3, 1.0, 5),
    ),
    "exponential": (
        lambda: S.exponential_lr(LR, 0.98),
        lambda opt: T.ExponentialLR(opt, 0.98),
        lambda t: _d(exact(LR) * exact(0.98) ** t),
    ),
    "polynomial": (
        lambda: S.polynomial_lr(LR, 30, 2.0),
        lambda opt: T.PolynomialLR(opt, 30, 2.0),
        polynomial(LR, 30, 2.0),
    ),
    "polynomial_root": (
        lambda: S.polynomial_lr(LR, 40, 0.5),
        lambda opt: T.PolynomialLR(opt, 40, 0.5),
        polynomial(LR, 40, 0.5),
    ),
    "cosine": (
        lambda: S.cosine_annealing_lr(LR, 16, 0.001),
        lambda opt: T.CosineAnnealingLR(opt, 16, 0.001),
        lambda t: cosine(LR, 0.001, t, 16),
    ),
    "warm_restarts": (
        lambda: S.cosine_annealing_warm_restarts(LR, 7),
        lambda opt: T.CosineAnnealingWarmRestarts(opt, 7),
        warm_restarts(LR, 7, 1, 0.0),
    ),
    "warm_restarts_mult": (
        lambda: S.cosine_annealing_warm_restarts(LR, 3, 2, 0.001),
        lambda opt: T.CosineAnnealingWarmRestarts(opt, 3, 2, 0.001),
        warm_restarts(LR, 3, 2, 0.001),
    ),
    "cyclic": (
        lambda: S.cyclic_lr(0.01, 0.1, 5, 3),
        lambda opt: T.CyclicLR(opt, 0.01, 0.1, 5, 3),
        cyclic(0.01, 0.1, 5, 3, "triangular", 1.0),
    ),
    "cyclic_triangular2": (
        lambda: S.cyclic_lr(0.01, 0.1, 4, mode="triangular2"),
        lambda opt: T.CyclicLR(opt, 0.01, 0.1, 4, mode="triangular2"),
        cyclic(0.01, 0.1, 4, 4, "triangular2", 1.0),
    ),
    "cyclic_exp_range": (
        lambda: S.cyclic_lr(0.01, 0.1, 6, mode="exp_range", gamma=0.97),
        lambda opt: T.CyclicLR(opt, 0.01, 0.1, 6, mode="exp_range", gamma=0.97),
        cyclic(0.01, 0.1, 6, 6, "exp_range", 0.97),
    ),
    "cyclic_momentum": (
        lambda: S.cyclic_momentum(0.8, 0.9, 5, 3),
        lambda opt: T.CyclicLR(opt, 0.01, 0.1, 5, 3, base_momentum=0.8),
        cyclic(0.8, 0.9, 5, 3, "triangular", 1.0, momentum=True),
        "momentum",
    ),
    "one_cycle": (
        lambda: S.one_cycle_lr(0.5, total_steps=STEPS),
        lambda opt: T.OneCycleLR(opt, 0.5, total_steps=STEPS),
        one_cycle(STEPS, 0.3, "cos", False, ONE, "lr"),
    ),
    "one_cycle_three_phase": (
        lambda: S.one_cycle_lr(0.5, total_steps=STEPS, three_phase=True),
        lambda opt: T.OneCycleLR(opt, 0.5, total_steps=STEPS, three_phase=True),
        one_cycle(STEPS, 0.3, "cos", True, ONE, "lr"),
    ),
    "one_cycle_linear": (
        lambda: S.one_cycle_lr(
            0.3,
            total_steps=STEPS,
            anneal_strategy="linear",
            div_factor=10.0,
            final_div_factor=100.0,
        ),
        lambda opt: T.OneCycleLR(
            opt,
            0.3,
            total_steps=STEPS,
            anneal_strategy="linear",
            div_factor=10.0,
            final_div_factor=100.0,
        ),
        one_cycle(STEPS, 0.3, "linear", False, LINEAR_ONE, "lr"),
    ),
    "one_cycle_momentum": (
        lambda: S.one_cycle_momentum(total_steps=STEPS, three_phase=True),
        lambda opt: T.OneCycleLR(opt, 0.5, total_steps=STEPS, three_phase=True),
        one_cycle(STEPS, 0.3, "cos", True, ONE, "momentum"),
        "momentum",
    ),
    "sequential": (
        lambda: S.sequential_lr(
            [S.linear_lr(LR, 0.1, total_iters=8), S.cosine_annealing_lr(LR, 20)],
            [8],
        ),
        lambda opt: T.SequentialLR(
            opt,
            [T.LinearLR(opt, 0.1, total_iters=8), T.CosineAnnealingLR(opt, 20)],
            [8],
        ),
        lambda t: linear(LR, 0.1, 1.0, 8)(t) if t < 8 else cosine(LR, 0.0, t - 8, 20),
    ),
    "chained": (
        lambda: S.chained_lr(
            LR, [S.constant_lr(1.0, 0.1, 20), S.exponential_lr(1.0, 0.99)]
        ),
        lambda opt: T.ChainedScheduler(
            [T.ConstantLR(opt, 0.1, 20), T.ExponentialLR(opt, 0.99)]
        ),
        lambda t: _d(exact(LR) * (exact(0.1) if t < 20 else 1) * exact(0.99) ** t),
    ),
    "per_epoch": (
        lambda: S.per_epoch(S.step_lr(LR, 3, 0.5), 4),
        lambda opt: T.StepLR(opt, 3, 0.5),
        lambda t: _d(exact(LR) * exact(0.5) ** (t // 4 // 3)),
        "lr",
        4,
    ),
}


def torch_values(name: str) -> list[float]:
    """torch's scheduler's value for each optimizer step count ``0 .. STEPS - 1``
    (the value step ``c + 1`` uses), a Python double."""
    _, build, _, *rest = CASES[name]
    quantity = rest[0] if rest else "lr"
    every = rest[1] if len(rest) > 1 else 1
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR, momentum=0.9)
    scheduler = build(opt)
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the optimizer does not step
        for count in range(STEPS):
            values.append(float(opt.param_groups[0][quantity]))
            if (count + 1) % every == 0:
                scheduler.step()
    return values


def _units(a, b) -> float:
    """``|a - b| / |b|`` in units of ``2**-48`` (decimals)."""
    if b == 0:
        return 0.0 if a == 0 else float("inf")
    return float(abs(CONTEXT.subtract(a, b)) / abs(b)) / UNIT


def _midpoint_distance(x: float) -> float:
    """How far the double ``x`` is from the nearest midpoint between float32
    numbers, relative to ``x``, in units of ``2**-48``."""
    f = np.float32(x)
    neighbour = np.nextafter(f, np.float32(np.inf if x > f else -np.inf))
    midpoint = (D(float(f)) + D(float(neighbour))) / 2
    return _units(D(x), midpoint) if x else float("inf")


def measure_schedules() -> dict:
    """Per case: the pairs' worst error against the exact value and torch's, in
    units of ``2**-48``; torch's own (its recursions' roundings); the counts where
    the schedule's float32 differs from ``np.float32`` of torch's double, with
    how near torch's double is to a float32 midpoint there; and whether calling
    the schedule gives the pair's float32 (under one jit and vmap, an int32
    count, as optax calls it)."""
    schedules = {name: case[0]() for name, case in CASES.items()}

    @jax.jit
    @jax.vmap
    def evaluate(count):
        out = {}
        for name, schedule in schedules.items():
            pair = schedule.exact_value(count)
            out[name] = (pair.hi, pair.lo, schedule(count))
        return out

    counts = jnp.arange(STEPS, dtype=jnp.int32)
    values = jax.tree.map(np.asarray, evaluate(counts))
    with decimal.localcontext(CONTEXT):
        return {name: _compare(name, *values[name]) for name in CASES}


def _compare(name: str, hi, lo, called) -> dict:
    closed_form = CASES[name][2]
    torch_lrs = torch_values(name)
    pair_error = torch_distance = torch_error = 0.0
    mismatches = []
    for t in range(STEPS):
        value = CONTEXT.add(D(float(hi[t])), D(float(lo[t])))
        expected = closed_form(t)
        theirs = D(torch_lrs[t])
        pair_error = max(pair_error, _units(value, expected))
        torch_distance = max(torch_distance, _units(value, theirs))
        torch_error = max(torch_error, _units(theirs, expected))
        if called[t] != np.float32(torch_lrs[t]):
            mismatches.append((t, _midpoint_distance(torch_lrs[t])))
    return {
        "pair_error": pair_error,
        "torch_distance": torch_distance,
        "torch_error": torch_error,
        "mismatches": mismatches,
        "called_is_pair": bool(np.array_equal(called, hi)),
        "dtype": str(called.dtype),
    }


# --- end to end: a functional Adam on a cosine schedule -----------------------------

ADAM_STEPS = 24


def ulps(a, b) -> int:
    """The largest distance between float32 arrays, in float32 ulps."""

    def ordered(x):
        i = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return int(np.max(np.abs(ordered(a) - ordered(b))))


def measure_adam() -> tuple[int, list[float]]:
    """``fo.adam(lr=fo.cosine_annealing_lr(...))`` against torch's Adam with
    CosineAnnealingLR over ``ADAM_STEPS`` steps on the same gradients (past
    ``T_max``, where the lr rises again): the largest distance of the float32
    params, in ulps, and our last params. The params (0.5 to 1) are near the
    steps' size (0.1), so that the step size's rounding shows."""
    rng = np.random.default_rng(0)
    p0 = rng.uniform(0.5, 1, 1000).astype(np.float32)
    grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(ADAM_STEPS)]
    tensor = torch.tensor(p0, requires_grad=True)
    torch_opt = torch.optim.Adam([tensor], lr=0.1)
    scheduler = T.CosineAnnealingLR(torch_opt, T_max=10, eta_min=0.003)
    tx = fo.adam(lr=fo.cosine_annealing_lr(0.1, T_max=10, eta_min=0.003))
    update = jax.jit(tx.update)
    params = [jnp.asarray(p0)]
    state = tx.init(params)
    distance = 0
    for g in grads:
        tensor.grad = torch.tensor(g)
        torch_opt.step()
        scheduler.step()
        updates, state = update([jnp.asarray(g)], state, params)
        params = fo.apply_updates(params, updates)
        distance = max(distance, ulps(params[0], tensor.detach().numpy()))
    return distance, np.asarray(params[0]).tolist()


def measure_optax() -> float:
    """One optax Adam update on a schedule (an int32 count, x64 off): its lr."""
    import optax

    schedule = S.cosine_annealing_lr(0.1, T_max=10)
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
    params = jnp.ones(3)
    state = tx.init(params)
    _, state = jax.jit(tx.update)(jnp.ones(3), state, params)
    _, state = jax.jit(tx.update)(jnp.ones(3), state, params)
    return float(state.hyperparams["learning_rate"])


def measure() -> dict:
    return {
        "schedules": measure_schedules(),
        "adam": measure_adam(),
        "optax": measure_optax(),
    }


# --- the comparisons ------------------------------------------------------------------


@pytest.fixture(scope="module")
def without_x64() -> dict:
    """:func:`measure` in a fresh process with x64 off (tests/conftest.py turns it
    on here)."""
    tests = pathlib.Path(__file__).resolve().parent
    script = (
        f"import json, sys; sys.path.insert(0, {str(tests)!r})\n"
        "import jax; assert not jax.config.jax_enable_x64\n"
        "import test_schedules_without_x64 as t; print(json.dumps(t.measure()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


# a few units of 2**-48: the closed forms' pair operations (a product or sum is
# within ~2 units, 1 + cos within ~9, relative to its result); over a million
# counts the schedules measure up to 10
PAIR_BOUND = 16.0


@pytest.mark.parametrize("name", CASES)
def test_schedule_pairs_round_as_torchs_doubles(without_x64, name):
    """Measured (torch 2.13, this CPU), in units of 2**-48 from the exact closed
    form, over 48 counts: at most 7.9 (one-cycle's cos anneal 7.9, cosine
    annealing and its warm restarts 3.8, the linear anneal 3.5, polynomial 3.1,
    the others 0.1-2.2); torch's doubles are up to 1.6 units from it, and 21 in
    one-cycle's linear anneal (``(end - start) * pct + start`` cancels to ``end``;
    the pairs anneal from the nearer end). No float32 rounding differs from
    torch's; before the pairs, 3 to 48 of the 48 did in all but step_lr,
    constant_lr and per_epoch, up to 1e-5 relative."""
    result = without_x64["schedules"][name]
    assert result["dtype"] == "float32"
    assert result["called_is_pair"], "calling the schedule is not the pair's float32"
    assert result["pair_error"] <= PAIR_BOUND, result
    # a rounding may differ only where torch's double is within the two's errors
    # of a float32 midpoint
    unexplained = [
        (t, distance)
        for t, distance in result["mismatches"]
        if distance > PAIR_BOUND + result["torch_error"]
    ]
    assert not unexplained, result


def test_adam_on_a_cosine_schedule_is_as_close_to_torch_without_x64(without_x64):
    """Needs the runner to evaluate a schedule by its ``exact_value`` (a pair, as
    the facade's traced Python floats are). Measured (24 steps, this CPU), in
    ulps from torch: x64 on 320 (params crossing 0), x64 off 320, its params
    equal to x64 on's; with the schedule's float32 lr (``__call__``, no runner
    hook) also 320 but 138 params up to 24 ulps from x64 on's, and with the
    float32 schedule before the pairs 1088, 327 params up to 86 ulps apart."""
    with_x64, params = measure_adam()
    distance, params_without_x64 = without_x64["adam"]
    assert distance <= max(with_x64, 1), (distance, with_x64)
    apart = ulps(np.float32(params_without_x64), np.float32(params))
    assert apart <= 1, f"x64 off {apart} ulps from x64 on's params"


def test_optax_takes_the_float32_of_the_pair(without_x64):
    """optax evaluates a schedule with an int32 count: the value at count 1."""
    expected = 0.05 * (1 + np.cos(np.pi / 10))
    assert without_x64["optax"] == float(np.float32(expected))


def test_user_functions_stay_float32_and_x64_on_is_float64():
    """lambda_lr's value is the float32 its function computes with x64 off (its
    exact_value that float32 exactly); with x64 on, exact_value is the call's
    float64."""
    schedule = S.lambda_lr(0.1, lambda t: 0.95**t)
    cosine_schedule = S.cosine_annealing_lr(0.1, T_max=10)
    with jax.enable_x64(False):
        value = schedule.exact_value(jnp.int32(7))
        called = schedule(jnp.int32(7))
        assert isinstance(value, fo.doubled.Float)
        assert float(value.hi) == float(called) and float(value.lo) == 0.0
    for count in (0, 3, 17):
        value = cosine_schedule.exact_value(count)
        assert value.dtype == jnp.float64
        assert float(value) == float(cosine_schedule(count))

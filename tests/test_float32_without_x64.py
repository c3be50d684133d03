"""float32 parity with JAX's x64 off, as most users run, equals parity with it on.

torch computes the per-step scalars (bias corrections, step sizes, ASGD's eta and
mu, NAdam's momentum products, ``1 - beta``) in Python double; without x64 the rules
compute them in float32 pairs (:mod:`functorch_optim.doubled`), from Python floats
in the functional transforms and from the facade's traced pairs
(:class:`~functorch_optim.doubled.Float`). The comparison runs the same float32
cases against torch in a fresh process with x64 off and here, with x64 on
(tests/conftest.py), and requires the first to be as close as the second.
"""

from __future__ import annotations

import copy
import decimal
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import functorch_optim as fo
from functorch_optim import doubled
from functorch_optim.kernels import step_powers

# Every algorithm whose step has scalars torch computes in double, with options
# that reach them (weight decay, amsgrad, lr decay, averaging from step 5).
CASES = {
    "adam": ("Adam", dict(lr=0.1, weight_decay=0.1, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=0.1)),
    "nadam": ("NAdam", dict(lr=0.1, weight_decay=0.1)),
    "radam": ("RAdam", dict(lr=0.1)),
    "rmsprop": ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True)),
    "adamax": ("Adamax", dict(lr=0.1)),
    "asgd": ("ASGD", dict(lr=0.1, t0=5.0, lambd=1e-3)),
    "adagrad": ("Adagrad", dict(lr=0.1, lr_decay=0.01)),
    "adadelta": ("Adadelta", dict(lr=1.0, rho=0.95)),
    "sgd": ("SGD", dict(lr=0.01, momentum=0.9, dampening=0.1)),
}
SIZE = 1000
STEPS = 20
# The counts of the single steps from torch's state: small (bias corrections far
# from 1), RAdam's switch to rectifying (step 6), large.
COUNTS = (1, 2, 3, 6, 7, 10, 100, 1000, 12345)


def ulps(a, b) -> int:
    """The largest distance between float32 arrays, in float32 ulps."""

    def ordered(x):
        i = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return int(np.max(np.abs(ordered(a) - ordered(b))))


def measure() -> dict:
    """Per algorithm, the largest distance to torch, in ulps, of float32 params
    (away from 0, so an ulp is relative): after one step from torch's state at each
    of ``COUNTS`` (the same params, state and grads), and over ``STEPS`` steps."""
    results = {}
    for name, (torch_name, options) in CASES.items():
        rng = np.random.default_rng(0)
        p0 = rng.uniform(4, 8, SIZE).astype(np.float32)
        grads = [rng.standard_normal(SIZE).astype(np.float32) for _ in range(STEPS)]
        tensor = torch.tensor(p0, requires_grad=True)
        torch_opt = getattr(torch.optim, torch_name)([tensor], **options)
        tx = getattr(fo, name)(**options)
        # one compiled step for both measurements: params a list, as
        # load_torch_state gives the state
        update = jax.jit(tx.update)
        params = [jnp.asarray(p0)]
        state = tx.init(params)
        trajectory = 0
        for g in grads:
            tensor.grad = torch.tensor(g)
            torch_opt.step()
            updates, state = update([jnp.asarray(g)], state, params)
            params = fo.apply_updates(params, updates)
            trajectory = max(trajectory, ulps(params[0], tensor.detach().numpy()))
        one_step = 0
        for count in COUNTS:
            state_dict = copy.deepcopy(torch_opt.state_dict())
            if "step" in state_dict["state"][0]:
                state_dict["state"][0]["step"] = torch.tensor(float(count - 1))
            start = tensor.detach().numpy().copy()
            t = torch.tensor(start, requires_grad=True)
            opt = getattr(torch.optim, torch_name)([t], **options)
            opt.load_state_dict(state_dict)
            ours = fo.interop.load_torch_state(tx, opt.state_dict(), [start])
            g = grads[count % STEPS]
            t.grad = torch.tensor(g)
            opt.step()
            updates, _ = update([jnp.asarray(g)], ours, [jnp.asarray(start)])
            new = fo.apply_updates(jnp.asarray(start), updates[0])
            one_step = max(one_step, ulps(new, t.detach().numpy()))
        results[name] = {
            "one_step": one_step,
            "trajectory": trajectory,
            **_measure_facade(torch_name, options, p0, grads),
        }
    return results


def _measure_facade(torch_name: str, options: dict, p0, grads) -> dict:
    """The facade's largest distance to torch over the steps, in ulps, and how
    many programs it compiled for a step after an lr change (none: the
    hyperparameters are traced, as pairs with x64 off)."""
    tensor = torch.tensor(p0, requires_grad=True)
    torch_opt = getattr(torch.optim, torch_name)([tensor], **options)
    opt = getattr(fo.optim, torch_name)([jnp.asarray(p0)], **options)
    facade = 0
    for g in grads:
        tensor.grad = torch.tensor(g)
        torch_opt.step()
        opt.step([jnp.asarray(g)])
        facade = max(facade, ulps(opt.params[0], tensor.detach().numpy()))
    compiles = fo.optim.compile_count()
    opt.param_groups[0]["lr"] = options["lr"] / 2
    opt.step([jnp.asarray(grads[0])])
    jax.block_until_ready(opt.params)
    return {"facade": facade, "recompiled": fo.optim.compile_count() - compiles}


def _measure_without_x64() -> subprocess.Popen:
    tests = pathlib.Path(__file__).resolve().parent
    script = (
        f"import json, sys; sys.path.insert(0, {str(tests)!r})\n"
        "import jax; assert not jax.config.jax_enable_x64\n"
        "import test_float32_without_x64 as t; print(json.dumps(t.measure()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_float32_is_as_close_to_torch_without_x64_as_with_it():
    """Measured (torch 2.13, this CPU), in ulps, one step / 20 steps, x64 off and
    on alike: Adam 1/2, AdamW 1/8, NAdam 2/2, RAdam 1/2, RMSprop 74/69 (torch's
    centered root rounds apart; no per-step scalar), Adamax 0/0, ASGD 1/11,
    Adagrad 1/1, Adadelta 1/1, SGD 1/2. Before the pairs, x64 off: Adam 7/57,
    NAdam 13/47, RAdam 42/429, Adamax 1/3.

    The facade (``fo.optim``, 20 steps), x64 off and on alike: Adam 2, AdamW 8,
    NAdam 2, RAdam 2, RMSprop 70, Adamax 0, ASGD 11, Adagrad 1, Adadelta 1, SGD 2;
    before its traced pairs, x64 off: Adam 9, NAdam 8, RAdam 25, RMSprop 523
    (``1 - alpha`` from float32's alpha), Adamax 2. An lr change compiles
    nothing either way."""
    process = _measure_without_x64()  # runs beside this process's measurement
    assert jax.config.jax_enable_x64
    with_x64 = measure()
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    without_x64 = json.loads(stdout.strip().splitlines()[-1])
    worse = {
        name: (without_x64[name], with_x64[name])
        for name in CASES
        if any(
            without_x64[name][k] > max(with_x64[name][k], 1)
            for k in ("one_step", "trajectory", "facade")
        )
    }
    assert not worse, f"x64 off further from torch than x64 on: {worse}"
    recompiled = {
        name: (without_x64[name]["recompiled"], with_x64[name]["recompiled"])
        for name in CASES
        if without_x64[name]["recompiled"] or with_x64[name]["recompiled"]
    }
    assert not recompiled, f"an lr change recompiled the facade's step: {recompiled}"


# --- the pair arithmetic against exact decimal arithmetic -------------------------

_EXACT = decimal.Context(prec=60, Emin=-999999, Emax=999999)


def _value(x: doubled.Doubled) -> decimal.Decimal:
    return _EXACT.add(decimal.Decimal(float(x.hi)), decimal.Decimal(float(x.lo)))


def _relative_error(x: doubled.Doubled, exact: decimal.Decimal, scale=None) -> float:
    """``|x - exact| / scale``, by default relative to ``exact``."""
    error = abs(_EXACT.subtract(_value(x), exact))
    return float(_EXACT.divide(error, abs(exact) if scale is None else scale))


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.95, 0.9999])
def test_power_of_a_python_float_is_double_accurate(beta):
    counts = [1, 2, 3, 7, 10, 100, 1000, 12345, 2**17 - 1, 10**5, 10**6, 2**20 - 1]
    power = jax.jit(lambda n: doubled.powers([(beta, n)])[0])
    for count in counts:
        exact = _EXACT.power(decimal.Decimal(beta), count)
        if exact < decimal.Decimal("1e-30"):  # lo below float32's normal range
            continue
        # the set bits' factors, each within 2**-48: a few 1e-15, not 1e-8
        assert _relative_error(power(count), exact) < 3e-14, count


def test_step_powers_pair_python_bases_only():
    """With x64 off, a Python base's power is a pair, and NAdam's ``0.96 ** (t
    psi)`` a power of the exact ``0.96 ** psi``; a traced JAX scalar base (which
    torch would hold as a float32 tensor) gives float32's power, as before the
    pairs (a facade's beta is a traced pair: the next test)."""
    step = jnp.int32(1000)
    with jax.enable_x64(False):
        paired, traced = jax.jit(lambda n, beta: step_powers((0.999, n), (beta, n)))(
            step, np.float32(0.999)
        )
        decay = doubled.constant_power(0.96, 0.004)
        (decay_power,) = jax.jit(lambda n: step_powers((decay, n)))(step)
    assert isinstance(paired, doubled.Doubled)
    exact = _EXACT.power(decimal.Decimal(0.999), 1000)
    assert _relative_error(paired, exact) < 3e-14
    assert traced.dtype == np.float32
    np.testing.assert_allclose(traced, np.float32(0.999) ** 1000, rtol=1e-5)
    exponent = _EXACT.multiply(1000, decimal.Decimal(0.004))
    exact = _EXACT.power(decimal.Decimal(0.96), exponent)
    assert _relative_error(decay_power, exact) < 3e-14


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.95, 0.9999])
def test_power_of_a_traced_python_float_is_double_accurate(beta):
    """The facade's hyperparameters with x64 off are traced pairs, split on the
    host with their logarithm (doubled.Float.split): ``beta ** step`` is then a
    pair to about ``2**-48`` of ``step log(beta)``, whatever the step."""
    counts = [1, 2, 3, 7, 10, 100, 1000, 12345, 2**17 - 1, 10**5, 10**6, 2**20 - 1]
    with jax.enable_x64(False):
        power = jax.jit(lambda b, n: step_powers((b, n))[0])
        results = [power(doubled.Float.split(beta), np.int32(n)) for n in counts]
    for count, result in zip(counts, results, strict=True):
        exact = _EXACT.power(decimal.Decimal(beta), count)
        if exact < decimal.Decimal("1e-30"):  # lo below float32's normal range
            continue
        scale = abs(_EXACT.multiply(count, decimal.Decimal(beta).ln(_EXACT)))
        assert _relative_error(result, exact) < 3e-14 * max(1, float(scale)), count


def test_a_traced_python_float_computes_as_the_python_float():
    """doubled.Float: with Python numbers, exact (``1 - 0.99`` rounds once, as
    torch's double does); with an array, the float32 nearest it, in the array's
    dtype (a bfloat16 array stays bfloat16, as with a Python float)."""
    with jax.enable_x64(False):
        compiled = jax.jit(lambda x, a: (1 - x, x * a, a * (1 - x), x / 3 > 0.33))
        one_minus, scaled, scaled_difference, compared = compiled(
            doubled.Float.split(0.99), jnp.ones(3, jnp.bfloat16)
        )
    assert isinstance(one_minus, doubled.Float)
    assert float(doubled.rounded(one_minus)) == float(np.float32(1 - 0.99))
    assert float(doubled.rounded(one_minus)) != float(1 - np.float32(0.99))
    assert scaled.dtype == scaled_difference.dtype == jnp.bfloat16
    assert bool(compared)


# Python constants meet traced values: XLA must not fold the error terms away.
OPERATIONS = {
    "add": (lambda x: 0.1 + x, lambda v: _EXACT.add(decimal.Decimal(0.1), v)),
    "subtract": (lambda x: 1 - x, lambda v: _EXACT.subtract(1, v)),
    "multiply": (lambda x: 0.9 * x, lambda v: _EXACT.multiply(decimal.Decimal(0.9), v)),
    "divide": (lambda x: 0.1 / x, lambda v: _EXACT.divide(decimal.Decimal(0.1), v)),
    "sqrt": (lambda x: x**0.5, lambda v: v.sqrt(_EXACT)),
    "power": (lambda x: x**0.7, lambda v: _EXACT.power(v, decimal.Decimal(0.7))),
    "root power": (
        lambda x: x**0.75,
        lambda v: _EXACT.power(v, decimal.Decimal(0.75)),
    ),
    "exp": (doubled.exp, lambda v: v.exp(_EXACT)),
    "log": (doubled.log, lambda v: v.ln(_EXACT)),
    "base power": (
        lambda x: 0.96 ** (x * 0.004),
        lambda v: _EXACT.power(
            decimal.Decimal(0.96), _EXACT.multiply(v, decimal.Decimal(0.004))
        ),
    ),
}


@pytest.mark.parametrize("name", OPERATIONS)
def test_operations_are_double_accurate_under_jit(name):
    operation, exact = OPERATIONS[name]
    compiled = jax.jit(lambda hi, lo: operation(doubled.Doubled(hi, lo)))
    for x in (1e-3, 0.3, 1.0, 1.7, 3.0, 50.0, 1234.5):
        # a value with all its bits: x and a low part
        hi = np.float32(x)
        lo = np.float32(float(hi) * 2.0**-30)
        result = compiled(hi, lo)
        expected = exact(_value(doubled.Doubled(hi, lo)))
        if not decimal.Decimal("1e-30") < abs(expected) < decimal.Decimal("1e38"):
            continue
        # log is accurate to 2**-48 absolute: near 1, not relative (pow's
        # exp(a log x) needs no more)
        scale = max(abs(expected), 1) if name == "log" else None
        assert _relative_error(result, expected, scale) < 3e-14, (x, result)


def test_rounding_to_float32_and_comparisons():
    x = doubled.of(0.1)
    assert float(doubled.rounded(x)) == float(np.float32(0.1))
    assert doubled.rounded(jnp.float32(2.0)) == 2.0  # not a pair: as it is
    exact_count = doubled.of(jnp.int32(2**31 - 1))  # integers are split exactly
    assert _value(exact_count) == 2**31 - 1
    assert bool(doubled.of(1.0) > doubled.Doubled(jnp.float32(1), jnp.float32(-1e-9)))
    assert float(doubled.rounded(doubled.maximum(1, doubled.of(0.5) - 1))) == 1.0

"""L-BFGS against torch.optim.LBFGS: iterates, losses, counts and state, step by step.

Each problem is written once over a namespace (``jnp`` or ``torch``), so the JAX and
torch objectives are the same formula.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import functorch_optim as fo
from functorch_optim.lbfgs import (
    compile_count,
    flatten,
    from_torch_layout,
    lbfgs_options,
    to_torch_layout,
    traced_values,
)

STEPS = 4
RTOL, ATOL = 1e-8, 1e-10  # float64, after STEPS step() calls of up to 50 iterations
# State entries near convergence (gradient differences, their dot products) carry the
# cancellation of nearly equal gradients, so a looser relative bound.
STATE_RTOL, STATE_ATOL = 1e-5, 1e-10


def _rosenbrock(p, lib):
    x = p["x"].reshape(-1)
    return lib.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((20, 5))
_Y = np.sign(_RNG.standard_normal(20))
_Q, _ = np.linalg.qr(_RNG.standard_normal((6, 6)))
_A = _Q @ np.diag(np.logspace(0, 3, 6)) @ _Q.T
_B = _RNG.standard_normal(6)


def _data(lib, x):
    return jnp.asarray(x) if lib is jnp else torch.tensor(x)


def _logistic(p, lib):
    margins = _data(lib, _Y) * (_data(lib, _X) @ p["w"] + p["b"])
    return lib.mean(lib.log1p(lib.exp(-margins))) + 5e-3 * lib.sum(p["w"] ** 2)


def _quadratic(p, lib):
    # ill-conditioned (condition number 1e3); the size-0 leaf has a zero gradient
    x = p["m"].reshape(-1)
    return 0.5 * x @ (_data(lib, _A) @ x) - _data(lib, _B) @ x + lib.sum(p["empty"])


PROBLEMS = {
    "rosenbrock": (_rosenbrock, {"x": np.array([[[-1.2], [1.0]], [[-0.5], [0.8]]])}),
    "logistic": (_logistic, {"w": _RNG.standard_normal(5) * 0.1, "b": np.array(0.3)}),
    "quadratic": (
        _quadratic,
        {"m": _RNG.standard_normal((2, 3)), "empty": np.zeros((0,))},
    ),
}

OPTIONS = {
    "fixed": dict(lr=0.2),
    "fixed_history3": dict(lr=0.5, history_size=3, max_iter=8),
    "wolfe": dict(line_search_fn="strong_wolfe"),
    "wolfe_history3": dict(line_search_fn="strong_wolfe", history_size=3, max_iter=9),
    "wolfe_lr": dict(line_search_fn="strong_wolfe", lr=0.3, max_iter=6),
    "wolfe_max_eval": dict(line_search_fn="strong_wolfe", max_iter=10, max_eval=7),
    "wolfe_one_iter": dict(line_search_fn="strong_wolfe", max_iter=1),
    # loose tolerances: the early exits (gradient, step, loss change) end steps
    "loose_tolerances": dict(
        line_search_fn="strong_wolfe", tolerance_grad=1e-3, tolerance_change=1e-5
    ),
    "loose_fixed": dict(lr=0.5, tolerance_grad=1e-3, tolerance_change=1e-4),
    # tight ones: every iteration runs (few, to stay above rounding noise)
    "tight": dict(tolerance_grad=1e-14, tolerance_change=1e-15, lr=0.1, max_iter=12),
}


def torch_twin(problem, options, dtype=torch.float64):
    """torch's LBFGS on ``problem``: the optimizer, its closure, its tensors."""
    loss_fn, init = PROBLEMS[problem]
    tensors = {
        k: torch.tensor(v, dtype=dtype, requires_grad=True)
        for k, v in sorted(init.items())
    }
    opt = torch.optim.LBFGS(list(tensors.values()), **options)

    def closure():
        opt.zero_grad()
        loss = loss_fn(tensors, torch)
        loss.backward()
        return loss

    return opt, closure, tensors


def torch_run(problem, options, steps=STEPS):
    """Per step() of torch: (params, returned loss, copy of the state)."""
    opt, closure, tensors = torch_twin(problem, options)
    out = []
    for _ in range(steps):
        loss = float(opt.step(closure))
        state = dict(opt.state[next(iter(tensors.values()))])
        out.append(
            ({k: t.detach().numpy().copy() for k, t in tensors.items()}, loss, state)
        )
    return out, opt


def make_step(problem, options, jit=True):
    loss_fn = PROBLEMS[problem][0]
    tx = fo.lbfgs(**options)

    def step(params, state):
        updates, state = tx.update(
            None, state, params, value_fn=lambda p: loss_fn(p, jnp)
        )
        return fo.apply_updates(params, updates), state

    return tx, jax.jit(step) if jit else step


# Options that only set values (not shapes or code paths) travel as traced scalars,
# so the option grid compiles once per problem, line search and history size.
DEFAULTS = {k: p.default for k, p in inspect.signature(fo.lbfgs).parameters.items()}


@functools.cache
def traced_step(problem, line_search_fn, history_size):
    loss_fn = PROBLEMS[problem][0]

    @jax.jit
    def step(params, state, values):
        tx = fo.lbfgs(
            line_search_fn=line_search_fn, history_size=history_size, **values
        )
        updates, state = tx.update(
            None, state, params, value_fn=lambda p: loss_fn(p, jnp)
        )
        return fo.apply_updates(params, updates), state

    return step


def jax_run(problem, options, steps=STEPS, dtype=jnp.float64, jit=True):
    params = {k: jnp.asarray(v, dtype) for k, v in PROBLEMS[problem][1].items()}
    if jit:
        # torch's defaults, every value traced
        given = lbfgs_options(**{**DEFAULTS, **options})
        values = traced_values(given)
        compiled = traced_step(problem, given.line_search_fn, given.history_size)
        step = lambda p, s: compiled(p, s, values)
        state = fo.lbfgs(history_size=given.history_size).init(params)
    else:
        tx, step = make_step(problem, options, jit=False)
        state = tx.init(params)
    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append((jax.tree.map(np.asarray, params), float(state["orig_loss"]), state))
    return out


def assert_state_close(ours: dict, theirs: dict):
    ours = to_torch_layout(ours)
    assert ours.keys() == {k for k in theirs if theirs[k] is not None or k == "al"}
    for key, value in theirs.items():
        if key in ("func_evals", "n_iter"):
            assert ours[key] == value, key
        elif key == "al":
            assert [a is None for a in ours[key]] == [a is None for a in value]
            for a, b in zip(ours[key], value):
                if b is not None:
                    np.testing.assert_allclose(a, b, rtol=STATE_RTOL, atol=STATE_ATOL)
        elif isinstance(value, list):
            assert len(ours[key]) == len(value), key
            for a, b in zip(ours[key], value):
                np.testing.assert_allclose(
                    a, b, rtol=STATE_RTOL, atol=STATE_ATOL, err_msg=key
                )
        else:
            np.testing.assert_allclose(
                ours[key],
                np.asarray(value, np.float64),
                rtol=STATE_RTOL,
                atol=STATE_ATOL,
                err_msg=key,
            )


def assert_runs_match(ours, theirs):
    for k, ((p, loss, state), (tp, tloss, tstate)) in enumerate(zip(ours, theirs)):
        assert int(state["func_evals"]) == tstate["func_evals"], k
        assert int(state["n_iter"]) == tstate["n_iter"], k
        np.testing.assert_allclose(loss, tloss, rtol=RTOL, atol=ATOL, err_msg=str(k))
        for name in tp:
            np.testing.assert_allclose(
                p[name], tp[name], rtol=RTOL, atol=ATOL, err_msg=f"step {k + 1}, {name}"
            )
    assert_state_close(ours[-1][2], theirs[-1][2])


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_matches_torch_float64(problem, option):
    theirs, _ = torch_run(problem, OPTIONS[option])
    ours = jax_run(problem, OPTIONS[option])
    assert_runs_match(ours, theirs)


def test_without_jit_matches_torch():
    options = OPTIONS["fixed_history3"]
    theirs, _ = torch_run("logistic", options, steps=2)
    assert_runs_match(jax_run("logistic", options, steps=2, jit=False), theirs)


def test_history_wraps_around_the_ring_buffer():
    # history 3 with 9 iterations per step: the ring's start has moved
    state = jax_run("rosenbrock", OPTIONS["wolfe_history3"], steps=2)[-1][2]
    assert int(state["history_len"]) == 3
    assert int(state["history_start"]) != 0


def test_given_value_and_grads_replace_the_first_evaluation():
    loss_fn, init = PROBLEMS["logistic"]
    tx = fo.lbfgs(max_iter=3)
    params = jax.tree.map(jnp.asarray, init)
    f = lambda p: loss_fn(p, jnp)
    value, grads = jax.value_and_grad(f)(params)

    @jax.jit
    def updates_three_ways(params, state):
        return (
            tx.update(None, state, params, value_fn=f),
            tx.update(grads, state, params, value_fn=f, value=value),
            tx.update(grads, state, params, value_fn=f),
        )

    expected, *given = updates_three_ways(params, tx.init(params))
    for updates, state in given:
        jax.tree.map(np.testing.assert_array_equal, updates, expected[0])
        assert int(state["func_evals"]) == int(expected[1]["func_evals"])
        assert float(state["orig_loss"]) == float(value)


def test_complex_parameters_match_torch():
    # torch runs LBFGS on view_as_real of complex parameters; so does flatten
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 3)) + 1j * rng.standard_normal((3, 3))
    b = rng.standard_normal(3) + 1j * rng.standard_normal(3)
    z0 = rng.standard_normal(3) + 1j * rng.standard_normal(3)
    options = dict(line_search_fn="strong_wolfe", history_size=4, max_iter=6)

    t_z = torch.tensor(z0, requires_grad=True)
    t_opt = torch.optim.LBFGS([t_z], **options)

    def closure():
        t_opt.zero_grad()
        loss = torch.sum(torch.abs(torch.tensor(a) @ t_z - torch.tensor(b)) ** 2)
        loss.backward()
        return loss

    tx = fo.lbfgs(**options)
    f = lambda z: jnp.sum(jnp.abs(jnp.asarray(a) @ z - jnp.asarray(b)) ** 2)
    z, state = jnp.asarray(z0), tx.init(jnp.asarray(z0))
    step = jax.jit(lambda z, s: tx.update(None, s, z, value_fn=f))
    for _ in range(3):
        t_opt.step(closure)
        updates, state = step(z, state)
        z = fo.apply_updates(z, updates)
        assert z.dtype == jnp.complex128
        np.testing.assert_allclose(z, t_z.detach().numpy(), rtol=RTOL, atol=ATOL)
    assert int(state["func_evals"]) == t_opt.state[t_z]["func_evals"]


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_float32_runs_and_converges(problem):
    loss_fn, init = PROBLEMS[problem]
    options = dict(line_search_fn="strong_wolfe", max_iter=50)
    p, loss, state = jax_run(problem, options, steps=3, dtype=jnp.float32)[-1]
    assert all(v.dtype == np.float32 for v in p.values())
    assert state["d"].dtype == jnp.float32
    final = float(loss_fn(jax.tree.map(jnp.asarray, p), jnp))
    # the float64 optimum, from a long float64 run
    optimum = float(
        loss_fn(
            jax.tree.map(jnp.asarray, jax_run(problem, options, steps=3)[-1][0]), jnp
        )
    )
    assert final <= optimum + 1e-4 * (1 + abs(optimum))
    assert final < float(loss_fn(jax.tree.map(jnp.asarray, init), jnp))


def test_vmap_and_scan_over_independent_problems():
    # three quadratics with different linear terms, each several steps in lax.scan
    options = dict(line_search_fn="strong_wolfe", history_size=3, max_iter=4)
    tx = fo.lbfgs(**options)
    linear_terms = np.random.default_rng(5).standard_normal((3, 4))
    hessian = np.diag([1.0, 10.0, 100.0, 3.0])

    def loss(x, lib, c):
        return 0.5 * x @ (lib.asarray(hessian) @ x) - lib.asarray(c) @ x

    def solve(c):
        def step(carry, _):
            x, state = carry
            updates, state = tx.update(
                None, state, x, value_fn=lambda x: loss(x, jnp, c)
            )
            return (fo.apply_updates(x, updates), state), state["orig_loss"]

        x0 = jnp.ones(4)
        (x, state), losses = jax.lax.scan(step, (x0, tx.init(x0)), length=3)
        return x, state["func_evals"], losses

    xs, evals, losses = jax.jit(jax.vmap(solve))(jnp.asarray(linear_terms))

    def torch_solve(c):
        t_x = torch.ones(4, dtype=torch.float64, requires_grad=True)
        t_opt = torch.optim.LBFGS([t_x], **options)

        def closure():
            t_opt.zero_grad()
            value = loss(t_x, torch, torch.tensor(c))
            value.backward()
            return value

        t_losses = [float(t_opt.step(closure)) for _ in range(3)]
        return t_x.detach().numpy(), t_losses, t_opt.state[t_x]["func_evals"]

    for i, c in enumerate(linear_terms):
        t_x, t_losses, t_evals = torch_solve(c)
        np.testing.assert_allclose(xs[i], t_x, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(losses[i], t_losses, rtol=RTOL, atol=ATOL)
        assert int(evals[i]) == t_evals


def test_state_round_trips_through_torch_layout():
    # torch's state, loaded here, continues exactly as torch continues
    options = OPTIONS["wolfe_history3"]
    theirs, t_opt = torch_run("rosenbrock", options, steps=2)
    tx, step = make_step("rosenbrock", options)
    params = {"x": jnp.asarray(theirs[-1][0]["x"])}
    state = from_torch_layout(theirs[-1][2], tx.init(params))
    assert_state_close(state, theirs[-1][2])
    more, _ = torch_run("rosenbrock", options, steps=3)
    params, state = step(params, state)
    np.testing.assert_allclose(params["x"], more[-1][0]["x"], rtol=RTOL, atol=ATOL)
    assert_state_close(state, more[-1][2])


def _torch_error(options):
    """The exception torch raises constructing LBFGS with ``options`` and stepping."""
    x = torch.zeros(2, requires_grad=True)
    try:
        opt = torch.optim.LBFGS([x], **options)

        def closure():
            opt.zero_grad()
            loss = torch.sum((x - 1) ** 2)
            loss.backward()
            return loss

        opt.step(closure)
    except Exception as error:  # noqa: BLE001 - any torch error is the reference
        return error
    raise AssertionError(f"torch accepted {options}")


@pytest.mark.parametrize(
    "options",
    [
        dict(lr=-1.0),
        dict(lr=-0.5),
        dict(line_search_fn="armijo"),
        dict(line_search_fn="Strong_Wolfe"),
    ],
)
def test_bad_options_raise_torchs_errors(options):
    expected = _torch_error(options)
    with pytest.raises(type(expected)) as raised:
        fo.lbfgs(**options)
    assert str(raised.value) == str(expected)


def test_tensor_lr_must_have_one_element():
    expected = _torch_error(dict(lr=torch.tensor([1.0, 2.0])))
    with pytest.raises(type(expected), match=str(expected)):
        fo.lbfgs(lr=jnp.array([1.0, 2.0]))


def test_traced_lr_does_not_recompile():
    loss_fn, init = PROBLEMS["quadratic"]
    params = jax.tree.map(jnp.asarray, init)

    traces = []

    @jax.jit
    def step(params, lr):
        traces.append(None)  # runs once per trace
        tx = fo.lbfgs(lr=lr, max_iter=3)
        updates, _ = tx.update(
            None, tx.init(params), params, value_fn=lambda p: loss_fn(p, jnp)
        )
        return fo.apply_updates(params, updates)

    for lr in (0.1, 0.3):
        theirs, _ = torch_run("quadratic", dict(lr=lr, max_iter=3), steps=1)
        np.testing.assert_allclose(
            step(params, jnp.asarray(lr))["m"], theirs[0][0]["m"], rtol=RTOL, atol=ATOL
        )
    assert len(traces) == 1


def test_update_needs_the_objective():
    tx = fo.lbfgs()
    params = jnp.ones(2)
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(params, tx.init(params), params)


def test_flatten_round_trips_mixed_pytrees():
    tree = {
        "a": jnp.ones((2, 3), jnp.float32),
        "z": jnp.array([1 + 2j], jnp.complex64),
        "s": jnp.array(2.0, jnp.float32),
    }
    flat, unflatten = flatten(tree)
    assert flat.shape == (9,) and flat.dtype == jnp.float32
    jax.tree.map(np.testing.assert_array_equal, unflatten(flat), tree)


# --- the facade ---------------------------------------------------------------------


def _facade(problem, options):
    loss_fn, init = PROBLEMS[problem]
    params = {k: jnp.asarray(v) for k, v in sorted(init.items())}
    return fo.LBFGS(params, **options), lambda p: loss_fn(p, jnp)


def _assert_facade_matches(opt, tensors):
    for name, t in tensors.items():
        np.testing.assert_allclose(
            opt.params[name], t.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=name
        )


def test_facade_matches_torch_and_returns_the_first_loss():
    options = OPTIONS["wolfe_history3"]
    t_opt, t_closure, tensors = torch_twin("logistic", options)
    opt, closure = _facade("logistic", options)
    for _ in range(3):
        expected = float(t_opt.step(t_closure))
        np.testing.assert_allclose(float(opt.step(closure)), expected, rtol=RTOL)
        _assert_facade_matches(opt, tensors)
    first = next(iter(tensors.values()))
    assert_state_close(opt.global_state, t_opt.state[first])
    assert set(opt.state) == {0}
    assert set(opt.state[0]) == set(t_opt.state[first])
    assert isinstance(opt.state[0]["old_dirs"], list)


def test_facade_state_dict_moves_both_ways_with_torch():
    options = OPTIONS["wolfe_history3"]
    t_opt, t_closure, tensors = torch_twin("rosenbrock", options)
    opt, closure = _facade("rosenbrock", options)
    for _ in range(2):
        t_opt.step(t_closure)
        opt.step(closure)
    state_dict = opt.state_dict()
    # params given as a dict are named by their keys; torch's twin has no names
    assert state_dict["param_groups"][0]["param_names"] == list(tensors)
    assert (
        state_dict["param_groups"][0].keys() - {"param_names"}
        == t_opt.state_dict()["param_groups"][0].keys()
    )

    # ours -> a fresh torch optimizer at the same params continues as torch does
    t_twin, t_twin_closure, twin_tensors = torch_twin("rosenbrock", options)
    with torch.no_grad():
        for name, t in twin_tensors.items():
            t.copy_(torch.tensor(np.asarray(opt.params[name])))
    t_twin.load_state_dict(fo.interop.to_torch_state_dict(state_dict))
    # torch's -> a fresh facade at the same params
    loaded, _ = _facade("rosenbrock", options)
    loaded.load_state_dict(t_opt.state_dict())
    loaded.param_groups[0]["params"][:] = [
        jnp.asarray(t.detach().numpy()) for t in tensors.values()
    ]

    t_opt.step(t_closure)
    t_twin.step(t_twin_closure)
    opt.step(closure)
    loaded.step(closure)
    for facade in (opt, loaded):
        _assert_facade_matches(facade, tensors)
        assert (
            int(facade.state[0]["func_evals"])
            == t_opt.state[tensors["x"]]["func_evals"]
        )
    for name in tensors:
        np.testing.assert_allclose(
            twin_tensors[name].detach().numpy(),
            tensors[name].detach().numpy(),
            rtol=RTOL,
            atol=ATOL,
        )


def test_facade_hyperparameter_edits_do_not_recompile():
    opt, closure = _facade("quadratic", dict(max_iter=3))
    t_opt, t_closure, tensors = torch_twin("quadratic", dict(max_iter=3))
    compiles = []
    for lr in (1.0, 0.5, 0.25):
        opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["max_iter"] = 4
        for group in t_opt.param_groups:
            group["lr"], group["max_iter"] = lr, 4
        t_opt.step(t_closure)
        opt.step(closure)
        _assert_facade_matches(opt, tensors)
        compiles.append(compile_count())
    # the first step compiles (unless an earlier test's step for this closure did);
    # the later ones, with other values, run that program
    assert compiles[0] == compiles[1] == compiles[2]


def _torch_error_of(action):
    try:
        action()
    except Exception as error:  # noqa: BLE001 - any torch error is the reference
        return error
    raise AssertionError("torch accepted it")


def test_facade_rejects_param_groups_as_torch():
    a, b = np.ones(2), np.zeros(3)
    expected = _torch_error_of(
        lambda: torch.optim.LBFGS(
            [{"params": [torch.tensor(a)]}, {"params": [torch.tensor(b)]}]
        )
    )
    with pytest.raises(
        type(expected), match=str(expected).replace("(", r"\(").replace(")", r"\)")
    ):
        fo.LBFGS([{"params": [jnp.asarray(a)]}, {"params": [jnp.asarray(b)]}])

    t_opt = torch.optim.LBFGS([torch.tensor(a, requires_grad=True)])
    t_opt.add_param_group({"params": [torch.tensor(b, requires_grad=True)]})
    expected = _torch_error_of(lambda: t_opt.step(lambda: torch.tensor(0.0)))
    opt = fo.LBFGS([jnp.asarray(a)])
    opt.add_param_group({"params": [jnp.asarray(b)]})
    with pytest.raises(type(expected), match=str(expected)):
        opt.step(lambda p: jnp.sum(p[0]))


@pytest.mark.parametrize("options", [dict(line_search_fn="armijo"), dict(lr=-1.0)])
def test_facade_bad_options_raise_torchs_errors_when_torch_does(options):
    expected = _torch_error(options)
    if isinstance(expected, RuntimeError):  # torch raises it in step()
        opt = fo.LBFGS([jnp.zeros(2)], **options)
        with pytest.raises(RuntimeError, match=str(expected)):
            opt.step(lambda p: jnp.sum((p[0] - 1) ** 2))
    else:
        with pytest.raises(type(expected), match=str(expected)):
            fo.LBFGS([jnp.zeros(2)], **options)


# --- closures defined anew for every step, as torch training loops write them ------


def _minibatch_loss(p, x, y, lib, l2):
    margins = y * (x @ p["w"] + p["b"])
    return lib.mean(lib.log1p(lib.exp(-margins))) + l2 * lib.sum(p["w"] ** 2)


def _torch_minibatch_step(t_opt, tensors, x, y, l2):
    """torch's ``step`` on :func:`_minibatch_loss` over ``(x, y)``: its first loss."""
    xt, yt = torch.tensor(x), torch.tensor(y)

    def t_closure():
        t_opt.zero_grad()
        value = _minibatch_loss(tensors, xt, yt, torch, l2)
        value.backward()
        return value

    return float(t_opt.step(t_closure).detach())


def test_closure_redefined_each_step_compiles_once_and_matches_torch():
    rng = np.random.default_rng(3)
    batches = [
        (rng.standard_normal((8, 5)), np.sign(rng.standard_normal(8))) for _ in range(3)
    ]
    init = {"b": np.zeros(()), "w": np.zeros(5)}
    options = dict(max_iter=5, line_search_fn="strong_wolfe")
    opt = fo.LBFGS({k: jnp.asarray(v) for k, v in init.items()}, **options)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    t_opt = torch.optim.LBFGS([tensors["b"], tensors["w"]], **options)
    l2 = 1e-2

    def train_step(x, y, l2):
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        # a new closure object every step, capturing this step's data and l2
        loss = opt.step(lambda p: _minibatch_loss(p, xj, yj, jnp, l2))
        expected = _torch_minibatch_step(t_opt, tensors, x, y, l2)
        np.testing.assert_allclose(float(loss), expected, rtol=RTOL)
        _assert_facade_matches(opt, tensors)

    compiles = compile_count()
    for x, y in batches:
        train_step(x, y, l2)
    assert compile_count() == compiles + 1  # one compiled step served three closures
    train_step(*batches[0], 2 * l2)
    assert compile_count() == compiles + 2  # a captured number is part of the key


def test_a_new_optimizer_for_the_same_problem_does_not_compile():
    """The compiled step is kept for the process: a new optimizer over params of the
    same shapes, with a closure of the same code over other data, compiles nothing
    and steps on its own data; other shapes compile once."""
    rng = np.random.default_rng(4)
    options = dict(max_iter=5, line_search_fn="strong_wolfe")
    l2 = 1e-2

    def fit(n, d):
        x, y = rng.standard_normal((n, d)), np.sign(rng.standard_normal(n))
        init = {"b": np.zeros(()), "w": np.zeros(d)}
        opt = fo.LBFGS({k: jnp.asarray(v) for k, v in init.items()}, **options)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        loss = opt.step(lambda p: _minibatch_loss(p, xj, yj, jnp, l2))
        tensors = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
        t_opt = torch.optim.LBFGS([tensors["b"], tensors["w"]], **options)
        expected = _torch_minibatch_step(t_opt, tensors, x, y, l2)
        np.testing.assert_allclose(float(loss), expected, rtol=RTOL)
        _assert_facade_matches(opt, tensors)

    compiles = compile_count()
    fit(8, 5)
    assert compile_count() == compiles + 1
    fit(8, 5)  # a second optimizer for the same problem, on new data
    assert compile_count() == compiles + 1
    fit(12, 3)  # other shapes
    assert compile_count() == compiles + 2


def test_closure_capturing_a_mutable_object_is_compiled_per_closure():
    """A captured object may change between steps, so it is never reused stale."""
    opt = fo.LBFGS({"w": jnp.ones(3)}, max_iter=2)
    target = {"value": jnp.zeros(3)}
    compiles = compile_count()
    opt.step(lambda p: jnp.sum((p["w"] - target["value"]) ** 2))
    target["value"] = jnp.full(3, 10.0)
    before = np.asarray(opt.params["w"])
    loss = opt.step(lambda p: jnp.sum((p["w"] - target["value"]) ** 2))
    assert compile_count() == compiles + 2
    # the first evaluation saw the new target, not a stale compiled-in one
    np.testing.assert_allclose(float(loss), np.sum((before - 10.0) ** 2), rtol=1e-12)

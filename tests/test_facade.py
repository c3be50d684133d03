"""The torch-style facade against torch.optim itself.

Trajectory parity for every algorithm (two groups with different options, a param
that never gets a gradient, several dtypes), the constructor's checks, param
structures, stored grads and zero_grad, closures, state_dict format, hooks, the
compile counter and corrupted state dicts.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reference import (
    TOLERANCE,
    assert_trajectories_close,
    random_arrays,
    to_jax,
    to_numpy,
    to_torch,
)
from registry import SPECS

import functorch_optim as fo
from functorch_optim import optim

STEPS = 3


@dataclasses.dataclass(frozen=True)
class Case:
    """One facade class checked against one torch class with ``options``.

    Group 0 runs ``options``; group 1 halves the lr and flips ``maximize`` (where
    the algorithm has it). The last param of group 1 never gets a gradient.
    """

    ours: type
    theirs: type
    options: dict
    shapes: tuple
    dtypes: tuple

    @property
    def id(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.ours.__name__}({opts})"


# The registry's facade option sets, in its order. The first case of each class
# also runs the interop round trips.
CASES = [
    Case(spec.cls, spec.torch_cls, options, spec.facade_shapes, spec.facade_dtypes)
    for spec in SPECS.values()
    for options in spec.facade_options
]

# torch.optim classes the facade mirrors (SparseAdam needs sparse grads: its own
# test below; LBFGS gets its facade from the lbfgs package).
PAIRS = {c.ours: c.theirs for c in CASES} | {fo.SparseAdam: torch.optim.SparseAdam}


def _group_options(c: Case, g: int) -> dict:
    if g == 0:
        return {}
    lr = c.options.get("lr", c.ours.algorithm.defaults["lr"])
    other = {"lr": lr / 2}
    if "maximize" in c.ours.algorithm.defaults:
        other["maximize"] = not c.options.get("maximize", False)
    return other


def _data(c: Case, dtype: str, seed: int = 0):
    params = [
        random_arrays(seed + g, shapes, dtype) for g, shapes in enumerate(c.shapes)
    ]
    grads = [
        [
            random_arrays(seed + 10 * k + g + 1, shapes, dtype)
            for g, shapes in enumerate(c.shapes)
        ]
        for k in range(STEPS)
    ]
    return params, grads


def _without_last(step_grads):
    """Group 1's last param never has a gradient."""
    return [list(step_grads[0]), [*step_grads[1][:-1], None]]


def _torch_make(c, params, dtype):
    tensors = [[to_torch(p, dtype).requires_grad_() for p in group] for group in params]
    optimizer = c.theirs(
        [{"params": ts, **_group_options(c, g)} for g, ts in enumerate(tensors)],
        **c.options,
    )
    return optimizer, tensors


def _torch_steps(optimizer, tensors, grads, dtype):
    out = []
    for step_grads in grads:
        for ts, gs in zip(tensors, _without_last(step_grads)):
            for t, g in zip(ts, gs):
                t.grad = None if g is None else to_torch(g, dtype)
        optimizer.step()
        out.append([to_numpy(t) for ts in tensors for t in ts])
    return out


def _facade_make(c, params, dtype):
    return c.ours(
        [
            {"params": [to_jax(p, dtype) for p in group], **_group_options(c, g)}
            for g, group in enumerate(params)
        ],
        **c.options,
    )


def _facade_steps(opt, grads, dtype):
    out = []
    for step_grads in grads:
        opt.step(
            [
                [None if g is None else to_jax(g, dtype) for g in gs]
                for gs in _without_last(step_grads)
            ]
        )
        out.append([to_numpy(p) for group in opt.params for p in group])
    return out


def _assert_states_close(ours: dict, theirs: dict, dtype: str) -> None:
    """A facade state dict equals a torch one: ids, names (in order), values.

    bfloat16 state gets 4x the parameter tolerance: centered RMSprop divides by
    sqrt(E[g^2] - E[g]^2), where one bf16 rounding of the difference moves its
    momentum buffer by ~5% (the functional path gives the same values).
    """
    rtol, atol = (
        (4 * t for t in TOLERANCE[dtype]) if dtype == "bfloat16" else (TOLERANCE[dtype])
    )
    assert ours["param_groups"] == theirs["param_groups"]
    assert list(ours["state"]) == sorted(theirs["state"])
    for pid, state in ours["state"].items():
        assert list(state) == list(theirs["state"][pid]), pid
        for name, value in state.items():
            expected = theirs["state"][pid][name]
            if name == "step" and isinstance(expected, int):  # SparseAdam
                assert value == expected and isinstance(value, int)
                continue
            if name == "step":
                assert value.dtype == jnp.float32 and expected.dtype == torch.float32
            np.testing.assert_allclose(
                to_numpy(value),
                to_numpy(expected),
                rtol=rtol,
                atol=atol,
                err_msg=f"state {name} of param {pid}",
            )


PARITY = [(c, d) for c in CASES for d in c.dtypes]


@pytest.mark.parametrize("c, dtype", PARITY, ids=[f"{c.id}-{d}" for c, d in PARITY])
def test_trajectory_parity_with_torch(c, dtype, layout):
    params, grads = _data(c, dtype)
    try:
        torch_opt, tensors = _torch_make(c, params, dtype)
        expected = _torch_steps(torch_opt, tensors, grads, dtype)
    except Exception as e:  # torch rejects this dtype: so must the facade
        with pytest.raises(type(e)) as info:
            _facade_steps(_facade_make(c, params, dtype), grads, dtype)
        assert str(info.value) == str(e)
        return
    opt = _facade_make(c, params, dtype)
    actual = _facade_steps(opt, grads, dtype)
    packed = any(opt.debug_layout())
    assert packed == (layout == "packed" and c.ours.algorithm.elementwise)
    assert_trajectories_close(actual, expected, dtype)
    _assert_states_close(opt.state_dict(), torch_opt.state_dict(), dtype)


def test_lowered_step_is_the_next_step_unrun(layout):
    """``lowered_step`` gives the program of the next step (for its memory
    analysis) and steps nothing: the step after it is the one a twin takes."""
    lowered, twin = (fo.Adam([jnp.full(3, i + 1.0) for i in range(9)]) for _ in "ab")
    grads = [jnp.full(3, 0.5)] * 9
    with pytest.raises(ValueError, match="no parameter has a gradient"):
        lowered.lowered_step()
    compiled = lowered.lowered_step(grads).compile()
    assert compiled.memory_analysis() is not None
    for p, i in zip(lowered.params, range(9)):
        np.testing.assert_array_equal(np.asarray(p), np.full(3, i + 1.0))
    assert any(lowered.debug_layout()) == (layout == "packed")
    lowered.step()  # the grads lowered_step stored
    twin.step(grads)
    for a, b in zip(lowered.params, twin.params, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(lowered.state[0]["step"]) == int(twin.state[0]["step"]) == 1


def test_a_step_keeps_the_params_it_replaces(layout):
    """A step leaves the arrays it replaces valid and unchanged: a user may hold
    them (the constructor's inputs, earlier ``opt.params``); only the optimizer's
    own buffers are donated."""
    given = [jnp.full(3, float(i)) for i in range(4)]
    opt = fo.Adam(given, lr=0.1)
    old = list(opt.param_groups[0]["params"])
    opt.step([jnp.ones(3)] * 4)
    assert any(opt.debug_layout()) == (layout == "packed")
    assert not any(p.is_deleted() for p in old + given)
    for i, (p, new) in enumerate(zip(old, opt.params)):
        np.testing.assert_array_equal(np.asarray(p), np.full(3, float(i)))
        assert not np.array_equal(np.asarray(new), np.asarray(p))


_SPARSE_SHAPES = ((4, 3), (5,))
_SPARSE_ROWS = [np.array([[0], [2]]), np.array([[1], [4], [1]])]


def _sparse_grads(k: int):
    """Step ``k``'s sparse gradients, as BCOO and as torch's sparse COO tensors."""
    from jax.experimental import sparse

    ours, theirs = [], []
    for shape, index in zip(_SPARSE_SHAPES, _SPARSE_ROWS):
        values = np.random.default_rng(k).standard_normal((len(index), *shape[1:]))
        theirs.append(
            torch.sparse_coo_tensor(
                torch.tensor(index.T),
                torch.tensor(values),
                shape,
                check_invariants=True,
            )
        )
        ours.append(sparse.BCOO((jnp.asarray(values), jnp.asarray(index)), shape=shape))
    return ours, theirs


def _sparse_steps(ours, theirs, tensors, steps):
    for k in steps:
        jax_grads, torch_grads = _sparse_grads(k)
        for t, g in zip(tensors, torch_grads):
            t.grad = g
        theirs.step()
        ours.step(jax_grads)
        for t, p in zip(tensors, ours.params):
            np.testing.assert_allclose(np.asarray(p), to_numpy(t), rtol=1e-10)


def test_sparse_adam_with_sparse_grads_matches_torch():
    params = random_arrays(0, _SPARSE_SHAPES, "float64")
    tensors = [to_torch(p, "float64").requires_grad_() for p in params]
    theirs = torch.optim.SparseAdam(tensors, lr=0.05)
    ours = fo.SparseAdam([to_jax(p, "float64") for p in params], lr=0.05)
    _sparse_steps(ours, theirs, tensors, range(STEPS))
    _assert_states_close(ours.state_dict(), theirs.state_dict(), "float64")


def test_sparse_adam_state_dict_round_trip_with_torch():
    """torch -> facade -> torch, as the other classes' round trip, on sparse grads."""
    params = random_arrays(1, _SPARSE_SHAPES, "float64")
    tensors = [to_torch(p, "float64").requires_grad_() for p in params]
    theirs = torch.optim.SparseAdam(tensors, lr=0.05, betas=(0.8, 0.99))
    for t, g in zip(tensors, _sparse_grads(0)[1]):
        t.grad = g
    theirs.step()
    ours = fo.SparseAdam([to_jax(to_numpy(t), "float64") for t in tensors], lr=0.05)
    ours.load_state_dict(theirs.state_dict())
    _assert_states_close(ours.state_dict(), theirs.state_dict(), "float64")
    _sparse_steps(ours, theirs, tensors, [1, 2])
    tensors = [fo.interop.to_torch(p).requires_grad_() for p in ours.params]
    theirs = torch.optim.SparseAdam(tensors, lr=0.05)
    theirs.load_state_dict(fo.interop.to_torch_state_dict(ours.state_dict()))
    _sparse_steps(ours, theirs, tensors, [3, 4])
    _assert_states_close(ours.state_dict(), theirs.state_dict(), "float64")


# --- constructor ------------------------------------------------------------------


@pytest.mark.parametrize("ours", list(PAIRS), ids=lambda c: c.__name__)
def test_signature_defaults_and_repr_match_torch(ours):
    theirs = PAIRS[ours]
    ours_sig = inspect.signature(ours).parameters
    theirs_sig = inspect.signature(theirs).parameters
    assert [(p.name, p.kind) for p in ours_sig.values()] == [
        (p.name, p.kind) for p in theirs_sig.values()
    ]
    for name, p in theirs_sig.items():
        assert ours_sig[name].default == p.default, name
    shape = (2, 2)
    a, b = (np.ones(shape) * i for i in (1, 2))
    opt = ours([{"params": [jnp.asarray(a)]}, {"params": [jnp.asarray(b)], "lr": 0.5}])
    torch_opt = theirs(
        [{"params": [torch.tensor(a)]}, {"params": [torch.tensor(b)], "lr": 0.5}]
    )
    assert opt.defaults == torch_opt.defaults
    assert repr(opt) == repr(torch_opt)
    assert (
        opt.state_dict()
        == {"state": {}, "param_groups": torch_opt.state_dict()["param_groups"]}
        or ours is fo.Adagrad
    )


def test_adagrad_creates_state_at_construction_as_torch():
    params = random_arrays(0, ((2,), (3,)), "float64")
    opt = fo.Adagrad(
        [to_jax(p, "float64") for p in params], initial_accumulator_value=0.5
    )
    torch_opt = torch.optim.Adagrad(
        [to_torch(p, "float64") for p in params], initial_accumulator_value=0.5
    )
    _assert_states_close(opt.state_dict(), torch_opt.state_dict(), "float64")


def _raises_like_torch(make_ours, make_theirs):
    with pytest.raises(Exception) as expected:
        make_theirs()
    with pytest.raises(type(expected.value)) as actual:
        make_ours()
    assert str(actual.value) == str(expected.value)


def test_constructor_errors_match_torch():
    a, b = jnp.ones(2), jnp.zeros(3)
    ta, tb = torch.ones(2), torch.zeros(3)
    _raises_like_torch(lambda: fo.Adam([]), lambda: torch.optim.Adam([]))
    _raises_like_torch(
        lambda: fo.Adam([{"params": [a]}, {"params": [a, b]}]),
        lambda: torch.optim.Adam([{"params": [ta]}, {"params": [ta, tb]}]),
    )
    _raises_like_torch(
        lambda: fo.SGD([("a", a), b]), lambda: torch.optim.SGD([("a", ta), tb])
    )
    _raises_like_torch(
        lambda: fo.SGD([{"params": [("a", a)]}, {"params": [b]}]),
        lambda: torch.optim.SGD([{"params": [("a", ta)]}, {"params": [tb]}]),
    )
    _raises_like_torch(
        lambda: fo.SGD([{"params": set()}]),
        lambda: torch.optim.SGD([{"params": set()}]),
    )
    _raises_like_torch(
        lambda: fo.Adam([a], lr=jnp.array([0.1, 0.2])),
        lambda: torch.optim.Adam([ta], lr=torch.tensor([0.1, 0.2])),
    )
    _raises_like_torch(
        lambda: fo.SGD([a]).add_param_group([b]),
        lambda: torch.optim.SGD([ta]).add_param_group([tb]),
    )
    # A bare array: torch's TypeError, naming the array's type.
    with pytest.raises(
        TypeError,
        match="^params argument given to the optimizer "
        "should be an iterable of Tensors or dicts, but got jax",
    ):
        fo.Adam(a)
    with pytest.raises(
        TypeError,
        match="optimizer can only optimize Tensors, but one of the params is float",
    ):
        fo.Adam({"w": a, "b": 1.0})


def test_duplicate_params_in_a_group_warn_as_torch():
    a = jnp.ones(2)
    with pytest.warns(UserWarning) as ours:
        opt = fo.SGD([a, a], lr=0.1)
    with pytest.warns(UserWarning) as theirs:
        t = torch.ones(2)
        torch.optim.SGD([t, t], lr=0.1)
    assert str(ours[0].message) == str(theirs[0].message)
    opt.step([jnp.ones(2), jnp.ones(2)])  # both copies step; no donation clash
    np.testing.assert_allclose(np.asarray(opt.params[1]), [0.9, 0.9])


# The registry's option sets that torch's constructor rejects, per facade class.
BAD_OPTIONS = [
    (spec.cls, options)
    for spec in SPECS.values()
    for options in spec.facade_invalid_options
]


@pytest.mark.parametrize(
    "ours, options", BAD_OPTIONS, ids=[f"{c.__name__}{o}" for c, o in BAD_OPTIONS]
)
def test_invalid_options_raise_torchs_error_also_in_groups(ours, options):
    shape = (2, 2)
    _raises_like_torch(
        lambda: ours([jnp.ones(shape)], **options),
        lambda: PAIRS[ours]([torch.ones(shape)], **options),
    )
    # torch only checks constructor values; the facade checks every group alike.
    with pytest.raises(Exception) as expected:
        PAIRS[ours]([torch.ones(shape)], **options)
    opt = ours([jnp.ones(shape)])
    with pytest.raises(type(expected.value)) as info:
        opt.add_param_group({"params": [jnp.zeros(shape)], **options})
    assert str(info.value) == str(expected.value)
    assert len(opt.param_groups) == 1


def test_muon_rejects_non_matrix_params_at_construction_as_torch():
    _raises_like_torch(
        lambda: fo.Muon([jnp.ones(3)]), lambda: torch.optim.Muon([torch.ones(3)])
    )


# --- params, grads, state as given ---------------------------------------------


def test_params_keep_their_structure():
    tree = {"layer": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}, "scale": jnp.ones(())}
    opt = fo.SGD(tree, lr=0.5)
    grads = jax.tree.map(jnp.ones_like, tree)
    grads["scale"] = None
    opt.step(grads)
    assert jax.tree.structure(opt.params) == jax.tree.structure(tree)
    np.testing.assert_allclose(np.asarray(opt.params["layer"]["w"]), 0.5)
    np.testing.assert_allclose(np.asarray(opt.params["scale"]), 1.0)
    assert opt.grads["scale"] is None
    assert isinstance(fo.SGD((jnp.ones(2), jnp.ones(3))).params, tuple)

    named = fo.Adam([("w", jnp.ones(2)), ("b", jnp.zeros(3))])
    named.step([("w", jnp.ones(2)), ("b", None)])
    assert [name for name, _ in named.params] == ["w", "b"]
    t = fo.interop.to_torch
    torch_named = torch.optim.Adam([("w", t(jnp.ones(2))), ("b", t(jnp.zeros(3)))])
    theirs = torch_named.state_dict()["param_groups"]
    assert named.state_dict()["param_groups"] == theirs

    groups = fo.SGD(
        [{"params": {"w": jnp.ones(2)}}, {"params": [jnp.ones(3)], "lr": 1.0}], lr=0.5
    )
    groups.step([{"w": jnp.ones(2)}, [jnp.ones(3)]])
    w, (v,) = groups.params[0]["w"], groups.params[1]
    np.testing.assert_allclose(np.asarray(w), 0.5)
    np.testing.assert_allclose(np.asarray(v), 0.0)
    groups.add_param_group({"params": [jnp.ones(1)], "lr": 0.1})
    assert groups.param_groups[2]["momentum"] == 0 and len(groups.params) == 3


def test_state_is_keyed_by_index_and_by_param():
    opt = fo.Adam([jnp.ones(2), jnp.ones(3)], lr=0.1)
    opt.step([None, jnp.ones(3)])
    assert list(opt.state) == [1]
    p = opt.param_groups[0]["params"][1]
    assert opt.state[p] is not None and 0 not in opt.state
    assert float(opt.state[1]["step"]) == 1.0
    assert opt.state.get(opt.param_groups[0]["params"][0]) is None


def test_grad_shape_mismatch_raises():
    opt = fo.SGD([jnp.ones(2)])
    with pytest.raises(RuntimeError, match="different size"):
        opt.step([jnp.ones(3)])
    with pytest.raises(ValueError, match="structure"):
        opt.step([jnp.ones(2), jnp.ones(2)])


def _twins(dtype="float64", **options):
    params = random_arrays(3, ((2,), (2, 3)), dtype)
    tensors = [to_torch(p, dtype).requires_grad_() for p in params]
    return (
        fo.Adam([to_jax(p, dtype) for p in params], **options),
        torch.optim.Adam(tensors, **options),
        tensors,
    )


def _assert_params_close(opt, tensors, dtype="float64"):
    rtol, atol = TOLERANCE[dtype]
    for p, t in zip(opt.params, tensors):
        np.testing.assert_allclose(to_numpy(p), to_numpy(t), rtol=rtol, atol=atol)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_stored_grads_zero_grad_and_accumulation_follow_torch(set_to_none):
    opt, torch_opt, tensors = _twins(lr=0.1, weight_decay=0.1)
    grads = random_arrays(4, ((2,), (2, 3)), "float64")
    opt.step([jnp.asarray(g) for g in grads])
    for t, g in zip(tensors, grads):
        t.grad = torch.tensor(g)
    torch_opt.step()
    opt.step()  # the stored grads survive a step, as torch's .grad
    torch_opt.step()
    _assert_params_close(opt, tensors)

    opt.zero_grad(set_to_none=set_to_none)
    torch_opt.zero_grad(set_to_none=set_to_none)
    assert (opt.grads[0] is None) == set_to_none
    for _ in range(2):  # None: nothing moves; zeros: decay and momentum still act
        opt.step()
        torch_opt.step()
    _assert_params_close(opt, tensors)
    assert float(opt.state[0]["step"]) == float(torch_opt.state[tensors[0]]["step"])

    opt.accumulate_grad([jnp.asarray(g) for g in grads])
    opt.accumulate_grad([jnp.asarray(g) for g in grads])
    for t, g in zip(tensors, grads):
        (t * torch.tensor(g)).sum().backward()
        (t * torch.tensor(g)).sum().backward()
    opt.step()
    torch_opt.step()
    _assert_params_close(opt, tensors)


@pytest.mark.parametrize("dtype", ["float64", "complex64"])
def test_closure_is_differentiated_like_torch_backward(dtype):
    opt, torch_opt, tensors = _twins(dtype, lr=0.1)
    target = random_arrays(5, ((2,), (2, 3)), dtype)

    def loss(params):
        return sum(
            jnp.sum(jnp.abs(p - jnp.asarray(t, p.dtype)) ** 2)
            for p, t in zip(params, target)
        )

    def torch_closure():
        torch_opt.zero_grad()
        value = sum(
            ((t - to_torch(x, dtype)).abs() ** 2).sum() for t, x in zip(tensors, target)
        )
        value.backward()
        return value

    for _ in range(2):
        ours = opt.step(loss)
        theirs = torch_opt.step(torch_closure)
        np.testing.assert_allclose(float(ours), theirs.item(), rtol=1e-5)
    _assert_params_close(opt, tensors, dtype)


# --- compile counter --------------------------------------------------------------


def test_changing_float_hyperparameters_does_not_recompile():
    def tree():
        return {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}

    grads = tree()
    adam = fo.Adam(tree(), lr=0.1, weight_decay=0.1)
    sgd = fo.SGD(tree(), lr=0.1, momentum=0.9)
    adam.step(grads)
    sgd.step(grads)
    before = optim.compile_count()
    for k in range(3):
        adam.param_groups[0]["lr"] = 0.1 / (k + 2)
        adam.param_groups[0]["betas"] = (0.8 - 0.1 * k, 0.99)
        adam.param_groups[0]["weight_decay"] = 0.01 * (k + 1)
        adam.param_groups[0]["eps"] = 1e-6 * (k + 1)
        sgd.param_groups[0]["momentum"] = 0.5 + 0.1 * k
        sgd.param_groups[0]["lr"] = 0.01 * (k + 1)
        adam.step(grads)
        sgd.step(grads)
    # A second optimizer with the same structure reuses the compiled step.
    fo.Adam(tree(), lr=0.3, weight_decay=0.2).step(grads)
    # A schedule ending at lr = 0.0 reuses it too (lr's zero is not a branch).
    adam.param_groups[0]["lr"] = 0.0
    adam.step(grads)
    assert optim.compile_count() == before
    # A zero weight decay is static (torch's `if weight_decay != 0`): one compile.
    adam.param_groups[0]["weight_decay"] = 0
    adam.step(grads)
    assert optim.compile_count() == before + 1


def test_changed_hyperparameters_take_effect_like_torch():
    opt, torch_opt, tensors = _twins(lr=0.1)
    grads = random_arrays(4, ((2,), (2, 3)), "float64")
    for k in range(STEPS):
        for group in (*opt.param_groups, *torch_opt.param_groups):
            group["lr"] = 0.1 / (k + 1)
            group["betas"] = (0.9 - 0.1 * k, 0.999)
        opt.step([jnp.asarray(g) for g in grads])
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        torch_opt.step()
    _assert_params_close(opt, tensors)


def test_switching_momentum_on_later_creates_the_buffer():
    opt = fo.SGD([jnp.ones(2)], lr=0.1)
    opt.step([jnp.ones(2)])
    opt.param_groups[0]["momentum"] = 0.9
    opt.step([jnp.ones(2)])
    assert set(opt.state[0]) == {"momentum_buffer"}


# --- hooks ------------------------------------------------------------------------


def _hook_log(opt):
    log = []
    handles = [
        opt.register_step_pre_hook(lambda o, a, k: log.append(("pre", len(a)))),
        opt.register_step_post_hook(lambda o, a, k: log.append(("post", len(a)))),
        opt.register_state_dict_pre_hook(lambda o: log.append("sd-pre")),
        opt.register_state_dict_pre_hook(lambda o: log.append("sd-pre0"), prepend=True),
        opt.register_state_dict_post_hook(lambda o, sd: log.append("sd-post")),
        opt.register_state_dict_post_hook(
            lambda o, sd: log.append("sd-post0"), prepend=True
        ),
        opt.register_load_state_dict_pre_hook(lambda o, sd: log.append("load-pre")),
        opt.register_load_state_dict_pre_hook(
            lambda o, sd: log.append("load-pre0"), prepend=True
        ),
        opt.register_load_state_dict_post_hook(lambda o: log.append("load-post")),
        opt.register_load_state_dict_post_hook(
            lambda o: log.append("load-post0"), prepend=True
        ),
    ]
    return log, handles


def test_hooks_run_in_torchs_order_and_are_removable():
    opt, torch_opt, tensors = _twins(lr=0.1)
    for t in tensors:
        t.grad = torch.ones_like(t)
    opt.grads = [jnp.ones(2), jnp.ones((2, 3))]
    logs = []
    for o in (opt, torch_opt):
        log, handles = _hook_log(o)
        o.step()
        o.load_state_dict(o.state_dict())
        for h in handles[::2]:
            h.remove()
        o.step()
        o.load_state_dict(o.state_dict())
        logs.append(log)
    assert logs[0] == logs[1]
    assert logs[0][:2] == [("pre", 1), ("post", 1)]


def test_modifying_hooks_and_global_hooks():
    opt = fo.SGD([jnp.ones(2)], lr=1.0)
    calls = []
    # A pre hook replaces the step's arguments (args start with the optimizer).
    opt.register_step_pre_hook(lambda o, args, kwargs: ((o, [jnp.full(2, 2.0)]), {}))
    with (
        fo.register_optimizer_step_pre_hook(lambda o, a, k: calls.append("gpre")),
        fo.register_optimizer_step_post_hook(lambda o, a, k: calls.append("gpost")),
    ):
        opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
        opt.step([jnp.ones(2)])
    np.testing.assert_allclose(np.asarray(opt.params[0]), -1.0)
    assert calls == ["gpre", "post", "gpost"]
    opt.step([jnp.ones(2)])  # the global hooks are gone
    assert calls == ["gpre", "post", "gpost", "post"]

    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    assert opt.state_dict()["extra"] == 1
    lr = []
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: {**sd, "param_groups": [{**sd["param_groups"][0], "lr": 0.25}]}
    )
    opt.register_load_state_dict_post_hook(lambda o: lr.append(o.param_groups[0]["lr"]))
    opt.load_state_dict(opt.state_dict())
    assert lr == [0.25]

    opt.register_step_pre_hook(lambda o, a, k: "bad")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


# --- state dicts --------------------------------------------------------------


INTEROP = [c for i, c in enumerate(CASES) if c.ours not in {d.ours for d in CASES[:i]}]


@pytest.mark.parametrize("c", INTEROP, ids=[c.ours.__name__ for c in INTEROP])
def test_torch_to_facade_to_torch_round_trip(c):
    dtype = "float32"
    params, grads = _data(c, dtype)
    first, then, last = grads[:1], grads[1:2], grads[2:]
    # torch runs N steps; its state dict (torch tensors) loads into the facade.
    torch_opt, tensors = _torch_make(c, params, dtype)
    _torch_steps(torch_opt, tensors, first, dtype)
    opt = _facade_make(c, [[to_numpy(t) for t in ts] for ts in tensors], dtype)
    opt.load_state_dict(torch_opt.state_dict())
    _assert_states_close(opt.state_dict(), torch_opt.state_dict(), dtype)
    # Both run M more steps.
    expected = _torch_steps(torch_opt, tensors, then, dtype)
    assert_trajectories_close(_facade_steps(opt, then, dtype), expected, dtype)
    # The facade's state dict loads into a new torch optimizer; both continue.
    tensors = [[fo.interop.to_torch(p).requires_grad_() for p in g] for g in opt.params]
    torch_opt = c.theirs(
        [{"params": ts, **_group_options(c, g)} for g, ts in enumerate(tensors)],
        **c.options,
    )
    torch_opt.load_state_dict(fo.interop.to_torch_state_dict(opt.state_dict()))
    assert torch_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    expected = _torch_steps(torch_opt, tensors, last, dtype)
    assert_trajectories_close(_facade_steps(opt, last, dtype), expected, dtype)
    _assert_states_close(opt.state_dict(), torch_opt.state_dict(), dtype)
    # NumPy state dicts load too.
    twin = _facade_make(c, [[to_numpy(p) for p in g] for g in opt.params], dtype)
    twin.load_state_dict(fo.interop.to_numpy(opt.state_dict()))
    _assert_states_close(twin.state_dict(), torch_opt.state_dict(), dtype)


def test_sgd_hides_its_step_count_like_torch():
    opt = fo.SGD([jnp.ones(2)], lr=0.1, momentum=0.9)
    tensor = torch.ones(2, dtype=torch.float64, requires_grad=True)
    torch_opt = torch.optim.SGD([tensor], lr=0.1, momentum=0.9)
    opt.step([jnp.ones(2)])
    tensor.grad = torch.ones(2, dtype=torch.float64)
    torch_opt.step()
    assert list(opt.state_dict()["state"][0]) == ["momentum_buffer"]
    # Loaded non-empty state continues with torch's non-first momentum update.
    fresh = fo.SGD([opt.params[0]], lr=0.1, momentum=0.9)
    fresh.load_state_dict(torch_opt.state_dict())
    fresh.step([jnp.ones(2)])
    torch_opt.step()
    _assert_params_close(fresh, [tensor])


def _snapshot(opt):
    sd = opt.state_dict()
    return jax.tree.map(np.asarray, sd["state"]), copy.deepcopy(sd["param_groups"])


def _assert_same(a, b):
    assert a[1] == b[1]
    assert jax.tree.structure(a[0]) == jax.tree.structure(b[0])
    for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0])):
        np.testing.assert_array_equal(x, y)


def _set(path, value):
    def corrupt(sd):
        node = sd
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return corrupt


def _sgd_state_dict(sd):
    sgd = fo.SGD([jnp.ones(2), jnp.ones((2, 3))], lr=0.1, momentum=0.9)
    sgd.step([jnp.ones(2), jnp.ones((2, 3))])
    sd.clear()
    sd.update(sgd.state_dict())


CORRUPTIONS = {
    "missing state entry": _set(("state", 0, "exp_avg"), KeyError),
    "missing step": _set(("state", 1, "step"), KeyError),
    "unknown state entry": _set(("state", 0, "momentum_buffer"), np.zeros(2)),
    "wrong shape": _set(("state", 1, "exp_avg_sq"), np.zeros((3, 2))),
    "complex state for real param": _set(("state", 0, "exp_avg"), np.zeros(2, complex)),
    "string state": _set(("state", 0, "exp_avg"), "zeros"),
    "bool state": _set(("state", 0, "max_exp_avg_sq"), np.zeros(2, bool)),
    "fractional step": _set(("state", 0, "step"), np.float32(1.5)),
    "negative step": _set(("state", 0, "step"), -1.0),
    "vector step": _set(("state", 0, "step"), np.ones(2, np.float32)),
    "state for unknown id": _set(("state", 7), {"step": 1.0}),
    "missing group option": _set(("param_groups", 0, "betas"), KeyError),
    "invalid group option": _set(("param_groups", 0, "lr"), -1.0),
    "group count": lambda sd: sd["param_groups"].append(
        {**sd["param_groups"][0], "params": []}
    ),
    "group size": _set(("param_groups", 0, "params"), [0, 1, 2]),
    "no param_groups": _set(("param_groups",), KeyError),
    "another optimizer's state": _sgd_state_dict,
}


def _load_fails_and_changes_nothing(corrupt, error) -> str:
    """Load ``corrupt(a copy of an Adam optimizer's state dict)``: it raises
    ``error``, and the optimizer is left as it was and steps as an untouched twin
    does. Returns the error's message."""
    grads = [jnp.ones(2), jnp.full((2, 3), 0.5)]

    def make():
        opt = fo.Adam([jnp.arange(2.0), jnp.ones((2, 3))], lr=0.1, amsgrad=True)
        opt.step(grads)
        return opt

    opt, twin = make(), make()
    sd = opt.state_dict()
    sd = corrupt(
        {
            "state": {k: dict(v) for k, v in sd["state"].items()},
            "param_groups": [dict(g) for g in sd["param_groups"]],
        }
    )
    before = _snapshot(opt)
    with pytest.raises(error) as info:
        opt.load_state_dict(sd)
    _assert_same(_snapshot(opt), before)
    opt.step()
    twin.step()
    _assert_same(_snapshot(opt), _snapshot(twin))
    for p, q in zip(opt.params, twin.params):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    return str(info.value)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_state_dict_leaves_optimizer_unchanged(name):
    def corrupt(sd):
        CORRUPTIONS[name](sd)
        return sd

    assert _load_fails_and_changes_nothing(corrupt, (ValueError, KeyError))


def test_group_errors_have_torchs_messages():
    opt = fo.Adam([jnp.ones(2)])
    torch_opt = torch.optim.Adam([torch.ones(2)])
    for corrupt in (CORRUPTIONS["group count"], CORRUPTIONS["group size"]):
        ours, theirs = opt.state_dict(), torch_opt.state_dict()
        ours["param_groups"] = [dict(g) for g in ours["param_groups"]]
        theirs["param_groups"] = [dict(g) for g in theirs["param_groups"]]
        corrupt(ours)
        corrupt(theirs)
        _raises_like_torch(
            functools.partial(opt.load_state_dict, ours),
            functools.partial(torch_opt.load_state_dict, theirs),
        )


def test_state_dict_is_a_snapshot():
    opt = fo.Adam([jnp.ones(2)], lr=0.1)
    opt.step([jnp.ones(2)])
    sd = opt.state_dict()
    opt.step()  # donates the optimizer's own buffers, not the snapshot's
    opt.load_state_dict(sd)
    assert float(opt.state[0]["step"]) == 1.0


def test_no_warnings_from_donation():
    opt = fo.RMSprop({"a": jnp.ones((0,)), "b": jnp.ones(3)}, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step({"a": jnp.ones((0,)), "b": jnp.ones(3)})

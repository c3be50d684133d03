"""Every algorithm against torch.optim, step by step.

Each algorithm of the registry runs its option grid in every dtype torch runs, all
of its shapes in one pytree, jitted and (a few cases) eagerly; the final state is
compared with torch's too, under torch's state names. Then hyperparameters as
arrays and schedules, packed leaves, and SparseAdam's sparse gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental import sparse
from reference import (
    DTYPES,
    SHAPES,
    as_torch_options,
    assert_trajectories_close,
    functional_trajectory,
    grad_sequence,
    parity_run,
    random_arrays,
    scale_lr_after_each_step,
    to_jax,
    to_numpy,
    to_torch,
    torch_trajectory,
)
from registry import FIRST_ORDER, SPECS

import functorch_optim as fo

# torch on CPU cannot run capturable (its device check) nor differentiable
# (in-place steps of leaf tensors that require grad): there the flag only picks an
# implementation, so the reference is torch's default path, its single-tensor
# code.
AS_TORCH_DEFAULT = {"capturable": False, "differentiable": False}
# The registry's foreach_as_default algorithms: their foreach path rounds
# differently from their single-tensor one, so foreach=True is compared with the
# single-tensor path too; the other foreach paths (RMSprop's, Rprop's,
# Adafactor's) are compared as they are, and so are the fused kernels that run on
# CPU (Adagrad's).
FOREACH_AS_DEFAULT = tuple(
    name for name, spec in SPECS.items() if spec.foreach_as_default
)
DENSE = [name for name in FIRST_ORDER if not SPECS[name].sparse]
# Every dense algorithm's lr is checked as an array: with its other
# hyperparameters (the registry's as_arrays: test_hyperparameters_as_arrays),
# beside a schedule (FOREACH_AS_DEFAULT: test_lr_as_array_and_schedule), or else
# alone (LR_ALONE, test_lr_as_array: SGD, Adam, AdamW).
AS_ARRAYS = [name for name, spec in SPECS.items() if spec.as_arrays is not None]
LR_ALONE = [
    name for name in DENSE if name not in AS_ARRAYS and name not in FOREACH_AS_DEFAULT
]


def _implementation_flags(name):
    """foreach (with capturable where torch has it: not Adagrad), differentiable."""
    foreach = dict(foreach=True)
    if "capturable" in SPECS[name].algorithm.defaults:
        foreach["capturable"] = True
    return foreach, dict(differentiable=True)


# Implementation flags leave the math alone: one dtype each is enough.
FLAG_CASES = [
    (name, flags | dict(weight_decay=0.1))
    for name in FOREACH_AS_DEFAULT
    for flags in _implementation_flags(name)
]
# A fused kernel that runs on CPU (the registry's fused: Adagrad's) is torch code
# of its own, run for real dtypes (complex: torch's error, see test_options).
FUSED_CASES = [
    (name, spec.fused) for name, spec in SPECS.items() if spec.fused is not None
]

JIT_CASES = (
    [
        ((name, options), dtype)
        for name in DENSE
        for options in SPECS[name].grid
        for dtype in SPECS[name].dtypes
    ]
    + [(case, "float32") for case in FLAG_CASES]
    + [
        (case, dtype)
        for case in FUSED_CASES
        for dtype in DTYPES
        if not dtype.startswith("complex")
    ]
)


def _case_id(case):
    name, options = case
    return f"{name}[{','.join(f'{k}={v}' for k, v in options.items())}]"


def _run_both(name, options, dtype, jit=True, shapes=None):
    """Run torch and our transform side by side; returns the largest difference."""
    spec = SPECS[name]
    shapes = spec.shapes if shapes is None else shapes
    reset = AS_TORCH_DEFAULT | ({"foreach": None} if name in FOREACH_AS_DEFAULT else {})
    return parity_run(
        spec.functional(**options),
        lambda tensors: spec.torch_cls(tensors, **as_torch_options(options, reset)),
        spec.algorithm.state_names,
        random_arrays(0, shapes, dtype),
        grad_sequence(spec.steps, shapes, dtype),
        dtype,
        jit,
    )


@pytest.mark.parametrize(
    "case,dtype", JIT_CASES, ids=lambda x: x if isinstance(x, str) else _case_id(x)
)
def test_parity_jit(case, dtype):
    _run_both(*case, dtype)


def _richest(options):
    return (
        options.get("weight_decay")
        and options.get("maximize")
        and (options.get("momentum") or options.get("amsgrad"))
    )


# Eager steps run the same rules op by op (slowly), so a few cases each: SGD's and
# Adam's richest cases (momentum + decay, amsgrad + coupled decay) in every dtype
# (LR_ALONE); the case with the most nonzero options of the algorithms with
# per-leaf scalars (FOREACH_AS_DEFAULT), the dtypes in turn; the last case of the
# others (AS_ARRAYS) in float32 on two shapes (eager dispatch compiles every
# operation per shape; the jitted runs cover every shape).
NO_JIT_CASES = (
    [
        ((name, options), dtype, None)
        for name, options in [
            (name, options)
            for name in LR_ALONE
            for options in SPECS[name].grid
            if _richest(options)
        ][::3]
        for dtype in DTYPES
    ]
    + [
        ((name, SPECS[name].grid[1]), DTYPES[i % len(DTYPES)], None)
        for i, name in enumerate(FOREACH_AS_DEFAULT)
    ]
    + [
        ((name, SPECS[name].grid[-1]), "float32", SPECS[name].shapes[:2])
        for name in AS_ARRAYS
    ]
)


@pytest.mark.parametrize(
    "case,dtype,shapes",
    NO_JIT_CASES,
    ids=[f"{_case_id(c)}-{d}" for c, d, _ in NO_JIT_CASES],
)
def test_parity_without_jit(case, dtype, shapes):
    _run_both(*case, dtype, jit=False, shapes=shapes)


# Steps of the hyperparameter and packing tests: past RAdam's rectification switch.
LONG_STEPS = SPECS["radam"].steps


@pytest.mark.parametrize("name", FOREACH_AS_DEFAULT)
def test_parity_with_packed_leaves(name):
    """Many small leaves of one shape are stepped stacked (the rules are
    elementwise; ASGD's eta/mu and NAdam's mu_product stay per leaf)."""
    spec = SPECS[name]
    assert spec.elementwise
    options = spec.grid[1]
    shapes = [(2, 3)] * 6 + [(4,)]
    parity_run(
        spec.functional(**options),
        lambda tensors: spec.torch_cls(tensors, **options),
        spec.algorithm.state_names,
        random_arrays(0, shapes, "complex64"),
        grad_sequence(LONG_STEPS, shapes, "complex64"),
        "complex64",
    )


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
def test_adagrad_state_is_created_at_construction(dtype):
    """torch fills ``sum`` in its constructor, complex parts both at the value."""
    params = random_arrays(0, SHAPES, dtype)
    tensors = [to_torch(p, dtype) for p in params]
    optimizer = torch.optim.Adagrad(tensors, initial_accumulator_value=0.25)
    state = fo.adagrad(initial_accumulator_value=0.25).init(
        [to_jax(p, dtype) for p in params]
    )
    for tensor, ours in zip(tensors, state.sum):
        np.testing.assert_array_equal(
            to_numpy(ours), to_numpy(optimizer.state[tensor]["sum"])
        )
        assert ours.dtype == jnp.dtype(dtype)


def test_radam_grid_crosses_the_rectification_switch():
    """The RAdam cases step on both sides of rho_t = 5 inside one jitted step."""
    for beta2 in {o.get("betas", (0.9, 0.999))[1] for o in SPECS["radam"].grid}:
        rho_inf = 2 / (1 - beta2) - 1
        rho = [
            rho_inf - 2 * t * beta2**t / (1 - beta2**t)
            for t in range(1, LONG_STEPS + 1)
        ]
        assert rho[0] <= 5.0 < rho[-1], (beta2, rho)


@pytest.mark.parametrize(
    "lr,torch_lr",
    [
        (jnp.asarray(0.03), torch.tensor(0.03, dtype=torch.float64)),
        # a schedule sees 0, 1, 2, ... exactly as torch's lr set before each step
        (lambda count: 0.1 * 0.5**count, 0.1),
    ],
    ids=["array", "schedule"],
)
@pytest.mark.parametrize("name", FOREACH_AS_DEFAULT)
def test_lr_as_array_and_schedule(name, lr, torch_lr):
    spec = SPECS[name]
    factor = 1.0 if isinstance(torch_lr, torch.Tensor) else 0.5
    parity_run(
        spec.functional(lr=lr),
        lambda ps: scale_lr_after_each_step(spec.torch_cls(ps, lr=torch_lr), factor),
        spec.algorithm.state_names,
        random_arrays(0, SHAPES, "float64"),
        grad_sequence(LONG_STEPS, SHAPES, "float64"),
        "float64",
    )


@pytest.mark.parametrize("name", FOREACH_AS_DEFAULT)
def test_update_without_params(name):
    """Without weight decay only ASGD reads the parameters (its decay and average)."""
    params = [jnp.ones(3)]
    grads = [jnp.full(3, 0.5)]
    tx = getattr(fo, name)(lr=0.1)
    if name == "asgd":
        with pytest.raises(ValueError, match="needs params"):
            tx.update(grads, tx.init(params))
        return
    with_params, _ = tx.update(grads, tx.init(params), params)
    without, _ = tx.update(grads, tx.init(params))
    np.testing.assert_allclose(with_params[0], without[0])


def test_rprop_grid_changes_signs_and_hits_the_bounds():
    """The grads of the parity runs drive Rprop through all three sign branches and
    both step-size clamps (so the parity cases above exercise them)."""
    shapes = SPECS["rprop"].shapes
    grads = grad_sequence(SPECS["rprop"].steps, shapes, "float64")
    tx = fo.rprop(step_sizes=(5e-3, 1.5e-2))
    params = [to_jax(p, "float64") for p in random_arrays(0, shapes, "float64")]
    state = tx.init(params)
    products = []
    for step_grads in grads:
        state_prev = state.prev
        _, state = tx.update([to_jax(g, "float64") for g in step_grads], state, params)
        products += [np.ravel(g * p) for g, p in zip(step_grads, state_prev)]
    products = np.concatenate(products)
    assert (products > 0).any() and (products < 0).any() and (products == 0).any()
    sizes = np.concatenate([np.ravel(s) for s in state.step_size])
    assert (sizes == 5e-3).any() and (sizes == 1.5e-2).any()


@pytest.mark.parametrize("name", AS_ARRAYS)
def test_hyperparameters_as_arrays(name):
    """JAX scalars are traced (no recompilation on change) and give torch's result."""
    spec = SPECS[name]
    options = spec.as_arrays
    params = random_arrays(0, spec.shapes, "float64")
    grads = grad_sequence(spec.steps, spec.shapes, "float64")
    expected = torch_trajectory(
        lambda ps: spec.torch_cls(ps, **options), params, grads, "float64"
    )
    traced = {k: jnp.asarray(v) for k, v in options.items()}
    actual = functional_trajectory(spec.functional(**traced), params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")


@pytest.mark.parametrize("name", AS_ARRAYS)
def test_lr_schedule_is_evaluated_on_the_step_count(name):
    """A schedule sees 0, 1, 2, ... as torch's lr set before each step (Rprop reads
    lr once, when it creates its step sizes)."""
    spec = SPECS[name]
    params = random_arrays(0, spec.shapes, "float64")
    grads = grad_sequence(spec.steps, spec.shapes, "float64")

    def make_torch(ps):
        return scale_lr_after_each_step(spec.torch_cls(ps, lr=0.1), 0.5)

    expected = torch_trajectory(make_torch, params, grads, "float64")
    tx = spec.functional(lr=lambda count: 0.1 * 0.5**count)
    actual = functional_trajectory(tx, params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")


# The algorithms whose reads_params is False under every option set of their
# grid (Rprop, SparseAdam).
NEVER_READS_PARAMS = [
    name
    for name in FIRST_ORDER
    if not any(
        SPECS[name].algorithm.reads_params(SPECS[name].algorithm.options(options))
        for options in SPECS[name].grid
    )
]


@pytest.mark.parametrize("name", NEVER_READS_PARAMS)
def test_update_never_reads_params(name):
    """Rprop and SparseAdam never read the parameter values."""
    params = [jnp.ones((3, 2))]
    if SPECS[name].sparse:
        rows = jnp.array([[0.5, 0.0], [1.0, 2.0]])
        grads = [sparse.BCOO((rows, jnp.array([[0], [2]])), shape=(3, 2))]
    else:
        grads = [jnp.full((3, 2), 0.5)]
    tx = getattr(fo, name)(lr=0.1)
    with_params, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    without, _ = jax.jit(tx.update)(grads, tx.init(params))
    np.testing.assert_allclose(with_params[0], without[0], rtol=1e-6)
    assert with_params[0].shape == without[0].shape == (3, 2)


@pytest.mark.parametrize("name", LR_ALONE)
def test_lr_as_array(name):
    spec = SPECS[name]
    params = random_arrays(0, SHAPES, "float64")
    grads = grad_sequence(spec.steps, SHAPES, "float64")
    expected = torch_trajectory(
        lambda ps: spec.torch_cls(ps, lr=torch.tensor(0.03, dtype=torch.float64)),
        params,
        grads,
        "float64",
    )
    tx = getattr(fo, name)(lr=jnp.asarray(0.03))
    actual = functional_trajectory(tx, params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")


def test_adam_lr_schedule_is_evaluated_on_the_step_count():
    """A schedule sees 0, 1, 2, ... exactly as torch's lr set before each step."""
    schedule = lambda count: 0.1 * 0.5**count  # noqa: E731
    params = random_arrays(0, SHAPES, "float64")
    grads = grad_sequence(SPECS["adam"].steps, SHAPES, "float64")

    def make_torch(ps):
        return scale_lr_after_each_step(torch.optim.Adam(ps, lr=0.1), 0.5)

    expected = torch_trajectory(make_torch, params, grads, "float64")
    actual = functional_trajectory(fo.adam(lr=schedule), params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")


def test_dtypes_and_structure_are_preserved():
    params = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": [jnp.zeros((), jnp.float32)]}
    tx = fo.adam(lr=0.1, amsgrad=True)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.dtype == p.dtype and u.shape == p.shape
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert before.dtype == after.dtype and before.shape == after.shape
    assert state._fields == ("count", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def test_adam_update_without_params():
    params = [jnp.ones(3)]
    grads = [jnp.full(3, 0.5)]
    tx = fo.adam(lr=0.1)
    with_params, _ = tx.update(grads, tx.init(params), params)
    without, _ = tx.update(grads, tx.init(params))
    assert jnp.allclose(with_params[0], without[0])
    decayed = fo.adamw(lr=0.1)
    with pytest.raises(ValueError, match="needs params"):
        decayed.update(grads, decayed.init(params))


def test_betas_as_schedules():
    """Schedules inside a tuple option are evaluated too (cycled betas)."""
    beta1 = lambda count: 0.9 - 0.1 * (count % 2)  # noqa: E731
    tx = fo.adam(lr=0.1, betas=(beta1, lambda count: 0.999))
    params = random_arrays(0, SHAPES, "float64")
    grads = grad_sequence(SPECS["adam"].steps, SHAPES, "float64")

    def make_torch(ps):
        opt = torch.optim.Adam(ps, lr=0.1)
        original_step = opt.step

        def step():
            original_step()
            b1 = 0.8 if opt.param_groups[0]["betas"][0] == 0.9 else 0.9
            opt.param_groups[0]["betas"] = (b1, 0.999)

        opt.step = step
        return opt

    expected = torch_trajectory(make_torch, params, grads, "float64")
    actual = functional_trajectory(tx, params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")


# --- SparseAdam: sparse gradients ----------------------------------------------

# (param shape, number of sparse dims, indices per step): repeated indices are
# summed as torch's coalesce sums them; a step without indices moves nothing.
# The BCOO side pads every step to the leaf's largest count with out-of-range
# indices (BCOO's own padding), so one compilation serves every step; torch gets
# the real entries only. Size-0 leaves take the static "empty gradient" path.
SPARSE_LEAVES = (
    ((), 0, [[(), ()], [(), ()], [(), ()], [(), ()]]),
    ((5,), 1, [[(1,), (3,), (1,)], [(0,)], [], [(4,), (4,), (2,)]]),
    ((4, 3), 1, [[(2,), (0,), (2,)], [], [(3,), (0,)], [(0,), (0,), (1,)]]),
    ((2, 3, 2), 2, [[(0, 1), (1, 2), (0, 1)], [(1, 0)], [(1, 2), (0, 0)], [(0, 1)]]),
    ((0,), 1, [[], [], [], []]),
    ((3, 0), 1, [[(1,)], [(0,), (1,)], [], [(2,)]]),
)


def _sparse_steps(leaves, seed=5):
    """Per step, per leaf: (indices of shape (nse, n_sparse), values)."""
    rng = np.random.default_rng(seed)
    steps = []
    for k in range(SPARSE.steps):
        step = []
        for shape, n_sparse, per_step in leaves:
            indices = np.array(per_step[k], np.int64).reshape(
                len(per_step[k]), n_sparse
            )
            values = rng.standard_normal((len(indices),) + shape[n_sparse:])
            step.append((indices, values))
        steps.append(step)
    return steps


def _torch_sparse(indices, values, shape, dtype):
    return torch.sparse_coo_tensor(
        torch.tensor(indices.T.copy()),
        to_torch(values, dtype),
        shape,
        check_invariants=True,
    )


def _bcoo(indices, values, leaf, dtype):
    """The entries as a BCOO, padded to the leaf's largest count."""
    shape, n_sparse, per_step = leaf
    padding = max(len(entries) for entries in per_step) - len(indices)
    indices = np.concatenate(
        [indices, np.tile(np.array(shape[:n_sparse], np.int64), (padding, 1))]
    )
    values = np.concatenate([values, np.zeros((padding,) + values.shape[1:])])
    return sparse.BCOO((to_jax(values, dtype), jnp.asarray(indices)), shape=shape)


SPARSE = SPECS["sparse_adam"]
# The defaults in every dtype; each other option set in float32 and one more.
SPARSE_CASES = [
    ({}, "float32", True),
    ({}, "float64", True),
    ({}, "bfloat16", True),
    (SPARSE.grid[1], "float32", True),
    (SPARSE.grid[1], "float64", True),
    (SPARSE.grid[2], "float32", True),
    (SPARSE.grid[2], "bfloat16", True),
    ({}, "float32", False),
]


@pytest.mark.parametrize("options,dtype,jit", SPARSE_CASES, ids=str)
def test_sparse_adam_parity(options, dtype, jit):
    # Unjitted, every operation compiles per shape: two leaves show the rule runs.
    sparse_leaves = SPARSE_LEAVES if jit else SPARSE_LEAVES[1:3]
    shapes = [s for s, _, _ in sparse_leaves]
    parity_run(
        SPARSE.functional(**options),
        lambda tensors: SPARSE.torch_cls(tensors, **options),
        SPARSE.algorithm.state_names,
        random_arrays(0, shapes, dtype),
        _sparse_steps(sparse_leaves),
        dtype,
        jit,
        grad_to_torch=lambda i, g: _torch_sparse(*g, shapes[i], dtype),
        grad_to_jax=lambda i, g: _bcoo(*g, sparse_leaves[i], dtype),
    )


def test_sparse_adam_embedding_lookup():
    """torch's nn.Embedding(sparse=True) gradients and BCOO gradients of the same
    lookup (rows repeated within and across steps) give the same trajectory."""
    num_embeddings, dim = 7, 3
    table = random_arrays(0, [(num_embeddings, dim)], "float32")[0]
    rng = np.random.default_rng(3)
    batches = [
        rng.integers(0, num_embeddings, size=(2, 4)) for _ in range(SPARSE.steps)
    ]
    targets = [rng.standard_normal((2, 4, dim)) for _ in range(SPARSE.steps)]

    embedding = torch.nn.Embedding(num_embeddings, dim, sparse=True)
    embedding.weight.data = to_torch(table, "float32")
    optimizer = torch.optim.SparseAdam(embedding.parameters(), lr=0.05)
    expected = []
    for ids, target in zip(batches, targets):
        optimizer.zero_grad()
        out = embedding(torch.tensor(ids))
        ((out - to_torch(target, "float32")) ** 2).sum().backward()
        assert embedding.weight.grad.is_sparse
        optimizer.step()
        expected.append([to_numpy(embedding.weight)])

    def loss_of_rows(rows, target):
        return jnp.sum((rows - target) ** 2)

    @jax.jit
    def train_step(params, state, ids, target):
        rows = params["embedding"][ids]
        # The gradient of a lookup: one row per id, repeats included, as torch's.
        row_grads = jax.grad(loss_of_rows)(rows, target)
        grad = sparse.BCOO(
            (row_grads.reshape(-1, dim), ids.reshape(-1, 1)),
            shape=params["embedding"].shape,
        )
        updates, state = tx.update({"embedding": grad}, state, params)
        return fo.apply_updates(params, updates), state

    tx = fo.sparse_adam(lr=0.05)
    params = {"embedding": jnp.asarray(table, jnp.float32)}
    state = tx.init(params)
    actual = []
    for ids, target in zip(batches, targets):
        params, state = train_step(
            params, state, jnp.asarray(ids), jnp.asarray(target, jnp.float32)
        )
        actual.append([to_numpy(params["embedding"])])
    assert_trajectories_close(actual, expected, "float32")
    untouched = sorted(
        set(range(num_embeddings)) - set(np.concatenate(batches).ravel())
    )
    np.testing.assert_array_equal(
        np.asarray(params["embedding"])[untouched], table.astype(np.float32)[untouched]
    )

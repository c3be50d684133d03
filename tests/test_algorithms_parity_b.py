"""RMSprop, Rprop, Adafactor, SparseAdam and Muon against torch.optim.

Step by step over each algorithm's options and every dtype torch runs, all shapes
in one pytree, the final state compared with torch's under torch's state names;
every value torch rejects is rejected with torch's exception type and message.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental import sparse
from reference import (
    SHAPES,
    as_torch_options,
    assert_same_error,
    assert_state_matches_torch,
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

import functorch_optim as fo
from functorch_optim.algorithms.adafactor import ADAFACTOR
from functorch_optim.algorithms.muon import MUON
from functorch_optim.algorithms.rmsprop import RMSPROP
from functorch_optim.algorithms.rprop import RPROP
from functorch_optim.algorithms.sparse_adam import SPARSE_ADAM

ALGORITHMS = {
    "rmsprop": (RMSPROP, torch.optim.RMSprop),
    "rprop": (RPROP, torch.optim.Rprop),
    "adafactor": (ADAFACTOR, torch.optim.Adafactor),
    "sparse_adam": (SPARSE_ADAM, torch.optim.SparseAdam),
    "muon": (MUON, torch.optim.Muon),
}

STEPS = 4

# torch's Adafactor divides by the element count (size 0 raises, tested below);
# Muon takes 2-D parameters only: wide, tall, square and empty.
ALGORITHM_SHAPES = {
    "rmsprop": SHAPES,
    "rprop": SHAPES,
    "adafactor": tuple(s for s in SHAPES if np.prod(s) > 0) + ((3, 1, 4),),
    "muon": ((3, 5), (5, 3), (4, 4), (0, 3)),
}

# Dtypes torch runs; the others get torch's error in test_torch_errors.
ALGORITHM_DTYPES = {
    "rmsprop": ("float32", "float64", "complex64", "bfloat16"),
    "rprop": ("float32", "float64", "complex64", "bfloat16"),
    "adafactor": ("float32", "float64", "bfloat16"),
    "muon": ("float32", "float64", "bfloat16"),
}

# torch on CPU cannot run capturable (its device check) nor differentiable
# (in-place steps of leaves that require grad); there the flag only picks an
# implementation, so the reference is torch's default path.
AS_TORCH_DEFAULT = {"capturable": False, "differentiable": False}

# Each grid toggles every option, alone and together, at zero and nonzero values.
GRIDS = {
    "rmsprop": [
        {},
        dict(lr=0.05, momentum=0.9),
        dict(centered=True, alpha=0.5, eps=1e-3),
        dict(lr=0.03, centered=True, momentum=0.5, weight_decay=0.1, foreach=True),
        dict(weight_decay=0.1, maximize=True, capturable=True, differentiable=True),
    ],
    "rprop": [
        {},
        dict(lr=0.05, etas=(0.3, 1.5)),
        dict(step_sizes=(5e-3, 1.5e-2), maximize=True),
        dict(lr=0.1, etas=(0.7, 1.1), step_sizes=(1e-2, 1.0), foreach=True),
        dict(capturable=True, differentiable=True),
    ],
    "adafactor": [
        {},
        dict(lr=0.5, weight_decay=0.1),  # lr > 1/sqrt(t): rho_t = 1/sqrt(t)
        dict(beta2_decay=-0.5, eps=(1e-3, 1e-2), maximize=True),
        dict(d=1.5, eps=(None, 0.5), foreach=True),
        dict(beta2_decay=0.0, d=100.0),
    ],
    "muon": [
        {},
        dict(lr=0.02, nesterov=False, adjust_lr_fn="original"),
        dict(lr=0.05, momentum=0.5, weight_decay=0.0, adjust_lr_fn="match_rms_adamw"),
        dict(ns_steps=3, ns_coefficients=(2.0, -1.5, 0.5), eps=1e-3, momentum=0.0),
    ],
}

CASES = [
    (name, options, dtype)
    for name, grid in GRIDS.items()
    for options in grid
    for dtype in ALGORITHM_DTYPES[name]
]


def _case_id(name, options):
    return f"{name}[{','.join(f'{k}={v}' for k, v in options.items())}]"


def _run_both(name, options, dtype, jit=True, shapes=None):
    """Run torch and our transform side by side; returns the largest difference."""
    algorithm, torch_cls = ALGORITHMS[name]
    shapes = ALGORITHM_SHAPES[name] if shapes is None else shapes
    return parity_run(
        getattr(fo, name)(**options),
        lambda tensors: torch_cls(
            tensors, **as_torch_options(options, AS_TORCH_DEFAULT)
        ),
        algorithm.state_names,
        random_arrays(0, shapes, dtype),
        grad_sequence(STEPS, shapes, dtype),
        dtype,
        jit,
    )


@pytest.mark.parametrize(
    "name,options,dtype", CASES, ids=[f"{_case_id(n, o)}-{d}" for n, o, d in CASES]
)
def test_parity_jit(name, options, dtype):
    _run_both(name, options, dtype)


NO_JIT_CASES = [(name, grid[-1]) for name, grid in GRIDS.items()]


@pytest.mark.parametrize(
    "name,options", NO_JIT_CASES, ids=[_case_id(n, o) for n, o in NO_JIT_CASES]
)
def test_parity_without_jit(name, options):
    # Eager dispatch compiles every operation per shape: two shapes suffice to
    # show the rule runs unjitted (the jitted runs cover every shape).
    _run_both(name, options, "float32", jit=False, shapes=ALGORITHM_SHAPES[name][:2])


def test_rprop_grid_changes_signs_and_hits_the_bounds():
    """The grads of the parity runs drive Rprop through all three sign branches and
    both step-size clamps (so the parity cases above exercise them)."""
    shapes = ALGORITHM_SHAPES["rprop"]
    grads = grad_sequence(STEPS, shapes, "float64")
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


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "sparse_adam"])
def test_hyperparameters_as_arrays(name):
    """JAX scalars are traced (no recompilation on change) and give torch's result."""
    options = {
        "rmsprop": dict(lr=0.02, momentum=0.9, alpha=0.9, weight_decay=0.1),
        "rprop": dict(lr=0.02),
        "adafactor": dict(lr=0.02, weight_decay=0.1, beta2_decay=-0.6, d=1.2),
        "muon": dict(lr=0.02, momentum=0.9, weight_decay=0.1),
    }[name]
    shapes = ALGORITHM_SHAPES[name]
    params = random_arrays(0, shapes, "float64")
    grads = grad_sequence(STEPS, shapes, "float64")
    expected = torch_trajectory(
        lambda ps: ALGORITHMS[name][1](ps, **options), params, grads, "float64"
    )
    traced = {k: jnp.asarray(v) for k, v in options.items()}
    actual = functional_trajectory(
        getattr(fo, name)(**traced), params, grads, "float64"
    )
    assert_trajectories_close(actual, expected, "float64")


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "sparse_adam"])
def test_lr_schedule_is_evaluated_on_the_step_count(name):
    """A schedule sees 0, 1, 2, ... as torch's lr set before each step (Rprop reads
    lr once, when it creates its step sizes)."""
    _, torch_cls = ALGORITHMS[name]
    shapes = ALGORITHM_SHAPES[name]
    params = random_arrays(0, shapes, "float64")
    grads = grad_sequence(STEPS, shapes, "float64")

    def make_torch(ps):
        return scale_lr_after_each_step(torch_cls(ps, lr=0.1), 0.5)

    expected = torch_trajectory(make_torch, params, grads, "float64")
    tx = getattr(fo, name)(lr=lambda count: 0.1 * 0.5**count)
    actual = functional_trajectory(tx, params, grads, "float64")
    assert_trajectories_close(actual, expected, "float64")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_signature_is_torchs(name):
    """Same keyword names, order, kinds and defaults as torch's constructor."""
    algorithm, torch_cls = ALGORITHMS[name]
    theirs = list(inspect.signature(torch_cls.__init__).parameters.values())[2:]
    ours = list(inspect.signature(algorithm.functional).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours] == [
        (p.name, p.kind, p.default) for p in theirs
    ]
    assert algorithm.name == torch_cls.__name__


@pytest.mark.parametrize("name", ["rprop", "sparse_adam"])
def test_update_without_params(name):
    """Rprop and SparseAdam never read the parameter values."""
    params = [jnp.ones((3, 2))]
    if name == "sparse_adam":
        rows = jnp.array([[0.5, 0.0], [1.0, 2.0]])
        grads = [sparse.BCOO((rows, jnp.array([[0], [2]])), shape=(3, 2))]
    else:
        grads = [jnp.full((3, 2), 0.5)]
    tx = getattr(fo, name)(lr=0.1)
    with_params, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    without, _ = jax.jit(tx.update)(grads, tx.init(params))
    np.testing.assert_allclose(with_params[0], without[0], rtol=1e-6)
    assert with_params[0].shape == without[0].shape == (3, 2)


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
    for k in range(STEPS):
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


SPARSE_GRID = [
    {},
    dict(lr=0.05, betas=(0.8, 0.95), eps=1e-4),
    dict(lr=0.02, maximize=True),
]


# The defaults in every dtype; each other option set in float32 and one more.
SPARSE_CASES = [
    ({}, "float32", True),
    ({}, "float64", True),
    ({}, "bfloat16", True),
    (SPARSE_GRID[1], "float32", True),
    (SPARSE_GRID[1], "float64", True),
    (SPARSE_GRID[2], "float32", True),
    (SPARSE_GRID[2], "bfloat16", True),
    ({}, "float32", False),
]


@pytest.mark.parametrize("options,dtype,jit", SPARSE_CASES, ids=str)
def test_sparse_adam_parity(options, dtype, jit):
    # Unjitted, every operation compiles per shape: two leaves show the rule runs.
    sparse_leaves = SPARSE_LEAVES if jit else SPARSE_LEAVES[1:3]
    shapes = [s for s, _, _ in sparse_leaves]
    params = random_arrays(0, shapes, dtype)
    steps = _sparse_steps(sparse_leaves)

    tensors = [to_torch(p, dtype).requires_grad_() for p in params]
    optimizer = torch.optim.SparseAdam(tensors, **options)
    expected = []
    for step in steps:
        for t, (indices, values), shape in zip(tensors, step, shapes):
            t.grad = _torch_sparse(indices, values, shape, dtype)
        optimizer.step()
        expected.append([to_numpy(t) for t in tensors])

    tx = fo.sparse_adam(**options)
    leaves = [to_jax(p, dtype) for p in params]
    state = tx.init(leaves)

    def update(leaves, state, grads):
        updates, state = tx.update(grads, state, leaves)
        return fo.apply_updates(leaves, updates), state

    update = jax.jit(update) if jit else update
    actual = []
    for step in steps:
        grads = [_bcoo(i, v, leaf, dtype) for (i, v), leaf in zip(step, sparse_leaves)]
        leaves, state = update(leaves, state, grads)
        actual.append([to_numpy(p) for p in leaves])
    assert_trajectories_close(actual, expected, dtype)
    assert_state_matches_torch(
        SPARSE_ADAM.state_names, state, optimizer, tensors, dtype
    )


def test_sparse_adam_embedding_lookup():
    """torch's nn.Embedding(sparse=True) gradients and BCOO gradients of the same
    lookup (rows repeated within and across steps) give the same trajectory."""
    num_embeddings, dim = 7, 3
    table = random_arrays(0, [(num_embeddings, dim)], "float32")[0]
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, num_embeddings, size=(2, 4)) for _ in range(STEPS)]
    targets = [rng.standard_normal((2, 4, dim)) for _ in range(STEPS)]

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


# --- errors: torch's exception type and message --------------------------------

BAD = float("nan")

# (algorithm, options, param dtype, param shape): each raises in torch at
# construction or at its first step, and here at construction, init or update.
ERROR_CASES = [
    ("rmsprop", dict(lr=-1.0)),
    ("rmsprop", dict(lr=BAD)),
    ("rmsprop", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("rmsprop", dict(eps=-1e-8)),
    ("rmsprop", dict(momentum=-0.9)),
    ("rmsprop", dict(weight_decay=-0.1)),
    ("rmsprop", dict(alpha=-0.99)),
    ("rmsprop", dict(alpha=-1.0, eps=-1.0)),
    ("rprop", dict(lr=-1.0)),
    ("rprop", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("rprop", dict(etas=(0.0, 1.2))),
    ("rprop", dict(etas=(1.0, 1.2))),
    ("rprop", dict(etas=(0.5, 1.0))),
    ("rprop", dict(etas=(0.5, BAD))),
    ("adafactor", dict(lr=-1.0)),
    ("adafactor", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("adafactor", dict(beta2_decay=0.5)),
    ("adafactor", dict(eps=(-1e-3, 1e-3))),
    ("adafactor", dict(eps=(None, -1e-3))),
    ("adafactor", dict(d=0.5)),
    ("adafactor", dict(weight_decay=-0.1)),
    ("adafactor", dict(d=0.5, weight_decay=-1.0)),
    ("sparse_adam", dict(lr=0.0)),
    ("sparse_adam", dict(lr=-1.0)),
    ("sparse_adam", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("sparse_adam", dict(eps=0.0)),
    ("sparse_adam", dict(betas=(1.0, 0.999))),
    ("sparse_adam", dict(betas=(0.9, -0.1))),
    ("muon", dict(lr=-1.0)),
    ("muon", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("muon", dict(momentum=-0.5)),
    ("muon", dict(weight_decay=-0.1)),
    ("muon", dict(adjust_lr_fn="spectral")),
    ("muon", dict(ns_steps=100)),
    ("muon", dict(ns_coefficients=(3.0, -4.0))),
]
ERROR_CASES = [(name, options, "float32", (2, 3)) for name, options in ERROR_CASES] + [
    ("adafactor", {}, "complex64", (2, 3)),
    ("adafactor", {}, "float32", (0,)),
    ("adafactor", {}, "float32", (2, 0)),
    ("muon", {}, "complex64", (2, 3)),
    ("muon", {}, "float32", (3,)),
    ("muon", {}, "float32", (2, 3, 4)),
    ("muon", dict(adjust_lr_fn="original"), "float32", (3, 0)),
    ("sparse_adam", {}, "float32", (2, 3)),  # a dense gradient
    ("sparse_adam", {}, "complex64", (2, 3)),
]


@pytest.mark.parametrize(
    "name,options,dtype,shape",
    ERROR_CASES,
    ids=[f"{n}[{o}]-{d}-{s}" for n, o, d, s in ERROR_CASES],
)
def test_torch_errors(name, options, dtype, shape):
    """Same exception type and message as torch, for every value torch rejects."""
    _, torch_cls = ALGORITHMS[name]
    value = np.ones(shape)

    def torch_run():
        tensor = to_torch(value, dtype).requires_grad_()
        tensor.grad = torch.ones_like(tensor)
        torch_cls([tensor], **as_torch_options(options)).step()

    def our_run():
        params = [to_jax(value, dtype)]
        tx = getattr(fo, name)(**options)
        tx.update(params, tx.init(params), params)

    assert_same_error(torch_run, our_run)


def test_sparse_adam_rejects_sparse_and_complex_params_with_indices():
    """torch names every offending parameter as [group, index]."""
    dtypes = ("float32", "complex64", "complex64")
    value = np.ones(2)
    assert_same_error(
        lambda: torch.optim.SparseAdam(
            [to_torch(value, d).requires_grad_() for d in dtypes]
        ),
        lambda: fo.sparse_adam().init([to_jax(value, d) for d in dtypes]),
    )
    assert_same_error(
        lambda: torch.optim.SparseAdam([torch.ones(2).to_sparse().requires_grad_()]),
        lambda: fo.sparse_adam().init([sparse.BCOO.fromdense(jnp.ones(2))]),
    )

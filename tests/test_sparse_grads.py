"""Sparse (BCOO) gradients: taken as torch takes sparse COO gradients, or torch's error.

torch accepts sparse gradients in SGD and Adagrad (and SparseAdam, tested with its
parity tests) and rejects them everywhere else with a message naming the algorithm.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental import sparse
from reference import to_numpy

import functorch_optim as fo

SHAPE = (5, 3)
# rows 1 and 3 carry gradient, row 1 twice (summed when coalesced, as torch does)
INDICES = np.array([[1, 0], [3, 2], [1, 0], [1, 2]])


def _sparse_grads(steps: int):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        values = rng.standard_normal(len(INDICES))
        yield (
            sparse.BCOO((jnp.asarray(values), jnp.asarray(INDICES)), shape=SHAPE),
            torch.sparse_coo_tensor(INDICES.T, values, SHAPE, check_invariants=True),
        )


DENSIFIED = [
    ("sgd", torch.optim.SGD, dict(lr=0.1)),
    ("sgd", torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.2)),
    ("sgd", torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.1)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.1, eps=1e-3)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.5)),
]


@pytest.mark.parametrize("name,torch_cls,options", DENSIFIED)
def test_sparse_grads_match_torch(name, torch_cls, options):
    p0 = np.random.default_rng(1).standard_normal(SHAPE)
    tensor = torch.tensor(p0, requires_grad=True)
    torch_opt = torch_cls([tensor], **options)
    tx = getattr(fo, name)(**options)
    params = jnp.asarray(p0)
    state = tx.init(params)
    facade = getattr(fo, torch_cls.__name__)([jnp.asarray(p0)], **options)
    for ours, theirs in _sparse_grads(4):
        tensor.grad = theirs
        torch_opt.step()
        updates, state = tx.update(ours, state, params)
        params = fo.apply_updates(params, updates)
        facade.step([ours])
        np.testing.assert_allclose(params, to_numpy(tensor), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(facade.params[0], to_numpy(tensor), rtol=1e-12)
    untouched = [0, 2, 4]  # rows no gradient ever reached
    np.testing.assert_array_equal(np.asarray(params)[untouched], p0[untouched])


REJECTED = [
    ("adam", torch.optim.Adam, {}),
    ("adamw", torch.optim.AdamW, {}),
    ("adadelta", torch.optim.Adadelta, {}),
    ("adafactor", torch.optim.Adafactor, {}),
    ("adamax", torch.optim.Adamax, {}),
    ("asgd", torch.optim.ASGD, {}),
    ("nadam", torch.optim.NAdam, {}),
    ("radam", torch.optim.RAdam, {}),
    ("rmsprop", torch.optim.RMSprop, {}),
    ("rprop", torch.optim.Rprop, {}),
    ("muon", torch.optim.Muon, {}),
    ("sgd", torch.optim.SGD, dict(weight_decay=0.1)),
    ("adagrad", torch.optim.Adagrad, dict(weight_decay=0.1)),
]


@pytest.mark.parametrize("name,torch_cls,options", REJECTED)
def test_sparse_grads_rejected_with_torchs_error(name, torch_cls, options):
    ours, theirs = next(_sparse_grads(1))
    tensor = torch.zeros(SHAPE, dtype=torch.float64, requires_grad=True)
    tensor.grad = theirs
    with pytest.raises(RuntimeError) as expected:
        torch_cls([tensor], **options).step()
    tx = getattr(fo, name)(**options)
    params = jnp.zeros(SHAPE)
    with pytest.raises(RuntimeError) as functional:
        tx.update(ours, tx.init(params), params)
    assert str(functional.value) == str(expected.value)
    facade = getattr(fo, torch_cls.__name__)([params], **options)
    with pytest.raises(RuntimeError) as stateful:
        facade.step([ours])
    assert str(stateful.value) == str(expected.value)
    np.testing.assert_array_equal(facade.params[0], np.zeros(SHAPE))  # unchanged
    facade.step([jnp.ones(SHAPE)])  # and still usable

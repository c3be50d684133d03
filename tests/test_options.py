"""Every algorithm's options as torch's: the same signature, and every value torch
rejects rejected with torch's exception type and message."""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental import sparse
from reference import as_torch_options, assert_same_error, to_jax, to_torch
from registry import FIRST_ORDER, SPECS

import functorch_optim as fo


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_signature_is_torchs(name):
    """Same keyword names, order, kinds and defaults as torch's constructor."""
    spec = SPECS[name]
    theirs = list(inspect.signature(spec.torch_cls.__init__).parameters.values())[2:]
    ours = list(inspect.signature(spec.algorithm.functional).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours] == [
        (p.name, p.kind, p.default) for p in theirs
    ]
    assert spec.algorithm.functional is spec.functional
    assert spec.algorithm.name == spec.torch_cls.__name__


# (algorithm, options, dtype, shape), from the registry: each raises in torch at
# construction or at its first step, and here at construction, init or update.
# The registry's invalid_arrays become JAX arrays here: it makes none at import (a
# process may configure JAX after importing it, as the sharding checks do).
ERROR_CASES = [
    (name, options, "float32", (2, 3))
    for name, spec in SPECS.items()
    for options in (
        *spec.invalid_options,
        *({k: jnp.asarray(v) for k, v in o.items()} for o in spec.invalid_arrays),
    )
] + [(name, *case) for name, spec in SPECS.items() for case in spec.invalid_params]


@pytest.mark.parametrize(
    "name,options,dtype,shape",
    ERROR_CASES,
    ids=[f"{n}[{o}]-{d}-{s}" for n, o, d, s in ERROR_CASES],
)
def test_torch_errors(name, options, dtype, shape):
    """Same exception type and message as torch, for every value torch rejects."""
    torch_cls = SPECS[name].torch_cls
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

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


NAN = float("nan")

# (algorithm, invalid options): each raises in torch at construction or at its
# first step, and here at construction, init or update; float32 parameters of
# shape (2, 3) unless given (these options are invalid whatever the shape).
INVALID_OPTIONS = [
    ("adadelta", dict(lr=-1.0)),
    ("adadelta", dict(lr=NAN)),
    ("adadelta", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("adadelta", dict(rho=-0.1)),
    ("adadelta", dict(rho=1.5)),
    ("adadelta", dict(eps=-1e-6)),
    ("adadelta", dict(weight_decay=-0.1)),
    ("adadelta", dict(rho=2.0, eps=-1.0)),
    ("adadelta", dict(foreach=True, differentiable=True)),
    ("adagrad", dict(lr=-0.1)),
    ("adagrad", dict(lr_decay=-0.1)),
    ("adagrad", dict(weight_decay=-0.1)),
    ("adagrad", dict(initial_accumulator_value=-0.1)),
    ("adagrad", dict(eps=-1e-10)),
    ("adagrad", dict(eps=-1.0, lr_decay=-1.0)),
    ("adagrad", dict(fused=True, differentiable=True)),
    ("adagrad", dict(fused=True, foreach=True)),
    ("adagrad", dict(foreach=True, differentiable=True)),
    ("adamax", dict(lr=-1e-3)),
    ("adamax", dict(eps=-1e-8)),
    ("adamax", dict(betas=(-0.1, 0.999))),
    ("adamax", dict(betas=(1.0, 0.999))),
    ("adamax", dict(betas=(0.9, 1.0))),
    ("adamax", dict(weight_decay=-1.0)),
    ("adamax", dict(foreach=True, differentiable=True)),
    ("asgd", dict(lr=-0.01)),
    ("asgd", dict(weight_decay=-0.1)),
    ("asgd", dict(lr=jnp.asarray([0.1, 0.2]))),
    ("asgd", dict(foreach=True, differentiable=True)),
    ("nadam", dict(lr=-1.0)),
    ("nadam", dict(eps=-1.0)),
    ("nadam", dict(betas=(0.9, -0.5))),
    ("nadam", dict(weight_decay=-1.0)),
    ("nadam", dict(momentum_decay=-1.0)),
    ("nadam", dict(momentum_decay=-1.0, betas=(2.0, 0.9))),
    ("nadam", dict(foreach=True, differentiable=True)),
    ("radam", dict(lr=-1.0)),
    ("radam", dict(eps=-1.0)),
    ("radam", dict(betas=(1.5, 0.999))),
    ("radam", dict(betas=(0.9, 1.5))),
    ("radam", dict(weight_decay=-1.0)),
    ("radam", dict(foreach=True, differentiable=True)),
    ("rmsprop", dict(lr=-1.0)),
    ("rmsprop", dict(lr=NAN)),
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
    ("rprop", dict(etas=(0.5, NAN))),
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
ERROR_CASES = [
    (name, options, "float32", (2, 3)) for name, options in INVALID_OPTIONS
] + [
    ("adagrad", dict(fused=True), "complex64", (2,)),
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

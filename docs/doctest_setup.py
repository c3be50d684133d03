"""The names the docstring examples use, for pytest's doctest run.

``python -m pytest -p docs.doctest_setup --doctest-modules functorch_optim`` runs
every ``>>>`` example in the package. An example may use the names defined here as
if the lines before it had made them: ``params`` (a small tree of 2-D float32 arrays),
``grads`` (its gradients under ``loss_fn``), ``loss_fn`` / ``loss``, a functional
``tx`` and ``state``, a facade ``opt`` over a list of two arrays, an embedding
``table`` with ``row_grads`` for three looked-up rows, a ``val_loss`` and the usual
modules. Each example gets fresh ones, and runs in a fresh temporary directory
(examples that save files write there).
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _example_names(doctest_namespace, tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import functorch_optim as fo

    monkeypatch.chdir(tmp_path)

    def loss_fn(params):
        return jnp.sum(jnp.tanh(params["w"]) ** 2) + jnp.sum(params["b"] ** 2)

    # every leaf 2-D, so that the Muon examples take the same params
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.ones((1, 2))}
    tx = fo.adam(lr=1e-3)
    doctest_namespace.update(
        fo=fo,
        jax=jax,
        jnp=jnp,
        np=np,
        optax=optax,
        params=params,
        grads=jax.grad(loss_fn)(params),
        loss_fn=loss_fn,
        loss=loss_fn,
        tx=tx,
        state=tx.init(params),
        opt=fo.Adam([jnp.copy(params["w"]), jnp.copy(params["b"])], lr=1e-3),
        table=jnp.zeros((5, 3)),
        row_grads=jnp.ones((3, 3)),
        val_loss=0.5,
    )
    try:
        import torch
    except ImportError:
        pass
    else:
        doctest_namespace["torch"] = torch

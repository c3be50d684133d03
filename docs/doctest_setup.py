"""The names the docstring examples use, for pytest's doctest run.

``python -m pytest -p docs.doctest_setup --doctest-modules functorch_optim`` runs
every ``>>>`` example in the package. An example may use the names defined here as
if the lines before it had made them:

- ``params`` (a dict of two 2-D float32 arrays, ``w`` and ``b``), ``grads`` (their
  gradients under ``loss_fn``), ``loss_fn`` / ``loss``, a functional ``tx`` and
  ``state``;
- a facade ``opt`` (Adam over ``params``) and a scheduler ``sched`` on it;
- ``model``: in ``functorch_optim.swa_utils`` a flax ``nnx`` model with BatchNorm
  (with ``x``, ``loader`` / ``train_batches``, ``train_one_epoch``, ``epochs``,
  ``swa_start``); elsewhere a torch module whose parameters are ``w`` and ``b``,
  with its ``torch_opt`` and ``torch_sched``;
- an embedding ``table`` with ``row_grads`` for three looked-up rows, ``val_loss``.

Each example gets fresh ones and runs in a fresh temporary directory (examples that
save files write there).
"""

from __future__ import annotations

import pytest


def _torch_names(params) -> dict:
    try:
        import torch
    except ImportError:
        return {}
    import numpy as np

    model = torch.nn.Module()
    for name, value in params.items():
        model.register_parameter(name, torch.nn.Parameter(torch.tensor(np.array(value))))
    torch_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return dict(
        torch=torch,
        model=model,
        torch_opt=torch_opt,
        torch_sched=torch.optim.lr_scheduler.StepLR(torch_opt, step_size=10),
    )


def _nnx_names() -> dict:
    import jax.numpy as jnp
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 2, rngs=rngs)
            self.norm = nnx.BatchNorm(2, rngs=rngs)

        def __call__(self, x):
            return self.norm(self.linear(x))

    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    return dict(
        model=Model(nnx.Rngs(0)),
        x=x,
        loader=[x, x + 1],
        train_batches=[x, x + 1],
        train_one_epoch=lambda *args: None,
        epochs=3,
        swa_start=1,
    )


# Examples that cannot run as written, with why; they are deselected (the run's
# summary counts them).
NOT_RUN: dict[str, str] = {}


def pytest_collection_modifyitems(config, items):
    def name(item):
        return getattr(getattr(item, "dtest", None), "name", None)

    config.hook.pytest_deselected(items=[i for i in items if name(i) in NOT_RUN])
    items[:] = [i for i in items if name(i) not in NOT_RUN]


@pytest.fixture(autouse=True)
def _example_names(request, doctest_namespace, tmp_path, monkeypatch):
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
    opt = fo.Adam(params, lr=1e-3)
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
        opt=opt,
        sched=fo.lr_scheduler.StepLR(opt, step_size=10),
        table=jnp.zeros((5, 3)),
        row_grads=jnp.ones((3, 3)),
        val_loss=0.5,
    )
    doctest_namespace.update(_torch_names(params))
    dtest = getattr(request.node, "dtest", None)
    if dtest is not None and dtest.name.startswith("functorch_optim.swa_utils"):
        doctest_namespace.update(_nnx_names())

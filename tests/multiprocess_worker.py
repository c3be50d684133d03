"""Data-parallel training on 2 processes x 4 CPU devices, run by tests/test_sharding.py.

``python tests/multiprocess_worker.py <coordinator address> <process id>`` joins a
2-process JAX cluster (``jax.distributed.initialize``) and trains a small model a
few steps with ``fo.adam`` and with the ``fo.Adam`` facade (a ``state_dict`` round
trip in the middle); process 0 prints the final parameters as JSON. The batch is
split over all 8 devices of both processes and the first layer's weights and
optimizer state are split over them too. :func:`train` with ``mesh=None`` is the
single-process reference the test compares with.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

STEPS = 3
DEVICES_PER_PROCESS = 4


def data():
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.standard_normal((3, 8)).astype(np.float32),
        "b1": np.zeros(8, np.float32),
        "w2": rng.standard_normal((8, 1)).astype(np.float32),
    }
    x = rng.standard_normal((STEPS, 16, 3)).astype(np.float32)
    y = rng.standard_normal((STEPS, 16, 1)).astype(np.float32)
    return params, x, y


def train(mesh=None) -> dict:
    """Final params of the functional and facade runs, as nested lists."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import functorch_optim as fo

    specs = {"w1": P(None, "d"), "b1": P("d"), "w2": P()}

    def put(value, spec):
        if mesh is None:
            return jnp.asarray(value)
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(
            value.shape, sharding, lambda index: value[index]
        )

    def loss(params, x, y):
        hidden = jnp.tanh(x @ params["w1"] + params["b1"])
        return jnp.mean((hidden @ params["w2"] - y) ** 2)

    grad_fn = jax.jit(jax.grad(loss))
    host_params, xs, ys = data()
    batches = [(put(x, P("d")), put(y, P("d"))) for x, y in zip(xs, ys)]

    tx = fo.adam(lr=0.05, weight_decay=0.01)

    @jax.jit
    def step(params, state, x, y):
        updates, state = tx.update(grad_fn(params, x, y), state, params)
        return fo.apply_updates(params, updates), state

    params = {k: put(v, specs[k]) for k, v in host_params.items()}
    state = tx.init(params)
    for x, y in batches:
        params, state = step(params, state, x, y)
    functional = params

    opt = fo.Adam(
        {k: put(v, specs[k]) for k, v in host_params.items()},
        lr=0.05,
        weight_decay=0.01,
    )
    for i, (x, y) in enumerate(batches):
        opt.step(grad_fn(opt.params, x, y))
        if i == 0:  # the state survives a state_dict round trip across processes
            opt.load_state_dict(opt.state_dict())
    facade = opt.params

    def gather(tree):
        if mesh is not None:
            for k, v in tree.items():
                if not v.sharding.is_equivalent_to(
                    NamedSharding(mesh, specs[k]), v.ndim
                ):
                    raise AssertionError(f"{k} left its sharding: {v.sharding}")
            tree = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(tree)
        return {k: np.asarray(v).tolist() for k, v in tree.items()}

    return {"functional": gather(functional), "facade": gather(facade)}


def main(coordinator: str, process_id: int) -> None:
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    # CPU devices of different processes talk through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator,
        num_processes=2,
        process_id=process_id,
        initialization_timeout=60,
    )
    assert jax.device_count() == 2 * DEVICES_PER_PROCESS, jax.devices()
    mesh = jax.make_mesh(
        (jax.device_count(),), ("d",), axis_types=(jax.sharding.AxisType.Auto,)
    )
    result = train(mesh)
    if process_id == 0:
        print(json.dumps(result))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

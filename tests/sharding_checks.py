"""Sharding checks on 8 simulated CPU devices, run by tests/test_sharding.py.

A separate process (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) so the
rest of the suite keeps one device; every check runs in this one process so JAX
starts once. Prints one JSON object ``{check: {"ok": bool, "detail": str}}`` as the
last line of stdout; a check that raises is recorded as failed with its error.

Reference for every comparison: the same transformation run unsharded on one device
(jitted, same step count), so a difference can only come from the sharding.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import sparse
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from registry import FIRST_ORDER, MATRIX_SHAPES, SPECS

import functorch_optim as fo
from functorch_optim.sharding import derived_sharding

STEPS = 3
COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "all-to-all",
    "collective-permute",
    "reduce-scatter",
)

# name -> (functional kwargs, the leaves' layout, complex leaves too). Options turn
# on every state entry the algorithm has (the registry's ``sharding`` options where
# it gives them, else its ``every_state``); Adam also steps complex leaves.
GENERAL = "general"  # matrix, vector, 3-D and scalar leaves (+ complex for some)
MATRICES = "matrices"  # Muon: 2-D leaves only
SPARSE = "sparse"  # SparseAdam: BCOO gradients


def _layout_kind(spec) -> str:
    if spec.sparse:
        return SPARSE
    return MATRICES if spec.shapes == MATRIX_SHAPES else GENERAL


ALGORITHMS = {
    name: (
        SPECS[name].every_state
        if SPECS[name].sharding is None
        else SPECS[name].sharding,
        _layout_kind(SPECS[name]),
        name == "adam",
    )
    for name in FIRST_ORDER
}


def layouts(kind: str, with_complex: bool) -> dict:
    """leaf name -> (shape, dtype, partition spec over mesh axes x=4, y=2)."""
    if kind == MATRICES:
        return {
            "w": ((8, 4), "float32", P("x", "y")),
            "v": ((4, 8), "float64", P("y", "x")),
        }
    if kind == SPARSE:
        return {
            "w": ((8, 4), "float32", P("x", "y")),
            "b": ((8,), "float64", P("x")),
        }
    leaves = {
        "w": ((8, 4), "float32", P("x", "y")),
        "b": ((8,), "float64", P("x")),
        "t": ((2, 4, 4), "float32", P(None, "x", "y")),
        "s": ((), "float32", P()),
    }
    if with_complex:
        leaves["c"] = ((8,), "complex64", P("x"))
    return leaves


def host_values(layout: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype, _) in layout.items():
        x = rng.standard_normal(shape)
        if dtype.startswith("complex"):
            x = x + 1j * rng.standard_normal(shape)
        out[name] = x.astype(dtype)
    return out


def put(values: dict, layout: dict, mesh) -> dict:
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in values.items()}
    return {
        k: jax.device_put(v, NamedSharding(mesh, layout[k][2]))
        for k, v in values.items()
    }


def sparse_grad(values: dict) -> dict:
    """BCOO gradients holding a few rows, as an embedding lookup produces them."""
    return {
        k: sparse.BCOO.fromdense(
            jnp.asarray(
                np.where(np.arange(len(v)) % 3 == 0, 0, 1).reshape(
                    (-1,) + (1,) * (v.ndim - 1)
                )
                * v
            )
        )
        for k, v in values.items()
    }


def problem(name: str):
    kwargs, kind, with_complex = ALGORITHMS[name]
    layout = layouts(kind, with_complex)
    params = host_values(layout, 0)
    grads = [host_values(layout, 1 + i) for i in range(STEPS + 1)]
    return kwargs, kind, layout, params, grads


def make_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    return jax.jit(step)


def leaves_with_paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]


def max_diff(actual, expected) -> float:
    worst = 0.0
    for (path, a), (_, e) in zip(
        leaves_with_paths(actual), leaves_with_paths(expected), strict=True
    ):
        if a is None and e is None:
            continue
        a, e = np.asarray(a, np.complex128), np.asarray(e, np.complex128)
        if a.shape != e.shape:
            raise AssertionError(f"{path}: shape {a.shape} != {e.shape}")
        if a.size:
            scale = np.maximum(1.0, np.abs(e))
            worst = max(worst, float(np.max(np.abs(a - e) / scale)))
    return worst


def same_spec(got, want, ndim: int) -> bool:
    """Same mesh axes and partition spec (an abstract mesh, as eval_shape reports
    it, against the concrete one)."""
    if got is None:
        return False

    def padded(spec):
        return tuple(spec) + (None,) * (ndim - len(spec))

    return padded(got.spec) == padded(want.spec) and dict(got.mesh.shape) == dict(
        want.mesh.shape
    )


def wanted_state_shardings(state, params: dict):
    """(entry name, leaf name, state array, the sharding derived from its param's)
    for every per-param state array of a functional state (concrete, or abstract
    from ``eval_shape``); the count and the scalar entries are not per param."""
    for key, tree in state._asdict().items():
        if not isinstance(tree, dict):
            continue
        for leaf_name, leaf in tree.items():
            if leaf is not None:
                param = params[leaf_name]
                want = derived_sharding(param.sharding, param.shape, leaf.shape)
                yield key, leaf_name, leaf, want


def check_state_placement(state: dict, params: dict, what: str) -> None:
    """Every state array has the sharding derived from its parameter's."""
    for key, leaf_name, leaf, want in wanted_state_shardings(state, params):
        got = leaf.sharding
        if not got.is_equivalent_to(want, leaf.ndim):
            raise AssertionError(
                f"{what}: state.{key}[{leaf_name!r}] of shape {leaf.shape} "
                f"is {got}, expected {want}"
            )


def check_params_placement(new: dict, old: dict, what: str) -> None:
    for k, v in new.items():
        if not v.sharding.is_equivalent_to(old[k].sharding, v.ndim):
            raise AssertionError(
                f"{what}: param {k!r} {v.sharding} != {old[k].sharding}"
            )


def close(diff: float, tolerance: float, what: str) -> str:
    if not diff <= tolerance:
        raise AssertionError(
            f"{what}: max relative difference {diff:.3g} > {tolerance}"
        )
    return f"max relative difference to unsharded {diff:.3g}"


def as_grads(kind: str, values: dict, layout: dict, mesh):
    if kind == SPARSE:
        return sparse_grad(values)
    return put(values, layout, mesh)


def reference(name: str):
    """Unsharded trajectory on one device: params and state after each step."""
    kwargs, kind, layout, params, grads = problem(name)
    tx = getattr(fo, name)(**kwargs)
    step = make_step(tx)
    p = put(params, layout, None)
    s = tx.init(p)
    out = []
    for g in grads:
        p, s = step(p, s, as_grads(kind, g, layout, None))
        out.append((p, s))
    return out


def check_auto(name: str, mesh, ref, results: dict) -> None:
    kwargs, kind, layout, params, grads = problem(name)
    tx = getattr(fo, name)(**kwargs)
    p = put(params, layout, mesh)
    state = tx.init(p)
    check_state_placement(state, p, "tx.init")
    results[f"init_sharding/{name}"] = "state placed as the params"

    step = make_step(tx)
    compiled = step.lower(p, state, as_grads(kind, grads[0], layout, mesh)).compile()
    hlo = compiled.as_text()
    found = [c for c in COLLECTIVES if c in hlo]
    if ALGO[name].elementwise:
        if found:
            raise AssertionError(f"compiled step has collectives {found}")
        results[f"no_collectives/{name}"] = "no collective in the compiled step"
    else:
        results[f"collectives_info/{name}"] = f"collectives: {found or 'none'}"
    new_p = p
    for g in grads[:STEPS]:
        new_p, state = compiled(new_p, state, as_grads(kind, g, layout, mesh))
    check_params_placement(new_p, p, "jit step")
    check_state_placement(state, p, "jit step")
    results[f"jit_keeps_sharding/{name}"] = "params and state keep their shardings"
    diff = max_diff((new_p, state), ref[STEPS - 1])
    results[f"matches_unsharded/{name}"] = close(
        diff, SPECS[name].sharding_tolerance, "auto mesh"
    )


def check_explicit(name: str, emesh, ref, results: dict) -> None:
    kwargs, kind, layout, params, grads = problem(name)
    tx = getattr(fo, name)(**kwargs)
    with jax.set_mesh(emesh):
        p = put(params, layout, emesh)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), p
        )
        shapes = jax.eval_shape(tx.init, abstract)
        for key, leaf_name, leaf, want in wanted_state_shardings(shapes, p):
            if not same_spec(leaf.sharding, want, len(leaf.shape)):
                raise AssertionError(
                    f"eval_shape: state.{key}[{leaf_name!r}] is "
                    f"{leaf.sharding}, expected spec {want.spec}"
                )
        state = tx.init(p)
        check_state_placement(state, p, "explicit tx.init")
        # compiled once: its program steps and is read for the all-gathers below
        compiled = (
            make_step(tx)
            .lower(p, state, as_grads(kind, grads[0], layout, emesh))
            .compile()
        )
        new_p = p
        for g in grads[:STEPS]:
            new_p, state = compiled(new_p, state, as_grads(kind, g, layout, emesh))
    check_params_placement(new_p, p, "explicit jit step")
    check_state_placement(state, p, "explicit jit step")
    diff = max_diff((new_p, state), ref[STEPS - 1])
    results[f"explicit/{name}"] = close(
        diff, SPECS[name].sharding_tolerance, "explicit"
    )

    # chained after clip_grad_norm: the global norm is an all-reduce; gathering
    # a sharded leaf (an all-gather) would be a reshape's or a flatten's. Muon's
    # own matrix products gather; clip_grad_norm adds none.
    chained = fo.chain(fo.clip_grad_norm(1.0), tx)
    with jax.set_mesh(emesh):
        p = put(params, layout, emesh)
        g = as_grads(kind, grads[0], layout, emesh)
        compiled_chained = make_step(chained).lower(p, chained.init(p), g).compile()
        gathers = [
            c.as_text().count("all-gather") for c in (compiled, compiled_chained)
        ]
        new_p, _ = compiled_chained(p, chained.init(p), g)
    check_params_placement(new_p, p, "explicit clip_grad_norm step")
    if gathers[1] > gathers[0]:
        raise AssertionError(
            f"clip_grad_norm + {name}: {gathers[1]} all-gathers, {name} alone "
            f"{gathers[0]}"
        )
    results[f"explicit_clip/{name}"] = f"runs, all-gathers: {gathers[1]}"


def check_facade(name: str, mesh, ref, results: dict) -> None:
    kwargs, kind, layout, params, grads = problem(name)
    p = put(params, layout, mesh)
    opt = SPECS[name].cls(dict(p), **kwargs)
    for g in grads[:STEPS]:
        opt.step(as_grads(kind, g, layout, mesh))
    check_params_placement(opt.params, p, "facade step")
    expected_params, expected_state = ref[STEPS - 1]
    diff = max_diff(opt.params, expected_params)

    names = list(p)  # the facade's ids: the dict's insertion order (torch's)

    def placed(state_dict, what):
        for i, leaf_name in enumerate(names):
            for key, value in state_dict["state"][i].items():
                if hasattr(value, "sharding") and value.ndim:
                    param = opt.params[leaf_name]
                    want = derived_sharding(param.sharding, param.shape, value.shape)
                    if not value.sharding.is_equivalent_to(want, value.ndim):
                        raise AssertionError(
                            f"{what}: {key!r} of {leaf_name!r} is {value.sharding}"
                        )

    sd = opt.state_dict()
    placed(sd, "state_dict")
    opt.load_state_dict(fo.interop.to_numpy(sd))  # host copies come back sharded
    placed(opt.state_dict(), "load_state_dict of host arrays")
    opt.load_state_dict(sd)
    placed(opt.state_dict(), "load_state_dict of its own state_dict")
    opt.step(as_grads(kind, grads[STEPS], layout, mesh))
    check_params_placement(opt.params, p, "facade step after load_state_dict")
    placed(opt.state_dict(), "step after load_state_dict")
    diff = max(diff, max_diff(opt.params, ref[STEPS][0]))
    # The facade traces its hyperparameters where the functional reference has
    # Python constants: XLA may round a product differently (a float32 ulp).
    results[f"facade/{name}"] = close(
        diff, max(SPECS[name].sharding_tolerance, 1e-6), "facade"
    )


# flax's cookbook "Sharding Optimization State Differently": on a 2x4 explicit
# mesh the state is resharded to another layout than the params'; a step keeps
# it (as optax's). Adafactor's factors are not params-shaped: left out.
STATE_LAYOUT = {"w": ((8, 8), "float32", P(None, "y"))}
STATE_SPEC = P("x", "y")


def check_state_sharding_kept(name: str, results: dict) -> None:
    kwargs, kind, *_ = problem(name)
    mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
    txs = {"fo": getattr(fo, name)(**kwargs)}
    if name == "adam":
        txs["optax"] = optax.adam(0.1)
    with jax.set_mesh(mesh):
        p = put(host_values(STATE_LAYOUT, 0), STATE_LAYOUT, mesh)
        g = as_grads(kind, host_values(STATE_LAYOUT, 1), STATE_LAYOUT, mesh)
        for label, tx in txs.items():
            state = jax.tree.map(
                lambda x: jax.sharding.reshard(x, STATE_SPEC) if x.ndim == 2 else x,
                tx.init(p),
            )
            _, state = make_step(tx)(p, state, g)
            for path, leaf in leaves_with_paths(state):
                if (
                    leaf is not None
                    and leaf.ndim == 2
                    and leaf.sharding.spec != STATE_SPEC
                ):
                    raise AssertionError(
                        f"{label}: state{jax.tree_util.keystr(path)} is "
                        f"{leaf.sharding.spec} after a step, given {STATE_SPEC}"
                    )
    results[f"state_sharding_kept/{name}"] = f"the state keeps {STATE_SPEC}"


def lbfgs_step(tx, loss):
    def step(p, state, t):
        updates, state = tx.update(None, state, p, value_fn=lambda q: loss(q, t))
        return fo.apply_updates(p, updates), state

    return jax.jit(step)


def check_global(mesh, emesh, results: dict) -> None:
    layout = layouts(GENERAL, True)
    params = host_values(layout, 0)
    grads = host_values(layout, 1)

    # clip_grad_norm's global norm over sharded leaves.
    for norm_type in (2.0, 1.0, float("inf")):
        tx = fo.chain(fo.clip_grad_norm(0.5, norm_type=norm_type), fo.sgd(lr=0.1))
        step = make_step(tx)
        outs = []
        for m in (mesh, None):
            p, g = put(params, layout, m), put(grads, layout, m)
            outs.append(step(p, tx.init(p), g))
        diff = max_diff(outs[0], outs[1])
        results[f"clip_grad_norm/{norm_type}"] = close(diff, 1e-6, "clip_grad_norm")

    # L-BFGS: dot products of the flattened sharded parameters (float32 and
    # float64 leaves), in the two-loop recursion and the strong-Wolfe search.
    real = {k: v for k, v in layout.items() if k in ("w", "b")}
    targets = host_values(real, 7)

    def loss(p, t):
        return sum(jnp.sum(jnp.cosh(p[k] - t[k])) for k in p)

    for search in ("strong_wolfe",):
        tx = fo.lbfgs(line_search_fn=search, history_size=4, max_iter=5)

        step = lbfgs_step(tx, loss)
        outs = []
        for m in (mesh, None):
            p, t = put(host_values(real, 0), real, m), put(targets, real, m)
            state = tx.init(p)
            for _ in range(2):
                p, state = step(p, state, t)
            outs.append((p, state))
        check_params_placement(
            outs[0][0], put(host_values(real, 0), real, mesh), "lbfgs"
        )
        diff = max_diff(outs[0], outs[1])
        # the flattened dot products sum in another order: float32 ulps
        results[f"lbfgs/{search}"] = close(diff, 1e-6, "lbfgs")

        # explicit mesh: the flat vector is replicated, each leaf resharded back
        with jax.set_mesh(emesh):
            start = put(host_values(real, 0), real, emesh)
            p, t = start, put(targets, real, emesh)
            state = tx.init(p)
            for _ in range(2):
                p, state = step(p, state, t)
        check_params_placement(p, start, "lbfgs explicit")
        diff = max_diff((p, state), outs[1])
        results[f"lbfgs_explicit/{search}"] = close(diff, 1e-6, "lbfgs explicit")


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
    emesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
    results: dict[str, dict] = {}

    def run(label, fn, *args):
        recorded = {}
        try:
            fn(*args, recorded)
            for k, v in recorded.items():
                results[k] = {"ok": True, "detail": v}
        except Exception:  # recorded, the test reports it
            detail = traceback.format_exc(limit=6)
            for k, v in recorded.items():
                results[k] = {"ok": True, "detail": v}
            results[label] = {"ok": False, "detail": detail}

    for name in ALGORITHMS:
        ref = reference(name)
        run(f"auto/{name}", check_auto, name, mesh, ref)
        run(f"explicit/{name}", check_explicit, name, emesh, ref)
        run(f"facade/{name}", check_facade, name, mesh, ref)
    for name in ALGORITHMS:
        if name != "adafactor":
            run(f"state_sharding_kept/{name}", check_state_sharding_kept, name)
    run("global", check_global, mesh, emesh)
    print(json.dumps(results))


ALGO = {name: SPECS[name].algorithm for name in ALGORITHMS}

if __name__ == "__main__":
    # Before JAX starts its backend (lazily, at the first array).
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )
    jax.config.update("jax_enable_x64", True)
    sys.exit(main())

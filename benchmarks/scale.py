"""What a training run's life costs as the leaf count grows: seconds and XLA compiles.

For trees of 500 / 2,000 / 10,000 leaves shaped as a transformer's (per layer four
(d, d) and two (d, 4d) / (4d, d) matrices and four (d,) vectors, d = 64: every leaf
small enough to be packed), each path runs, in a fresh process of its own (a
process that compiled another path first reuses its warm caches):

* ``facade``  ``fo.Adam(params)``: construction, steps 1-3, ``state_dict()``,
              ``load_state_dict``, the step after it, and ``fo.checkpoint`` save
              and restore of the state dict;
* ``packed``  ``fo.packed(fo.adam())`` under one donated ``jax.jit``: ``init``,
              steps 1-3, save and restore of the packed state, and the step
              after the restore (torch's state-dict format takes no packed
              state);
* ``optax``   the compile of ``optax.adam``'s donated jitted step on the same tree
              (its first call less its second), the yardstick: the whole life of
              a facade run should cost less than optax compiling one step.

Each phase is reported in seconds and in XLA compiles (JAX's own
``backend_compile`` events, all of the process's), and the ratios of each path's
whole sequence to optax's compile.

Quick run (about a minute):
    python benchmarks/scale.py --leaves 500
Table of the README:
    python benchmarks/scale.py --leaves 500 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import functorch_optim as fo

PATHS = ("facade", "packed", "optax")
PHASES = (
    "construct",
    "step 1",
    "step 2",
    "step 3",
    "state_dict",
    "load_state_dict",
    "step after load",
    "save",
    "restore",
)
RESULT_PREFIX = "result="
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def transformer_shapes(leaves: int, d: int = 64) -> dict[str, tuple]:
    """``leaves`` leaves (a multiple of 10) of a transformer's shapes."""
    per_layer = {
        "q": (d, d),
        "k": (d, d),
        "v": (d, d),
        "o": (d, d),
        "fc1": (d, 4 * d),
        "fc2": (4 * d, d),
        "ln1": (d,),
        "ln2": (d,),
        "o_b": (d,),
        "fc2_b": (d,),
    }
    return {
        f"h{layer:05d}.{name}": shape
        for layer in range(leaves // len(per_layer))
        for name, shape in per_layer.items()
    }


class Phases:
    """Seconds and XLA compiles of each phase, run one after another."""

    def __init__(self) -> None:
        self.compiles = 0
        self.results: dict[str, tuple[float, int]] = {}
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE:
            self.compiles += 1

    def run(self, name: str, phase: Callable[[], object]) -> object:
        compiles = self.compiles
        start = time.perf_counter()
        result = jax.block_until_ready(phase())
        self.results[name] = (time.perf_counter() - start, self.compiles - compiles)
        return result


def facade(params: dict, grads: dict, path: str) -> dict:
    phases = Phases()
    opt = phases.run("construct", lambda: fo.Adam(params, lr=1e-3))

    def step():
        opt.step(grads)
        return opt.params

    for k in (1, 2, 3):
        phases.run(f"step {k}", step)
    saved = phases.run("state_dict", opt.state_dict)
    phases.run("load_state_dict", lambda: opt.load_state_dict(saved))
    phases.run("step after load", step)
    phases.run("save", lambda: fo.checkpoint.save(path, saved))
    phases.run("restore", lambda: fo.checkpoint.restore(path))
    return phases.results


def packed(params: dict, grads: dict, path: str) -> dict:
    phases = Phases()
    tx = fo.packed(fo.adam(lr=1e-3))

    def donated(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    jitted = jax.jit(donated, donate_argnums=(0, 1))
    carry = [jax.tree.map(jnp.copy, params), None]
    carry[1] = phases.run("construct", lambda: tx.init(carry[0]))

    def step():
        carry[0], carry[1] = jitted(carry[0], carry[1], grads)
        return carry[0]

    for k in (1, 2, 3):
        phases.run(f"step {k}", step)
    # torch's format takes no packed state (fo.interop.torch_state_dict refuses
    # it): the state goes through a checkpoint, and the step after it is timed
    phases.run("save", lambda: fo.checkpoint.save(path, carry[1]))
    carry[1] = phases.run("restore", lambda: fo.checkpoint.restore(path, like=carry[1]))
    phases.run("step after load", step)
    return phases.results


def optax_compile(params: dict, grads: dict) -> dict:
    tx = optax.adam(1e-3)

    def donated(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(donated, donate_argnums=(0, 1))
    carry = [params, tx.init(params)]
    times = []
    phases = Phases()
    for _ in range(2):
        start = time.perf_counter()
        carry = list(jitted(carry[0], carry[1], grads))
        jax.block_until_ready(carry)
        times.append(time.perf_counter() - start)
    return {"step compile": (times[0] - times[1], phases.compiles)}


def worker(path_name: str, leaves: int) -> None:
    rng = np.random.default_rng(0)
    shapes = transformer_shapes(leaves)
    params = {
        k: jnp.asarray(rng.standard_normal(s, dtype=np.float32))
        for k, s in shapes.items()
    }
    grads = {k: jnp.full(s, 1e-3, jnp.float32) for k, s in shapes.items()}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "state.fockpt")
        if path_name == "facade":
            results = facade(params, grads, checkpoint)
        elif path_name == "packed":
            results = packed(params, grads, checkpoint)
        else:
            results = optax_compile(params, grads)
    print(RESULT_PREFIX + json.dumps(results))


def fresh(path_name: str, leaves: int) -> dict | None:
    run = subprocess.run(
        [sys.executable, __file__, "--worker", path_name, str(leaves)],
        capture_output=True,
        text=True,
    )
    lines = [x for x in run.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if run.returncode or not lines:
        print(f"  note: {path_name} at {leaves} leaves failed:", run.stderr[-500:])
        return None
    return json.loads(lines[0].removeprefix(RESULT_PREFIX))


def cell(result: dict | None, phase: str) -> str:
    if result is None or phase not in result:
        return "–"
    seconds, compiles = result[phase]
    return f"{seconds:.2f} s / {compiles}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    rows = []
    for leaves in args.leaves:
        results = {name: fresh(name, leaves) for name in PATHS}
        rows.append((leaves, results))
        print(f"{leaves} leaves:", json.dumps(results))
    print()
    print("Seconds / XLA compiles per phase, each path in a fresh process:")
    print()
    header = "| phase | " + " | ".join(
        f"{leaves} facade | {leaves} fo.packed" for leaves, _ in rows
    )
    print(header + " |")
    print("|---" * (1 + 2 * len(rows)) + "|")
    for phase in PHASES:
        cells = [
            f"{cell(r['facade'], phase)} | {cell(r['packed'], phase)}" for _, r in rows
        ]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    totals = []
    for _, results in rows:
        optax_s = (results["optax"] or {}).get("step compile", (float("nan"), 0))[0]
        for name in ("facade", "packed"):
            result = results[name]
            total = sum(s for s, _ in result.values()) if result else float("nan")
            compiles = sum(c for _, c in result.values()) if result else 0
            totals.append(f"{total:.2f} s / {compiles} ({total / optax_s:.2f}x optax)")
    print("| whole sequence (x optax's step compile) | " + " | ".join(totals) + " |")
    optax_cells = []
    for _, results in rows:
        optax_cells.append(cell(results["optax"], "step compile"))
        optax_cells.append("")
    print("| optax: jitted Adam step compile | " + " | ".join(optax_cells) + " |")


if __name__ == "__main__":
    main()

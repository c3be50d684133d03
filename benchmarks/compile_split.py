"""Where a jitted optimizer step's first-call time goes: Python tracing, lowering to
StableHLO, XLA's compile; for ``fo.adam`` or optax's Adam on N leaves of 1024
floats, in this process (run each in a fresh one, alternating, to compare).

    python benchmarks/compile_split.py --leaves 2000 --which fo
    python benchmarks/compile_split.py --leaves 2000 --which optax
"""

from __future__ import annotations

import argparse
import re
import time

import jax
import jax.numpy as jnp
import optax

import functorch_optim as fo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=2000)
    parser.add_argument("--which", choices=("fo", "optax"), default="fo")
    args = parser.parse_args()
    params = {f"l{i:05d}": jnp.ones((1024,), jnp.float32) for i in range(args.leaves)}
    tx = optax.adam(1e-3) if args.which == "optax" else fo.adam(lr=1e-3)
    state = tx.init(params)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step, donate_argnums=(0, 1))
    start = time.perf_counter()
    traced = jitted.trace(params, state, params)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    ops = len(re.findall(r"stablehlo\.\w+", lowered.as_text())) / args.leaves
    fusions = len(re.findall(r" fusion\(", compiled.as_text())) / args.leaves
    print(
        f"{args.which} {args.leaves} leaves: trace {traced_at - start:.2f} s, lower "
        f"{lowered_at - traced_at:.2f} s, XLA compile {done - lowered_at:.2f} s; "
        f"{ops:.1f} StableHLO ops and {fusions:.2f} fusions per leaf"
    )


if __name__ == "__main__":
    main()

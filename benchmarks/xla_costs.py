"""Where a step's time goes in XLA on this CPU: the costs the fused path works around.

1. Output arrays: the same 8 MB of float32 sliced out of one flat array into 1, 8,
   64, 500 or 2000 output arrays (runtime offsets, so the slice kernels are shared).
   The bytes are equal; the time grows with the number of outputs, which is the
   floor of a packed step that must return every parameter as its own array.
2. Inputs: the 2000 arrays concatenated into one (what a packed step does with the
   grads it is given).
3. Memory passes: the loop kernels XLA emits for an Adam step on one 16.8M leaf,
   and the time of that step. torch's fused kernel reads params, grads and both
   moments once and writes three arrays: 7 passes.

    python benchmarks/xla_costs.py
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

import functorch_optim as fo

TOTAL = 2000 * 1024
BIG = 1 << 24


def median_ms(run: Callable[[], object], repeats: int = 30) -> float:
    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def split_cost() -> None:
    flat = jnp.arange(TOTAL, dtype=jnp.float32)
    print("| outputs | elements each | ms | us per output |")
    print("|---|---|---|---|")
    for count in (1, 8, 64, 500, 2000):
        size = TOTAL // count
        offsets = [jnp.int32(i * size) for i in range(count)]

        split = jax.jit(
            lambda flat, offsets, size=size: [
                lax.dynamic_slice(flat, (o,), (size,)) for o in offsets
            ]
        )
        ms = median_ms(lambda split=split, offsets=offsets: split(flat, offsets))
        print(f"| {count} | {size} | {ms:.2f} | {1e3 * ms / count:.1f} |")


def concat_cost() -> None:
    leaves = [jnp.full((1024,), float(i)) for i in range(2000)]
    concat = jax.jit(jnp.concatenate)
    ms = median_ms(lambda: concat(leaves))
    print(f"\nconcatenating 2000 arrays of 1024: {ms:.2f} ms")


def adam_passes() -> None:
    tx = fo.adam(1e-3)
    params = {"w": jnp.ones(BIG)}
    grads = {"w": jnp.full(BIG, 1e-3)}

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    jitted = jax.jit(step, donate_argnums=(0, 1))
    state = tx.init(params)
    hlo = jitted.lower(params, state, grads).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    loops = [
        m.group(1)
        for m in re.finditer(r"%(\S+) = (\S+) fusion\(.*kind=kLoop", entry)
        if "[]" not in m.group(0).split("fusion(")[0]
    ]
    carry = [params, state]

    def run():
        carry[0], carry[1] = jitted(carry[0], carry[1], grads)
        return carry[0]

    ms = median_ms(run)
    print(
        f"\nAdam on one {BIG}-element leaf: {ms:.2f} ms, "
        f"{len(loops)} array loop kernels: {', '.join(loops)}"
    )


def main() -> None:
    print(f"jax {jax.__version__} ({jax.default_backend()})\n")
    split_cost()
    concat_cost()
    adam_passes()


if __name__ == "__main__":
    main()

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
4. Runtime offsets: 2000 params stepped by slices of one flat buffer, the slices'
   starts given as 2000 int32 scalars (so the slice kernels are shared), returned
   again as outputs (as ``fo.packed``'s state returns them), or held as one int32
   array (one output, but then each kernel slices its own start out of it and
   is compiled on its own).

    python benchmarks/xla_costs.py
"""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from toolkit import interleaved_medians, transform_step  # this script's folder

import functorch_optim as fo

TOTAL = 2000 * 1024
BIG = 1 << 24
REPEATS = 30


def split_cost() -> None:
    flat = jnp.arange(TOTAL, dtype=jnp.float32)
    runs = {}
    for count in (1, 8, 64, 500, 2000):
        size = TOTAL // count
        offsets = [jnp.int32(i * size) for i in range(count)]

        split = jax.jit(
            lambda flat, offsets, size=size: [
                lax.dynamic_slice(flat, (o,), (size,)) for o in offsets
            ]
        )
        runs[count] = lambda split=split, offsets=offsets: jax.block_until_ready(
            split(flat, offsets)
        )
    print("| outputs | elements each | ms | us per output |")
    print("|---|---|---|---|")
    for count, ms in interleaved_medians(runs, REPEATS).items():
        print(f"| {count} | {TOTAL // count} | {ms:.2f} | {1e3 * ms / count:.1f} |")


def concat_cost() -> None:
    leaves = [jnp.full((1024,), float(i)) for i in range(2000)]
    concat = jax.jit(jnp.concatenate)
    ms = interleaved_medians(
        {"concat": lambda: jax.block_until_ready(concat(leaves))}, REPEATS
    )["concat"]
    print(f"\nconcatenating 2000 arrays of 1024: {ms:.2f} ms")


def adam_passes() -> None:
    params = {"w": np.ones(BIG, np.float32)}
    step = transform_step(fo.adam(1e-3), params, {"w": np.full(BIG, 1e-3, np.float32)})
    hlo = step.program().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    loops = [
        m.group(1)
        for m in re.finditer(r"%(\S+) = (\S+) fusion\(.*kind=kLoop", entry)
        if "[]" not in m.group(0).split("fusion(")[0]
    ]
    ms = interleaved_medians({"adam": step.run}, REPEATS)["adam"]
    print(
        f"\nAdam on one {BIG}-element leaf: {ms:.2f} ms, "
        f"{len(loops)} array loop kernels: {', '.join(loops)}"
    )


def offsets_cost() -> None:
    count, size = 2000, 1024
    flat = jnp.ones((count * size,), jnp.float32)
    scalars = [jnp.int32(i * size) for i in range(count)]
    array = jnp.arange(count, dtype=jnp.int32) * size

    def add_slices(params, flat, starts):
        return [
            p + lax.dynamic_slice(flat, (s,), (size,))
            for p, s in zip(params, starts, strict=True)
        ]

    variants = {
        "2000 scalars in": (lambda p, f, o: (add_slices(p, f, o), None), scalars),
        "2000 scalars in and out": (lambda p, f, o: (add_slices(p, f, o), o), scalars),
        "one array in and out": (
            lambda p, f, o: (add_slices(p, f, [o[i] for i in range(count)]), o),
            array,
        ),
    }
    runs, compile_s = {}, {}
    for name, (fn, offsets) in variants.items():
        held = {"params": [jnp.zeros((size,), jnp.float32) for _ in range(count)]}
        start = time.perf_counter()
        step = jax.jit(fn, donate_argnums=0).lower(held["params"], flat, offsets)
        step = step.compile()
        compile_s[name] = time.perf_counter() - start

        def run(step=step, held=held, offsets=offsets):
            held["params"], _ = jax.block_until_ready(
                step(held["params"], flat, offsets)
            )

        runs[name] = run
    print(f"\n{count} params stepped by slices of one flat buffer, by offsets:")
    print("| offsets | step ms | compile s |")
    print("|---|---|---|")
    for name, ms in interleaved_medians(runs, REPEATS).items():
        print(f"| {name} | {ms:.2f} | {compile_s[name]:.1f} |")


def main() -> None:
    print(f"jax {jax.__version__} ({jax.default_backend()})\n")
    split_cost()
    concat_cost()
    adam_passes()
    offsets_cost()


if __name__ == "__main__":
    main()

"""What the torch-style facade costs on top of the bare jitted functional step.

Both sides run the same rule (Adam by default) on a 150-leaf GPT-like pytree:

* ``functional``  ``jax.jit(step, donate_argnums=(0, 1))`` around
                  ``fo.adam(...).update`` + ``fo.apply_updates``: the floor;
* ``facade``      ``opt.step(grads)`` of ``fo.Adam``: the same math in one jitted,
                  donated XLA computation, plus the facade's Python work (reading
                  ``param_groups``, splitting hyperparameters into static and traced
                  ones, gathering the leaves that have gradients, writing back).

The width ``d`` scales every leaf, so a small ``d`` shows the per-step overhead in
isolation and a large one how much of a realistic step it is. Prints the median ms
per step and the ratio facade / functional.

    python benchmarks/facade_overhead.py                 # d = 64, 256, 768
    python benchmarks/facade_overhead.py --widths 64 --repeats 200 --optimizer SGD
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from step_time import transformer  # the anchor tree (this script's folder)

import functorch_optim as fo

MS = 1e3


def gpt_shapes(d: int) -> dict[str, tuple]:
    """step_time.py's 150-leaf GPT-like anchor (d = 768) with every width scaled to
    ``d``: 12 blocks of 12 leaves + embeddings, final norm and head."""
    return {
        name: tuple(max(1, n * d // 768) for n in shape)
        for name, shape in transformer().items()
    }


def arrays(shapes: dict[str, tuple], seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()
    }


def functional_step(functional, shapes, grads, options):
    tx = functional(**options)

    def update(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    update = jax.jit(update, donate_argnums=(0, 1))
    params = arrays(shapes, 0)
    carry = [params, tx.init(params)]

    def step():
        carry[0], carry[1] = update(carry[0], carry[1], grads)
        jax.block_until_ready(carry[0])

    return step


def facade_step(cls, shapes, grads, options):
    opt = cls(arrays(shapes, 0), **options)

    def step():
        opt.step(grads)
        jax.block_until_ready(opt.param_groups[0]["params"])

    return step


def median_ms(steps, repeats: int) -> list[float]:
    """Median wall time of each step function, run interleaved so that load from
    other processes weighs on all of them alike."""
    for step in steps:  # compile, then one warm step
        step()
        step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, t in zip(steps, times):
            start = time.perf_counter()
            step()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) * MS for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 768])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--optimizer", default="Adam", help="a facade class name")
    args = parser.parse_args()

    cls = getattr(fo, args.optimizer)
    functional = cls.algorithm.functional
    options = {"lr": 1e-3}
    print(
        f"{args.optimizer}, float32, 150 leaves, median of {args.repeats} steps "
        f"({jax.devices()[0].platform}, jax {jax.__version__})"
    )
    print(
        f"{'d':>5} {'params':>10} {'functional ms':>14} {'facade ms':>10} "
        f"{'overhead ms':>12} {'ratio':>6}"
    )
    for d in args.widths:
        shapes = gpt_shapes(d)
        grads = arrays(shapes, 1)
        size = sum(int(np.prod(s)) for s in shapes.values())
        base, ours = median_ms(
            [
                functional_step(functional, shapes, grads, options),
                facade_step(cls, shapes, grads, options),
            ],
            args.repeats,
        )
        print(
            f"{d:>5} {size / 1e6:>9.2f}M {base:>14.3f} {ours:>10.3f} "
            f"{ours - base:>12.3f} {ours / base:>6.2f}"
        )


if __name__ == "__main__":
    main()

"""What the torch-style facade costs on top of the bare jitted functional step.

Both sides run the same rule (Adam by default) on a 150-leaf GPT-like pytree:

* ``functional``  ``jax.jit(step, donate_argnums=(0, 1))`` around
                  ``fo.adam(...).update`` + ``optax.apply_updates``: the floor;
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

import jax
import numpy as np
from toolkit import (  # this script's folder
    facade_step,
    interleaved_medians,
    make_arrays,
    transform_step,
    transformer,
)

import functorch_optim as fo


def gpt_shapes(d: int) -> dict[str, tuple]:
    """The 150-leaf GPT-like anchor (d = 768) with every width scaled to ``d``: 12
    blocks of 12 leaves + embeddings, final norm and head."""
    return {
        name: tuple(max(1, n * d // 768) for n in shape)
        for name, shape in transformer().items()
    }


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
        params, grads = make_arrays(shapes, 0), make_arrays(shapes, 1)
        size = sum(int(np.prod(s)) for s in shapes.values())
        medians = interleaved_medians(
            {
                "functional": transform_step(functional(**options), params, grads).run,
                "facade": facade_step(cls, params, grads, **options).run,
            },
            args.repeats,
        )
        base, ours = medians["functional"], medians["facade"]
        print(
            f"{d:>5} {size / 1e6:>9.2f}M {base:>14.3f} {ours:>10.3f} "
            f"{ours - base:>12.3f} {ours / base:>6.2f}"
        )


if __name__ == "__main__":
    main()

"""Where a jitted optimizer step's first-call time goes: Python tracing, lowering to
StableHLO, XLA's compile; for ``fo.adam`` or optax's Adam on N leaves of 1024
floats, in this process (run each in a fresh one, alternating, to compare).

    python benchmarks/compile_split.py --leaves 2000 --which fo
    python benchmarks/compile_split.py --leaves 2000 --which optax
"""

from __future__ import annotations

import argparse
import re

import jax.numpy as jnp
import optax
from toolkit import compile_phases, donated_step, many_leaves  # this script's folder

import functorch_optim as fo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=2000)
    parser.add_argument("--which", choices=("fo", "optax"), default="fo")
    args = parser.parse_args()
    params = {k: jnp.ones(s, jnp.float32) for k, s in many_leaves(args.leaves).items()}
    tx = optax.adam(1e-3) if args.which == "optax" else fo.adam(lr=1e-3)
    c = compile_phases(donated_step(tx), params, tx.init(params), params)
    ops = len(re.findall(r"stablehlo\.\w+", c.lowered.as_text())) / args.leaves
    fusions = len(re.findall(r" fusion\(", c.compiled.as_text())) / args.leaves
    print(
        f"{args.which} {args.leaves} leaves: trace {c.trace_s:.2f} s, lower "
        f"{c.lower_s:.2f} s, XLA compile {c.xla_s:.2f} s; "
        f"{ops:.1f} StableHLO ops and {fusions:.2f} fusions per leaf"
    )


if __name__ == "__main__":
    main()

"""Where a jitted optimizer step's first-call time goes: Python tracing, lowering to
StableHLO, XLA's compile; for this library's transform or optax's (the optimizers
and hyperparameters of ``step_time.py``) on N leaves of 1024 floats, in this
process (run each in a fresh one, alternating, to compare).

    python benchmarks/compile_split.py --leaves 2000 --which fo
    python benchmarks/compile_split.py --leaves 2000 --which optax --optimizer adamw

It also counts the compiled program's HLO instructions and fusions per leaf (after
XLA's passes: the program XLA compiles, every leaf's share counted).
"""

from __future__ import annotations

import argparse
import re

import jax.numpy as jnp
from step_time import OPTIMIZERS  # this script's folder
from toolkit import compile_phases, donated_step, many_leaves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=2000)
    parser.add_argument("--which", choices=("fo", "optax"), default="fo")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam")
    args = parser.parse_args()
    params = {k: jnp.ones(s, jnp.float32) for k, s in many_leaves(args.leaves).items()}
    spec = OPTIMIZERS[args.optimizer]
    tx = spec.optax_tx() if args.which == "optax" else spec.fo_functional(**spec.kwargs)
    c = compile_phases(donated_step(tx), params, tx.init(params), params)
    hlo = c.compiled.as_text()
    instructions = sum(" = " in line for line in hlo.splitlines()) / args.leaves
    fusions = len(re.findall(r" fusion\(", hlo)) / args.leaves
    print(
        f"{args.which} {args.optimizer}, {args.leaves} leaves: trace "
        f"{c.trace_s:.2f} s, lower {c.lower_s:.2f} s, XLA compile {c.xla_s:.2f} s; "
        f"{instructions:.1f} HLO instructions and {fusions:.2f} fusions per leaf"
    )


if __name__ == "__main__":
    main()

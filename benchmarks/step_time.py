"""Median time per optimizer step: functorch_optim vs torch (fused, foreach) and optax.

For each anchor pytree (see ``PYTREES``) and optimizer, in one process:

* ``fo jit``    this library's functional transform, one ``jax.jit`` step with the
                params and the state donated (``fo.adam(...)``);
* ``fo packed`` the same with its state packed (``fo.packed(fo.adam(...))``);
* ``fo facade`` the torch-style facade (``fo.Adam(params).step(grads)``), which
                packs the state of small leaves by itself;
* ``torch fused`` / ``torch foreach``  ``torch.optim.*`` with ``fused=True`` /
                ``foreach=True`` (``n/a`` where torch has no such kernel);
* ``optax``     optax's transform under ``jax.jit`` with params and state donated.

The paths are timed in turns, a few steps of each per round, so that a drift in
the machine's speed (2 shared cores) moves them alike. It prints the median ms per
step, the ratios to torch fused and to optax, the
first-step compile time of the JAX paths (the facade's includes creating its
state) and the memory of one compiled step
(XLA's ``memory_analysis``: arguments + outputs - aliased + temporaries, against the
floor ``params + state + one gradient``), and writes a PNG bar chart.

With ``--fresh-compile`` it also measures each JAX path's compile time alone in a
fresh process (``--compile-only``): in one process, a path that compiles after
another reuses its warm caches and looks faster than it is.

Quick run (< 1 minute):
    python benchmarks/step_time.py --pytrees 2000x1024 --optimizers adam --repeats 10
Full table:
    python benchmarks/step_time.py --repeats 30 --png benchmarks/step_time.png
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# XLA CPU parallelizes one kernel over all cores by default; pin torch to the same.
CORES = os.cpu_count() or 1

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

import functorch_optim as fo  # noqa: E402

torch.set_num_threads(CORES)

MS = 1e3
MB = 2**20


# --- the anchor pytrees ------------------------------------------------------------


def one_leaf() -> dict[str, tuple]:
    """One 4096 x 4096 matrix: 16.8M parameters."""
    return {"w": (4096, 4096)}


def transformer() -> dict[str, tuple]:
    """A GPT-like tree: 12 blocks of 12 leaves (d=768) + embeddings, final norm and
    head: 150 leaves, 91.0M parameters."""
    d, vocab, context = 768, 3392, 1024
    shapes = {"wte": (vocab, d), "wpe": (context, d)}
    for layer in range(12):
        for name, shape in {
            "ln1_w": (d,),
            "ln1_b": (d,),
            "qkv_w": (d, 3 * d),
            "qkv_b": (3 * d,),
            "proj_w": (d, d),
            "proj_b": (d,),
            "ln2_w": (d,),
            "ln2_b": (d,),
            "fc1_w": (d, 4 * d),
            "fc1_b": (4 * d,),
            "fc2_w": (4 * d, d),
            "fc2_b": (d,),
        }.items():
            shapes[f"h{layer:02d}_{name}"] = shape
    shapes |= {"lnf_w": (d,), "lnf_b": (d,), "head_w": (d, vocab), "head_b": (vocab,)}
    return shapes


def many_leaves() -> dict[str, tuple]:
    """2000 leaves of 1024 parameters: all per-leaf overhead."""
    return {f"p{i:04d}": (1024,) for i in range(2000)}


PYTREES: dict[str, Callable[[], dict[str, tuple]]] = {
    "1x16.8M": one_leaf,
    "150x91M": transformer,
    "2000x1024": many_leaves,
}


# --- the optimizers: the same hyperparameters in every library ----------------------


@dataclass(frozen=True)
class Spec:
    fo_functional: Callable
    fo_facade: str  # name of the facade class in functorch_optim
    torch_class: Callable
    optax_tx: Callable[[], optax.GradientTransformation]
    kwargs: dict = field(default_factory=dict)
    state_copies: int = 2  # state arrays per parameter (the memory floor)


OPTIMIZERS = {
    "adam": Spec(
        fo.adam, "Adam", torch.optim.Adam, lambda: optax.adam(1e-3), {"lr": 1e-3}
    ),
    "adamw": Spec(
        fo.adamw,
        "AdamW",
        torch.optim.AdamW,
        lambda: optax.adamw(1e-3, weight_decay=1e-2),
        {"lr": 1e-3, "weight_decay": 1e-2},
    ),
    "sgd_momentum": Spec(
        fo.sgd,
        "SGD",
        torch.optim.SGD,
        lambda: optax.sgd(1e-3, momentum=0.9),
        {"lr": 1e-3, "momentum": 0.9},
        state_copies=1,
    ),
    "rmsprop": Spec(
        fo.rmsprop,
        "RMSprop",
        torch.optim.RMSprop,
        lambda: optax.rmsprop(1e-2, decay=0.99, eps=1e-8),
        {"lr": 1e-2},
        state_copies=1,
    ),
}

PATHS = ("fo jit", "fo packed", "fo facade", "torch fused", "torch foreach", "optax")
OURS = ("fo jit", "fo packed", "fo facade")


@dataclass
class Result:
    ms: dict[str, float | None] = field(default_factory=dict)
    compile_s: dict[str, float | None] = field(default_factory=dict)
    fresh_compile_s: dict[str, float | None] = field(default_factory=dict)
    peak_mb: dict[str, float | None] = field(default_factory=dict)
    floor_mb: float = 0.0


# --- timing ---------------------------------------------------------------------


def interleaved_medians(
    runs: dict[str, Callable[[], None]], repeats: int, block: int = 3
) -> dict[str, float]:
    """Median ms per call of each ``run``, over ``repeats`` timed calls each.

    The paths take turns: per round, each runs one untimed call (its arrays back in
    the caches, as when it runs alone) and then ``block`` timed calls. A drift in
    the shared machine's speed thus moves every path alike, and no path is timed
    on caches left cold by another library's step.
    """
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(-(-repeats // block)):
        for label, run in runs.items():
            run()
            for _ in range(block):
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) * MS for label, t in times.items() if t}


def make_arrays(shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


def compiled_peak_mb(compiled) -> float | None:
    """Bytes live during one compiled step: inputs, outputs not aliased to inputs,
    and XLA's temporaries."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    ) / MB


def bench_jax_transform(tx, params_np, grads_np, result, label):
    """A donated ``jax.jit`` step of an optax-style transform."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = jax.tree.map(jnp.asarray, params_np)
    grads = jax.tree.map(jnp.asarray, grads_np)
    state = tx.init(params)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    start = time.perf_counter()
    compiled = jitted.lower(params, state, grads).compile()
    result.compile_s[label] = time.perf_counter() - start
    result.peak_mb[label] = compiled_peak_mb(compiled)
    carry = [params, state]

    def run():
        carry[0], carry[1] = compiled(carry[0], carry[1], grads)
        jax.block_until_ready(carry[0])

    return run


def bench_facade(spec, params_np, grads_np, result):
    facade = getattr(fo, spec.fo_facade, None)
    if facade is None:
        print(f"  note: fo.{spec.fo_facade} does not exist yet; facade skipped")
        return None
    opt = facade({k: jnp.asarray(v) for k, v in params_np.items()}, **spec.kwargs)
    grads = {k: jnp.asarray(v) for k, v in grads_np.items()}

    def run():
        opt.step(grads)
        jax.block_until_ready(opt.param_groups[0]["params"])

    start = time.perf_counter()
    run()  # the first step creates the state, traces and compiles
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    result.compile_s["fo facade"] = first - (time.perf_counter() - start)
    result.peak_mb["fo facade"] = compiled_peak_mb(facade_step_compiled(opt, grads))
    return run


def facade_step_compiled(opt, grads):
    """The facade's compiled step program, for its memory analysis."""
    return opt.lowered_step(grads).compile()


def bench_torch(spec, params_np, grads_np, flag):
    params = [torch.tensor(v, requires_grad=True) for v in params_np.values()]
    for p, g in zip(params, grads_np.values()):
        p.grad = torch.tensor(g)
    try:
        opt = spec.torch_class(params, **spec.kwargs, **{flag: True})
        opt.step()
    except (RuntimeError, TypeError, ValueError) as e:  # no such kernel in torch
        print(f"  note: {spec.torch_class.__name__}({flag}=True): {e}".splitlines()[0])
        return None

    def run():
        with torch.no_grad():
            opt.step()

    return run


def bench(tree: str, name: str, repeats: int, paths: tuple[str, ...]) -> Result:
    spec = OPTIMIZERS[name]
    shapes = PYTREES[tree]()
    params_np, grads_np = make_arrays(shapes, 0), make_arrays(shapes, 1)
    for g in grads_np.values():
        g *= 1e-2
    result = Result()
    n_bytes = sum(v.nbytes for v in params_np.values())
    result.floor_mb = n_bytes * (2 + spec.state_copies) / MB  # params+state+grad
    setups = {
        "fo jit": lambda: bench_jax_transform(
            spec.fo_functional(**spec.kwargs), params_np, grads_np, result, "fo jit"
        ),
        "fo packed": lambda: bench_jax_transform(
            fo.packed(spec.fo_functional(**spec.kwargs)),
            params_np,
            grads_np,
            result,
            "fo packed",
        ),
        "fo facade": lambda: bench_facade(spec, params_np, grads_np, result),
        "torch fused": lambda: bench_torch(spec, params_np, grads_np, "fused"),
        "torch foreach": lambda: bench_torch(spec, params_np, grads_np, "foreach"),
        "optax": lambda: bench_jax_transform(
            spec.optax_tx(), params_np, grads_np, result, "optax"
        ),
    }
    runs = {label: setups[label]() for label in paths}
    result.ms = {label: None for label in runs}
    result.ms |= interleaved_medians(
        {label: run for label, run in runs.items() if run is not None}, repeats
    )
    return result


JAX_PATHS = ("fo jit", "fo packed", "fo facade", "optax")
COMPILE_PREFIX = "compile_s="


def fresh_compile_s(tree: str, name: str, label: str) -> float | None:
    """``label``'s compile time, measured alone in a new process."""
    run = subprocess.run(
        [sys.executable, __file__, "--pytrees", tree, "--optimizers", name]
        + ["--compile-only", label],
        capture_output=True,
        text=True,
    )
    lines = [x for x in run.stdout.splitlines() if x.startswith(COMPILE_PREFIX)]
    if run.returncode or not lines:
        print(f"  note: {label} failed in a fresh process: {run.stderr[-300:]}")
        return None
    return float(lines[0].removeprefix(COMPILE_PREFIX))


# --- report -------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def table(results: dict[tuple[str, str], Result]) -> str:
    ratios = [(ours, base) for base in ("torch fused", "optax") for ours in OURS]
    head = (
        "| pytree | optimizer | "
        + " | ".join(f"{p} ms" for p in PATHS)
        + "".join(f" | {ours} / {base.split()[-1]}" for ours, base in ratios)
        + " | compile s ("
        + " / ".join(OURS)
        + " / optax)"
        + " | fresh-process compile s ("
        + " / ".join(OURS)
        + " / optax)"
        + " | step MB ("
        + " / ".join(OURS)
        + " / optax; floor) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (tree, name), r in results.items():
        ms = r.ms
        lines.append(
            f"| {tree} | {name} | "
            + " | ".join(fmt(ms.get(p)) for p in PATHS)
            + "".join(f" | {ratio(ms.get(a), ms.get(b))}" for a, b in ratios)
            + " | "
            + " / ".join(fmt(r.compile_s.get(p), ".2f") for p in (*OURS, "optax"))
            + " | "
            + " / ".join(fmt(r.fresh_compile_s.get(p), ".2f") for p in (*OURS, "optax"))
            + " | "
            + " / ".join(fmt(r.peak_mb.get(p), ".0f") for p in (*OURS, "optax"))
            + f"; {r.floor_mb:.0f} |"
        )
    return "\n".join(lines)


def plot(results: dict[tuple[str, str], Result], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    width = 0.8 / len(PATHS)
    for i, p in enumerate(PATHS):
        values = [results[k].ms.get(p) or 0.0 for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, values, width, label=p)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{t}\n{n}" for t, n in keys], fontsize=8)
    ax.set_ylabel("median ms per step")
    ax.set_title(f"optimizer step time, {CORES} CPU cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pytrees", nargs="+", default=list(PYTREES), choices=list(PYTREES)
    )
    parser.add_argument(
        "--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS)
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="timed steps per measurement (median taken)",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=list(PATHS),
        choices=PATHS,
        help="the paths to time (each holds its own params and state meanwhile)",
    )
    parser.add_argument("--png", default="benchmarks/step_time.png")
    parser.add_argument(
        "--fresh-compile",
        action="store_true",
        help="also time each JAX path's compile alone, in a new process",
    )
    parser.add_argument(
        "--compile-only",
        choices=JAX_PATHS,
        help="(used by --fresh-compile) set up this one path, print its compile time",
    )
    args = parser.parse_args(argv)
    if args.compile_only:
        (tree,), (name,) = args.pytrees, args.optimizers
        result = bench(tree, name, 0, (args.compile_only,))
        print(f"{COMPILE_PREFIX}{result.compile_s[args.compile_only]}")
        return

    load = os.getloadavg()[0]
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), optax "
        f"{optax.__version__}; {CORES} cores; load average {load:.2f}"
    )
    results = {}
    for tree in args.pytrees:
        for name in args.optimizers:
            print(f"{tree} / {name} ...", flush=True)
            results[tree, name] = bench(tree, name, args.repeats, tuple(args.paths))
            if args.fresh_compile:
                for label in JAX_PATHS:
                    if label in args.paths:
                        results[tree, name].fresh_compile_s[label] = fresh_compile_s(
                            tree, name, label
                        )
            print(table({(tree, name): results[tree, name]}), flush=True)
    print(table(results))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()

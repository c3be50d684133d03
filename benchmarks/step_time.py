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
fresh process (``--compile-only``), the median of ``--fresh-repeats`` processes
taken in turns: in one process, a path that compiles after another reuses its warm
caches and looks faster than it is, and a single fresh process varies by 20-30%.

With ``--scalar-cost`` it instead times what computing the per-step scalars to
double accuracy without x64 (:mod:`functorch_optim.doubled`, this script runs with
x64 off as most users do) costs an Adam step: ``fo jit`` as it is against the same
step with its bias corrections in plain float32 (the arithmetic before the pairs),
taken in turns, with both compile times.

With ``--schedule-cost`` it times what an lr schedule's value to double accuracy
without x64 costs the compile of an Adam step on a small tree (``--schedule-leaves``
leaves of 1024): for each schedule, ``fo.adam(lr=schedule)`` with the schedule's
value as today's runner takes it (its call: the float32 of its pair), as a runner
taking its ``exact_value`` would (the pair itself), and as before the pairs (its
float32 closed form), and a constant lr; each compile in ``--fresh-repeats`` fresh
processes, taken in turns (median), with the optimized program's instruction
count.

Quick run (< 1 minute):
    python benchmarks/step_time.py --pytrees 2000x1024 --optimizers adam --repeats 10
Full table:
    python benchmarks/step_time.py --repeats 30 --png benchmarks/step_time.png
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import numpy as np
import optax
import torch
from toolkit import (  # this script's folder
    CORES,
    MB,
    PYTREES,
    facade_step,
    fresh_process_compile_s,
    interleaved_medians,
    make_arrays,
    report_compile_s,
    step_mb,
    torch_step,
    transform_step,
)

import functorch_optim as fo

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


def bench(tree: str, name: str, repeats: int, paths: tuple[str, ...]) -> Result:
    spec = OPTIMIZERS[name]
    shapes = PYTREES[tree]()
    params, grads = make_arrays(shapes, 0), make_arrays(shapes, 1)
    for g in grads.values():
        g *= 1e-2
    result = Result()
    n_bytes = sum(v.nbytes for v in params.values())
    result.floor_mb = n_bytes * (2 + spec.state_copies) / MB  # params+state+grad
    builders = {
        "fo jit": lambda: transform_step(
            spec.fo_functional(**spec.kwargs), params, grads
        ),
        "fo packed": lambda: transform_step(
            fo.packed(spec.fo_functional(**spec.kwargs)), params, grads
        ),
        "fo facade": lambda: facade_step(
            getattr(fo, spec.fo_facade), params, grads, **spec.kwargs
        ),
        "torch fused": lambda: torch_step(
            spec.torch_class, params, grads, "fused", **spec.kwargs
        ),
        "torch foreach": lambda: torch_step(
            spec.torch_class, params, grads, "foreach", **spec.kwargs
        ),
        "optax": lambda: transform_step(spec.optax_tx(), params, grads),
    }
    steps = {label: builders[label]() for label in paths}
    for label in JAX_PATHS:
        if label in steps:
            result.compile_s[label] = steps[label].compile_s
            result.peak_mb[label] = step_mb(steps[label].program())
    result.ms = {label: None for label in steps}
    result.ms |= interleaved_medians(
        {label: step.run for label, step in steps.items() if step is not None},
        repeats,
    )
    return result


JAX_PATHS = ("fo jit", "fo packed", "fo facade", "optax")


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


def fresh_compiles(tree: str, name: str, paths: list[str], args) -> dict:
    """Each path's compile time alone in a fresh process, the median of
    ``--fresh-repeats`` runs taken in turns (one of each path per round), so a
    drift in the machine's speed moves the paths alike."""
    runs: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(args.fresh_repeats):
        for path in paths:
            seconds = fresh_process_compile_s(
                __file__,
                ["--pytrees", tree, "--optimizers", name, "--compile-only", path],
            )
            if seconds is not None:
                runs[path].append(seconds)
    return {p: float(np.median(r)) if r else None for p, r in runs.items()}


def scalar_cost(tree: str, repeats: int) -> None:
    """An Adam step with x64 off: double-accurate scalars (float32 pairs) against
    float32 ones (``beta ** step`` as a float32 power, as before the pairs)."""
    from functorch_optim.algorithms import adam

    assert not jax.config.jax_enable_x64, "the pairs replace float64 only with x64 off"
    shapes = PYTREES[tree]()
    params, grads = make_arrays(shapes, 0), make_arrays(shapes, 1)
    pairs = transform_step(fo.adam(1e-3), params, grads)
    double_accurate = adam.step_powers
    adam.step_powers = lambda *terms: tuple(base ** (n * 1.0) for base, n in terms)
    try:
        float32 = transform_step(fo.adam(1e-3), params, grads)
    finally:
        adam.step_powers = double_accurate
    ms = interleaved_medians({"pairs": pairs.run, "float32": float32.run}, repeats)
    print(
        f"{tree} / adam, x64 off: {ms['pairs']:.3f} ms per step with the scalars in "
        f"float32 pairs, {ms['float32']:.3f} ms in float32 "
        f"({ms['pairs'] - ms['float32']:+.3f} ms); compile {pairs.compile_s:.2f} s "
        f"against {float32.compile_s:.2f} s"
    )


# --- the compile cost of a schedule's pairs ----------------------------------------

SCHEDULES = {
    "cosine": lambda: fo.cosine_annealing_lr(1e-3, T_max=100, eta_min=1e-5),
    "warm_restarts": lambda: fo.cosine_annealing_warm_restarts(1e-3, 10, T_mult=2),
    "one_cycle": lambda: fo.one_cycle_lr(1e-3, total_steps=1000),
    "exponential": lambda: fo.exponential_lr(1e-3, gamma=0.999),
    "linear": lambda: fo.linear_lr(1e-3, 0.01, total_iters=100),
}
# how the step takes the schedule: its call (the float32 of the pair, as today's
# runner), its exact_value (the pair, as a runner with the hook), its float32
# closed form (before the pairs); "constant": a Python float lr, no schedule
SCHEDULE_FORMS = ("call", "exact_value", "float32")


def schedule_lr(name: str, form: str):
    """The lr option of ``form`` for schedule ``name``."""
    import dataclasses

    if name == "constant":
        return 1e-3
    schedule = SCHEDULES[name]()
    if form == "float32":
        return dataclasses.replace(schedule, pair_fn=None)
    if form == "exact_value":
        return lambda count: schedule.exact_value(count)
    return schedule


def schedule_compile(name: str, form: str, leaves: int) -> tuple[float, int]:
    """The compile time (trace, lower, XLA) of a donated ``fo.adam(lr=...)`` step
    on ``leaves`` leaves of 1024, and its optimized HLO's instruction count."""
    from toolkit import compile_phases, donated_step

    assert not jax.config.jax_enable_x64, "the pairs replace float64 only with x64 off"
    shapes = {f"w{i}": (1024,) for i in range(leaves)}
    params = jax.tree.map(jax.numpy.asarray, make_arrays(shapes, 0))
    grads = jax.tree.map(jax.numpy.asarray, make_arrays(shapes, 1))
    tx = fo.adam(lr=schedule_lr(name, form))
    compiled = compile_phases(donated_step(tx), params, tx.init(params), grads)
    text = compiled.compiled.as_text() or ""
    instructions = sum(" = " in line for line in text.splitlines())
    return compiled.total_s, instructions


def schedule_cost(args) -> None:
    """Each schedule's step compile in each form, in fresh processes in turns."""
    runs = [("constant", "")] + [(n, f) for n in SCHEDULES for f in SCHEDULE_FORMS]
    times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    instructions: dict[tuple[str, str], int] = {}
    for _ in range(args.fresh_repeats):
        for name, form in runs:
            run = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--schedule-compile-only",
                    name,
                    form or "call",
                    "--schedule-leaves",
                    str(args.schedule_leaves),
                ],
                capture_output=True,
                text=True,
            )
            if run.returncode:
                print(f"  note: {name} {form} failed:", run.stderr[-300:])
                continue
            seconds, count = run.stdout.strip().splitlines()[-1].split()
            times[(name, form)].append(float(seconds))
            instructions[(name, form)] = int(count)
    print(
        f"fo.adam step on {args.schedule_leaves} leaves of 1024, x64 off: compile s "
        f"(median of {args.fresh_repeats} fresh processes) / optimized HLO "
        "instructions"
    )

    def cell(run: tuple[str, str]) -> str:
        if not times[run]:
            return f"{'n/a':>20}"
        return f"{np.median(times[run]):>12.3f} s {instructions[run]:>5}"

    print(f"{'lr':14} " + " ".join(f"{form:>20}" for form in SCHEDULE_FORMS))
    print(f"{'constant':14} " + cell(("constant", "")))
    for name in SCHEDULES:
        print(f"{name:14} " + " ".join(cell((name, f)) for f in SCHEDULE_FORMS))


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
        "--fresh-repeats",
        type=int,
        default=3,
        help="fresh processes per path with --fresh-compile (median taken)",
    )
    parser.add_argument(
        "--scalar-cost",
        action="store_true",
        help="time Adam's step with double-accurate scalars against float32 ones",
    )
    parser.add_argument(
        "--schedule-cost",
        action="store_true",
        help="time the compile of an Adam step with lr schedules' pairs (x64 off)",
    )
    parser.add_argument(
        "--schedule-leaves",
        type=int,
        default=20,
        help="leaves of 1024 in --schedule-cost's tree",
    )
    parser.add_argument(
        "--schedule-compile-only",
        nargs=2,
        metavar=("SCHEDULE", "FORM"),
        help="(used by --schedule-cost) print one step's compile s and HLO size",
    )
    parser.add_argument(
        "--compile-only",
        choices=JAX_PATHS,
        help="(used by --fresh-compile) set up this one path, print its compile time",
    )
    args = parser.parse_args(argv)
    if args.schedule_compile_only:
        seconds, count = schedule_compile(
            *args.schedule_compile_only, args.schedule_leaves
        )
        print(seconds, count)
        return
    if args.schedule_cost:
        schedule_cost(args)
        return
    if args.scalar_cost:
        for tree in args.pytrees:
            scalar_cost(tree, args.repeats)
        return
    if args.compile_only:
        (tree,), (name,) = args.pytrees, args.optimizers
        result = bench(tree, name, 0, (args.compile_only,))
        report_compile_s(result.compile_s[args.compile_only])
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
                results[tree, name].fresh_compile_s = fresh_compiles(
                    tree, name, [p for p in JAX_PATHS if p in args.paths], args
                )
            print(table({(tree, name): results[tree, name]}), flush=True)
    print(table(results))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()

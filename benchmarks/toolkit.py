"""What the benchmark scripts share: the anchor pytrees, one interleaved timer, the
step builders of each path (a donated ``jax.jit`` of an optax-style transform, the
facade, torch's fused / foreach ``step``) and the compile-time and step-memory
measurements, so that every script times and compiles the same way.

Importing it pins torch to as many threads as XLA CPU uses (all cores).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

MS = 1e3
MB = 2**20

# XLA CPU parallelizes one kernel over all cores by default; pin torch to the same.
CORES = os.cpu_count() or 1
torch.set_num_threads(CORES)


# --- the anchor pytrees: leaf name -> shape ------------------------------------------


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


def many_leaves(count: int = 2000) -> dict[str, tuple]:
    """``count`` leaves of 1024 parameters: all per-leaf overhead."""
    return {f"p{i:04d}": (1024,) for i in range(count)}


PYTREES: dict[str, Callable[[], dict[str, tuple]]] = {
    "1x16.8M": one_leaf,
    "150x91M": transformer,
    "2000x1024": many_leaves,
}


def make_arrays(shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    """Standard normal float32 arrays of ``shapes``: host arrays, so that every
    library builds its own device copies."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


# --- timing ------------------------------------------------------------------------


def interleaved_medians(
    runs: dict[str, Callable[[], object]], repeats: int, block: int = 3
) -> dict[str, float]:
    """Median ms per call of each ``run`` (which blocks until its result is ready),
    over ``repeats`` timed calls each.

    The paths take turns: per round, each runs one untimed call (its arrays back in
    the caches, as when it runs alone) and then up to ``block`` timed calls. A drift
    in the shared machine's speed thus moves every path alike, and no path is timed
    on caches left cold by another library's step.
    """
    times: dict[str, list[float]] = {label: [] for label in runs}
    for done in range(0, repeats, block):
        for label, run in runs.items():
            run()
            for _ in range(min(block, repeats - done)):
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) * MS for label, t in times.items() if t}


# --- compile time and step memory --------------------------------------------------


@dataclass(frozen=True)
class Compiled:
    """An ahead-of-time compile, split into its phases (seconds)."""

    lowered: jax.stages.Lowered
    compiled: jax.stages.Compiled
    trace_s: float
    lower_s: float
    xla_s: float

    @property
    def total_s(self) -> float:
        return self.trace_s + self.lower_s + self.xla_s


def compile_phases(jitted, *args) -> Compiled:
    """Compile ``jitted`` for ``args``, timing Python tracing, lowering to StableHLO
    and XLA's compile apart."""
    start = time.perf_counter()
    traced = jitted.trace(*args)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return Compiled(
        lowered,
        compiled,
        traced_at - start,
        lowered_at - traced_at,
        time.perf_counter() - lowered_at,
    )


def first_call_s(run: Callable[[], object]) -> tuple[float, object]:
    """The seconds the first call of ``run`` takes beyond its second (its tracing
    and compiling, for a path that compiles at its first call), and what the second
    call returned."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = run()
    return first - (time.perf_counter() - start), result


def step_mb(compiled: jax.stages.Compiled) -> float | None:
    """MB live during one compiled step: inputs, outputs not aliased to inputs, and
    XLA's temporaries (None where the backend has no memory analysis)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    ) / MB


COMPILE_PREFIX = "compile_s="


def report_compile_s(seconds: float) -> None:
    """Print a compile time the way :func:`fresh_process_compile_s` reads it."""
    print(f"{COMPILE_PREFIX}{seconds}")


def fresh_process_compile_s(script: str, args: list[str]) -> float | None:
    """The compile time ``python script *args`` reports (``report_compile_s``): in
    one process, a path that compiles after another reuses its warm caches and looks
    faster than it is."""
    run = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True
    )
    lines = [x for x in run.stdout.splitlines() if x.startswith(COMPILE_PREFIX)]
    if run.returncode or not lines:
        print(f"  note: {' '.join(args)} failed in a fresh process:", run.stderr[-300:])
        return None
    return float(lines[0].removeprefix(COMPILE_PREFIX))


# --- the step of each path ----------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One path's optimizer step, compiled and ready to time."""

    run: Callable[[], None]  # one step, blocking until the new params are ready
    compile_s: float
    program: Callable[[], jax.stages.Compiled] | None = None  # the compiled step


def donated_step(tx: optax.GradientTransformation):
    """``jax.jit`` of ``(params, state, grads) -> (params, state)`` for an
    optax-style transform, params and state donated."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def transform_step(tx: optax.GradientTransformation, params, grads) -> Step:
    """The donated jitted step of ``tx`` (``fo.adam(...)``, ``fo.packed(...)``,
    optax's), compiled ahead of time; ``params`` and ``grads`` are host arrays."""
    params = jax.tree.map(jnp.asarray, params)
    grads = jax.tree.map(jnp.asarray, grads)
    state = tx.init(params)
    compiled = compile_phases(donated_step(tx), params, state, grads)
    carry = [params, state]

    def run():
        carry[0], carry[1] = compiled.compiled(carry[0], carry[1], grads)
        jax.block_until_ready(carry[0])

    return Step(run, compiled.total_s, lambda: compiled.compiled)


def facade_step(cls, params, grads, **options) -> Step:
    """``cls(params, **options).step(grads)`` of the torch-style facade; its compile
    time includes creating the state at the first step."""
    opt = cls({k: jnp.asarray(v) for k, v in params.items()}, **options)
    grads = {k: jnp.asarray(v) for k, v in grads.items()}

    def run():
        opt.step(grads)
        jax.block_until_ready(opt.param_groups[0]["params"])

    compile_s, _ = first_call_s(run)
    return Step(run, compile_s, lambda: opt.lowered_step(grads).compile())


def torch_step(cls, params, grads, flag: str, **options) -> Step | None:
    """``torch.optim`` ``cls(..., **{flag: True}).step()`` (``flag``: ``"fused"`` or
    ``"foreach"``) on fixed gradients; None where torch has no such kernel."""
    tensors = [torch.tensor(v, requires_grad=True) for v in params.values()]
    for p, g in zip(tensors, grads.values()):
        p.grad = torch.tensor(g)
    try:
        opt = cls(tensors, **options, **{flag: True})
        opt.step()
    except (RuntimeError, TypeError, ValueError) as e:  # no such kernel in torch
        print(f"  note: {cls.__name__}({flag}=True): {e}".splitlines()[0])
        return None

    def run():
        with torch.no_grad():
            opt.step()

    return Step(run, 0.0)  # eager: no compile

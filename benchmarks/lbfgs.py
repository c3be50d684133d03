"""L-BFGS wall time: functorch_optim against torch.optim.LBFGS, optax and jaxopt.

Logistic regression (``n = 2 d`` samples, noisy labels, L2 1e-6, float64),
strong-Wolfe line search, history 10, one ``step()`` of up to 50 iterations from the
same start, for d = 10 / 1000 / 5000. Compile time (what the first call takes
beyond the second) is reported apart; run time is the median of the repeats, the
libraries taking turns. functorch_optim's iterates are
checked against torch's.

    python benchmarks/lbfgs.py [--sizes 10 1000 5000] [--repeats 5]

jaxopt is optional (``pip install jaxopt``); optax's and jaxopt's L-BFGS are their own
algorithms (their line searches differ), so compare their time per iteration.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from toolkit import MS, first_call_s, interleaved_medians  # noqa: E402 (this folder)

import functorch_optim as fo  # noqa: E402

try:
    import jaxopt  # noqa: E402
except ImportError:
    jaxopt = None

ITERATIONS, HISTORY, L2 = 50, 10, 1e-6
# Tolerances that never stop early, so every library runs its 50 iterations
# unless the loss is exactly stationary.
TOLERANCE = 1e-300


def problem(d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * d, d)) / np.sqrt(d)
    y = np.sign(x @ rng.standard_normal(d) + 2.0 * rng.standard_normal(2 * d))
    return x, y


def loss_of(lib, x, y):
    def loss(w):
        margins = y * (x @ w)
        return lib.mean(lib.logaddexp(0 * margins, -margins)) + 0.5 * L2 * lib.sum(
            w * w
        )

    return loss


def bench_torch(x, y):
    loss = loss_of(torch, torch.tensor(x), torch.tensor(y))

    def run():
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w],
            max_iter=ITERATIONS,
            history_size=HISTORY,
            line_search_fn="strong_wolfe",
            tolerance_grad=TOLERANCE,
            tolerance_change=TOLERANCE,
        )

        def closure():
            opt.zero_grad()
            value = loss(w)
            value.backward()
            return value

        opt.step(closure)
        state = opt.state[w]
        return w.detach().numpy(), state["n_iter"], state["func_evals"]

    return run


def _jax_data(x, y):
    # passed to the jitted solvers as arguments: closed over, 400 MB of data would
    # become an XLA constant and dominate compile time
    return jnp.asarray(x), jnp.asarray(y), jnp.zeros(x.shape[1])


def _counted_run(solve, x, y):
    """One solve from the start, for a jitted ``solve(w, x, y)`` that returns
    ``(w, iterations, evaluations)``."""
    x, y, w0 = _jax_data(x, y)

    def run():
        w, n_iter, evals = jax.block_until_ready(solve(w0, x, y))
        return np.asarray(w), int(n_iter), int(evals)

    return run


def bench_ours(x, y):
    tx = fo.lbfgs(
        max_iter=ITERATIONS,
        history_size=HISTORY,
        line_search_fn="strong_wolfe",
        tolerance_grad=TOLERANCE,
        tolerance_change=TOLERANCE,
    )

    @jax.jit
    def solve(w, x, y):
        updates, state = tx.update(None, tx.init(w), w, value_fn=loss_of(jnp, x, y))
        return fo.apply_updates(w, updates), state["n_iter"], state["func_evals"]

    return _counted_run(solve, x, y)


def bench_optax(x, y):
    opt = optax.lbfgs(memory_size=HISTORY)

    @jax.jit
    def solve(w, x, y):
        loss = loss_of(jnp, x, y)
        value_and_grad = optax.value_and_grad_from_state(loss)

        def iteration(_, carry):
            w, state = carry
            value, grad = value_and_grad(w, state=state)
            updates, state = opt.update(
                grad, state, w, value=value, grad=grad, value_fn=loss
            )
            return optax.apply_updates(w, updates), state

        w, _ = jax.lax.fori_loop(0, ITERATIONS, iteration, (w, opt.init(w)))
        return w

    x, y, w0 = _jax_data(x, y)

    def run():
        w = jax.block_until_ready(solve(w0, x, y))
        return np.asarray(w), ITERATIONS, None  # optax counts no evaluations

    return run


def bench_jaxopt(x, y):
    @jax.jit
    def solve(w, x, y):
        solver = jaxopt.LBFGS(
            fun=loss_of(jnp, x, y),
            maxiter=ITERATIONS,
            history_size=HISTORY,
            linesearch="zoom",
            tol=TOLERANCE,
        )
        w, state = solver.run(w)
        return w, state.iter_num, state.num_fun_eval

    return _counted_run(solve, x, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    contenders = [
        ("torch", bench_torch),
        ("functorch_optim", bench_ours),
        ("optax", bench_optax),
    ]
    if jaxopt is not None:
        contenders.append(("jaxopt", bench_jaxopt))
    print(
        f"L-BFGS, logistic regression n = 2d, strong Wolfe, history {HISTORY}, "
        f"{ITERATIONS} iterations, float64; median of {args.repeats}"
    )
    header = (
        f"{'d':>5} {'library':>16} {'compile s':>9} {'step ms':>9} "
        f"{'iters':>5} {'evals':>5} {'ms/iter':>8} {'vs torch':>8}"
    )
    print(header)
    print("-" * len(header))
    for d in args.sizes:
        x, y = problem(d)
        runs = {name: bench(x, y) for name, bench in contenders}
        firsts = {name: first_call_s(run) for name, run in runs.items()}
        medians = interleaved_medians(runs, args.repeats)
        # (compile s, median s, w, iterations, evaluations); torch compiles nothing
        results = {
            name: (0.0 if name == "torch" else first, medians[name] / MS, *result)
            for name, (first, result) in firsts.items()
        }
        torch_ms_per_iter = results["torch"][1] / results["torch"][3]
        for name, (compile_s, median, _, n_iter, evals) in results.items():
            per_iter = median / max(n_iter, 1)
            evals = "n/a" if evals is None else evals
            print(
                f"{d:>5} {name:>16} {compile_s:>9.2f} {median * 1e3:>9.1f} "
                f"{n_iter:>5} {evals:>5} {per_iter * 1e3:>8.3f} "
                f"{torch_ms_per_iter / per_iter:>7.1f}x"
            )
        ours, theirs = results["functorch_optim"], results["torch"]
        print(
            f"{'':>5} functorch_optim vs torch: iterations {ours[3]} / {theirs[3]}, "
            f"evaluations {ours[4]} / {theirs[4]}, largest |w - w_torch| = "
            f"{np.max(np.abs(ours[2] - theirs[2])):.1e}"
        )


if __name__ == "__main__":
    main()

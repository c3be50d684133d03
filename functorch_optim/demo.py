"""Train a small flax MLP on scikit-learn's handwritten digits with this library.

Run ``python -m functorch_optim.demo --help``. The digits (1,797 8x8 images) ship
inside scikit-learn, so nothing is downloaded; scikit-learn and matplotlib come with
the ``demo`` extra. Every optimizer trains the same model from the same initial
weights on the same mini-batches, through ``flax.nnx.Optimizer``. When torch is
installed, torch's optimizer of the same name trains an identical torch model
alongside, twice:

- in float64, compared step by step: the largest difference of any parameter, and
  of the loss, over all steps;
- in float32, as one trains: the two loss curves side by side (and in the plot).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import functorch_optim as fo
from functorch_optim.optim.classes import registered

DEMO_EXTRA = 'pip install "functorch_optim[demo]"'
FLOAT32_DRIFT = (
    "float32 curves drift apart slowly because XLA and torch round matmuls and sums "
    "differently (~1e-7 a step) and training amplifies it; float64 shows the "
    "optimizers agree."
)

# Options tuned for the demo's small MLP, by functional name; every other algorithm
# of the registry (functorch_optim/optim/classes.py) trains with torch's defaults.
# tests/test_registry_lists.py fails on a name here that is no algorithm's.
TUNED: dict[str, dict] = {
    "sgd": dict(lr=0.1, momentum=0.9, nesterov=True),
    "adam": dict(lr=3e-3),
    "adamw": dict(lr=3e-3, weight_decay=0.05),
    "nadam": dict(lr=3e-3),
    "radam": dict(lr=3e-3),
    "adamax": dict(lr=3e-3),
    "rmsprop": dict(lr=1e-3),
    "adagrad": dict(lr=0.05),
    "adadelta": dict(lr=1.0),
    "asgd": dict(lr=0.05),
    "adafactor": dict(lr=1e-2),
}


def trains_an_mlp(algorithm) -> bool:
    """Whether ``algorithm`` takes the demo's model: dense gradients (not SparseAdam,
    whose rule reads sparse ones) of matrices and bias vectors (not Muon, which
    takes matrices only: its ``init`` refuses a vector)."""
    if algorithm.sparse_grads == "native":
        return False
    leaves = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in ((2, 2), (2,))]
    try:
        jax.eval_shape(algorithm.functional().init, leaves)
    except ValueError:
        return False
    return True


# name -> (options, torch.optim class name), for every registered algorithm the
# demo's model can train: a new algorithm shows up here by itself.
OPTIMIZERS: dict[str, tuple[dict, str]] = {
    cls.algorithm.functional.__name__: (
        TUNED.get(cls.algorithm.functional.__name__, {}),
        cls.algorithm.name,
    )
    for cls in registered()
    if trains_an_mlp(cls.algorithm)
}
AVAILABLE = list(OPTIMIZERS)
LAYERS = ("hidden", "out")


class MissingExtra(ImportError):
    """A package of the ``demo`` extra is not installed."""


def load_digits(seed: int = 0):
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise MissingExtra(f"the demo needs scikit-learn ({e})") from e

    data = sklearn_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.8 * len(x))
    train, test = order[:split], order[split:]
    return (x[train], y[train]), (x[test], y[test])


def batches(n: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """The same mini-batch indices for every optimizer (and for torch)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < steps:
        perm = rng.permutation(n)
        out += [
            perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)
        ]
    return out[:steps]


def make_model(hidden: int, seed: int, dtype, weights: dict | None = None):
    """The MLP 64-hidden-10 as a flax ``nnx.Module`` of ``dtype``; ``weights`` (a
    pure dict, as ``nnx.to_pure_dict`` gives) replace its initial ones."""
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
            self.hidden = nnx.Linear(64, hidden, **kw)
            self.out = nnx.Linear(hidden, 10, **kw)

        def __call__(self, x):
            return self.out(jax.nn.relu(self.hidden(x)))

    model = MLP(nnx.Rngs(seed))
    if weights is not None:
        state = nnx.state(model, nnx.Param)
        nnx.replace_by_pure_dict(
            state, jax.tree.map(lambda w: jnp.asarray(w, dtype), weights)
        )
        nnx.update(model, state)
    return model


def weights_of(model) -> dict:
    from flax import nnx

    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def flat(weights: dict):
    """All parameters as one vector, in the JAX layout (kernel is in x out)."""
    return jnp.concatenate(
        [jnp.ravel(weights[k][p]) for k in LAYERS for p in ("kernel", "bias")]
    )


def loss_fn(model, x, y):
    logits = model(x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def train_jax(name, data, order, model, record_params: bool):
    """Train ``model``; returns its losses, its test accuracy and (with
    ``record_params``) the flat params after every step."""
    from flax import nnx

    (x, y), (x_test, y_test) = data
    options, _ = OPTIMIZERS[name]
    optimizer = nnx.Optimizer(model, getattr(fo, name)(**options), wrt=nnx.Param)
    # One jitted pure step over the split (model, optimizer) state: nnx's
    # functional API, so a step costs one dispatch.
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return (
            loss,
            flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
            nnx.split((model, optimizer))[1],
        )

    dtype = model.out.kernel.dtype
    x, x_test = jnp.asarray(x, dtype), jnp.asarray(x_test, dtype)
    losses, params = [], []
    for idx in order:
        loss, step_params, state = train_step(state, x[idx], y[idx])
        losses.append(float(loss))
        if record_params:
            params.append(np.asarray(step_params))
    model, _ = nnx.merge(graphdef, state)
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
    return np.array(losses), accuracy, np.array(params)


def train_torch(name, data, order, weights: dict, dtype: str, record_params: bool):
    """The same model, weights and batches in torch; returns what
    :func:`train_jax` returns."""
    import torch

    (x, y), (x_test, y_test) = data
    options, torch_name = OPTIMIZERS[name]
    torch_dtype = getattr(torch, dtype)
    layers = []
    for key in LAYERS:
        kernel = torch.tensor(weights[key]["kernel"].T, dtype=torch_dtype)
        n_out, n_in = kernel.shape
        layer = torch.nn.Linear(n_in, n_out, dtype=torch_dtype)
        with torch.no_grad():
            layer.weight.copy_(kernel)
            layer.bias.copy_(torch.tensor(weights[key]["bias"], dtype=torch_dtype))
        layers.append(layer)
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1])
    optimizer = getattr(torch.optim, torch_name)(model.parameters(), **options)
    x = torch.tensor(x, dtype=torch_dtype)
    y = torch.tensor(y).long()
    losses, params = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    try:
        for idx in order:
            idx = torch.tensor(idx)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if record_params:
                params.append(
                    np.concatenate(
                        [
                            t.detach().numpy().T.ravel()
                            for layer in layers
                            for t in (layer.weight, layer.bias)
                        ]
                    )
                )
        with torch.no_grad():
            logits = model(torch.tensor(x_test, dtype=torch_dtype)).numpy()
    finally:
        torch.set_num_threads(threads)
    accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
    return np.array(losses), accuracy, np.array(params)


def plot(curves: dict[str, np.ndarray], path: str) -> None:
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtra(f"the plot needs matplotlib ({e})") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, losses in curves.items():
        ax.plot(losses, label=label, linestyle="--" if "torch" in label else "-")
    ax.set(
        xlabel="step",
        ylabel="training loss (float32)",
        yscale="log",
        title="functorch_optim and torch.optim on scikit-learn digits",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def torch_available(skip: bool) -> bool:
    if skip:
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="functorch-optim-demo",
        description="Train a flax MLP on scikit-learn's digits with functorch_optim "
        "optimizers; with torch installed, compare each with torch.optim's, step by "
        "step in float64 and as loss curves in float32.",
    )
    parser.add_argument(
        "--optimizer",
        nargs="+",
        choices=AVAILABLE,
        default=[
            n for n in ("sgd", "adam", "adamw", "rmsprop", "nadam") if n in AVAILABLE
        ],
        help="optimizers to train with (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64, help="hidden units")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot", default="demo_loss.png", help="where to save the loss curves (PNG)"
    )
    parser.add_argument(
        "--no-torch", action="store_true", help="skip the comparison with torch.optim"
    )
    args = parser.parse_args(argv)

    try:
        train, test = load_digits(args.seed)
    except MissingExtra as e:
        print(f"{e}: {DEMO_EXTRA}", file=sys.stderr)
        return 1
    order = batches(len(train[0]), args.batch_size, args.steps, args.seed)
    with_torch = torch_available(args.no_torch)
    print(
        f"digits: {len(train[0])} train / {len(test[0])} test images, "
        f"MLP 64-{args.hidden}-10, {args.steps} steps of {args.batch_size}, "
        "the same initial weights and batches for every run"
    )
    if args.no_torch:
        print("--no-torch: no comparison with torch.optim")
    elif not with_torch:
        print("torch is not installed: no comparison (pip install torch==2.13.0)")

    float64_rows, float32_rows, curves = [], [], {}
    for name in args.optimizer:
        start = time.perf_counter()
        with jax.enable_x64(True):
            model = make_model(args.hidden, args.seed, jnp.float64)
            weights = weights_of(model)
            if with_torch:
                _, _, jax_params = train_jax(name, (train, test), order, model, True)
                _, _, torch_params = train_torch(
                    name, (train, test), order, weights, "float64", True
                )
                float64_rows.append((name, np.max(np.abs(jax_params - torch_params))))
        model = make_model(args.hidden, args.seed, jnp.float32, weights)
        losses, accuracy, _ = train_jax(name, (train, test), order, model, False)
        curves[name] = losses
        row: tuple = (name, losses[0], losses[-1], accuracy)
        if with_torch:
            torch_losses, torch_accuracy, _ = train_torch(
                name, (train, test), order, weights, "float32", False
            )
            curves[f"{name} (torch)"] = torch_losses
            row += (torch_losses[-1], torch_accuracy, np.abs(losses - torch_losses))
        float32_rows.append(row)
        print(f"{name:>10}: trained in {time.perf_counter() - start:.1f} s")

    if with_torch:
        print(
            f"\nfloat64, step by step against torch.optim ({args.steps} steps):\n"
            f"{'optimizer':>10} | {'max |param - torch param|, all steps':>36}"
        )
        print("-" * 49)
        for name, gap in float64_rows:
            print(f"{name:>10} | {gap:36.1e}")

    print(
        "\nfloat32 loss curves"
        + (" side by side with torch.optim:" if with_torch else ":")
    )
    header = (
        f"{'optimizer':>10} | {'first loss':>10} | {'final loss':>10} | {'test acc':>8}"
    )
    if with_torch:
        header += (
            f" | {'torch final':>11} | {'torch acc':>9} | {'max |loss gap|':>14} | "
            f"{'gap > 1e-4 from step':>20}"
        )
    print(header + "\n" + "-" * len(header))
    for name, first, last, accuracy, *vs_torch in float32_rows:
        line = f"{name:>10} | {first:10.4f} | {last:10.4f} | {accuracy:8.2%}"
        if vs_torch:
            torch_last, torch_accuracy, gap = vs_torch
            drift_from = int(np.argmax(gap > 1e-4)) if np.any(gap > 1e-4) else "-"
            line += (
                f" | {torch_last:11.4f} | {torch_accuracy:9.2%} | {gap.max():14.1e} | "
                f"{drift_from:>20}"
            )
        print(line)
    if with_torch:
        print(FLOAT32_DRIFT)
    try:
        plot(curves, args.plot)
    except MissingExtra as e:
        print(f"\nno plot: {e}: {DEMO_EXTRA}")
    else:
        print(f"\nloss curves saved to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train a small flax MLP on scikit-learn's handwritten digits with this library.

Run ``python -m functorch_optim.demo --help``. The digits (1,797 8x8 images) ship
inside scikit-learn, so nothing is downloaded. Every optimizer trains the same model
from the same initial weights on the same mini-batches; when torch is installed, the
demo also trains torch's optimizer of the same name on an identical torch model and
shows that the two loss curves agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import functorch_optim as fo

# name -> (options, torch.optim class name). The demo grows with the library: an
# optimizer shows up here as soon as its functional transform exists.
OPTIMIZERS: dict[str, tuple[dict, str]] = {
    "sgd": (dict(lr=0.1, momentum=0.9, nesterov=True), "SGD"),
    "adam": (dict(lr=3e-3), "Adam"),
    "adamw": (dict(lr=3e-3, weight_decay=0.05), "AdamW"),
    "nadam": (dict(lr=3e-3), "NAdam"),
    "radam": (dict(lr=3e-3), "RAdam"),
    "adamax": (dict(lr=3e-3), "Adamax"),
    "rmsprop": (dict(lr=1e-3), "RMSprop"),
    "adagrad": (dict(lr=0.05), "Adagrad"),
    "adadelta": (dict(lr=1.0), "Adadelta"),
    "asgd": (dict(lr=0.05), "ASGD"),
    "adafactor": (dict(lr=1e-2), "Adafactor"),
}
AVAILABLE = [name for name in OPTIMIZERS if hasattr(fo, name)]


class MLP(nnx.Module):
    def __init__(self, hidden: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def load_digits(seed: int = 0):
    from sklearn.datasets import load_digits as sklearn_digits

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


def loss_fn(model, x, y):
    logits = model(x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def train_jax(name, train, test, order, hidden, seed, progress: Callable):
    options, _ = OPTIMIZERS[name]
    model = MLP(hidden, nnx.Rngs(seed))
    initial = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    optimizer = nnx.Optimizer(model, getattr(fo, name)(**options), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    losses = []
    for k, idx in enumerate(order):
        losses.append(float(train_step(model, optimizer, train[0][idx], train[1][idx])))
        progress(k + 1, losses[-1])
    accuracy = float(jnp.mean(jnp.argmax(model(test[0]), -1) == test[1]))
    return np.array(losses), accuracy, initial


def train_torch(name, train, order, hidden, initial):
    """The same model, weights and batches in torch; returns its losses."""
    import torch

    options, torch_name = OPTIMIZERS[name]
    layers = [torch.nn.Linear(64, hidden), torch.nn.Linear(hidden, 10)]
    with torch.no_grad():
        for layer, key in zip(layers, ["hidden", "out"]):
            layer.weight.copy_(torch.tensor(initial[key]["kernel"].T))
            layer.bias.copy_(torch.tensor(initial[key]["bias"]))
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1])
    optimizer = getattr(torch.optim, torch_name)(model.parameters(), **options)
    x, y = torch.tensor(train[0]), torch.tensor(train[1]).long()
    losses = []
    for idx in order:
        idx = torch.tensor(idx)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


def progress_bar(label: str, total: int) -> Callable[[int, float], None]:
    width = 30
    interactive = sys.stdout.isatty()
    start = time.perf_counter()

    def show(done: int, loss: float) -> None:
        if interactive or done == total or done % max(1, total // 4) == 0:
            filled = width * done // total
            bar = "#" * filled + "-" * (width - filled)
            line = (
                f"{label:>10} [{bar}] {done:4d}/{total} loss {loss:.4f} "
                f"{time.perf_counter() - start:5.1f}s"
            )
            print(
                "\r" + line if interactive else line,
                end="" if interactive and done < total else "\n",
                flush=True,
            )

    return show


def plot(curves: dict[str, np.ndarray], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        ax.plot(losses, label=name)
    ax.set(
        xlabel="step",
        ylabel="training loss",
        yscale="log",
        title="functorch_optim on scikit-learn digits",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="functorch-optim-demo",
        description="Train a flax MLP on scikit-learn's digits with functorch_optim "
        "optimizers and compare them (and torch's, when installed).",
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

    train, test = load_digits(args.seed)
    order = batches(len(train[0]), args.batch_size, args.steps, args.seed)
    try:
        if args.no_torch:
            raise ImportError
        import torch  # noqa: F401

        with_torch = True
    except ImportError:
        with_torch = False
    print(
        f"digits: {len(train[0])} train / {len(test[0])} test images, "
        f"MLP 64-{args.hidden}-10, {args.steps} steps of {args.batch_size}\n"
    )

    curves, rows = {}, []
    for name in args.optimizer:
        losses, accuracy, initial = train_jax(
            name,
            train,
            test,
            order,
            args.hidden,
            args.seed,
            progress_bar(name, args.steps),
        )
        curves[name] = losses
        torch_gap = "-"
        if with_torch:
            torch_losses = train_torch(name, train, order, args.hidden, initial)
            torch_gap = f"{np.max(np.abs(torch_losses - losses)):.1e}"
        rows.append((name, losses[0], losses[-1], accuracy, torch_gap))

    print(
        f"\n{'optimizer':>10} | {'first loss':>10} | {'final loss':>10} | "
        f"{'test acc':>8} | {'max |loss - torch loss|':>23}"
    )
    print("-" * 76)
    for name, first, last, accuracy, gap in rows:
        print(
            f"{name:>10} | {first:10.4f} | {last:10.4f} | {accuracy:8.2%} | {gap:>23}"
        )
    if plot(curves, args.plot):
        print(f"\nloss curves saved to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

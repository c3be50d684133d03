# %% [markdown]
# # Weight averaging: EMA and SWA (`fo.swa_utils`)
#
# `fo.swa_utils` is `torch.optim.swa_utils` for JAX: `AveragedModel`, the
# `get_ema_*` / `get_swa_*` averaging functions, `SWALR` and `update_bn`, with
# torch's rules and numbers, plus `fo.swa_utils.averaged`, the same averaging as a
# pure `(init, update)` pair for jitted loops. Here the digits MLP of
# `python -m functorch_optim.demo` is trained with a deliberately large, noisy SGD
# step, and evaluated with and without averaged weights:
#
# 1. functional: an EMA of the weights updated inside the jitted train step, and an
#    SWA average taken once per epoch in the last epochs;
# 2. torch-style: the same MLP with BatchNorm, `AveragedModel` on the `nnx` model,
#    the SWA learning rate from `SWALR`'s schedule, and `update_bn` at the end.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch
from flax import nnx

import functorch_optim as fo
from functorch_optim.demo import batches, load_digits

(x_train, y_train), (x_test, y_test) = load_digits(seed=0)
EPOCHS, BATCH = 20, 32
steps_per_epoch = len(x_train) // BATCH
order = batches(len(x_train), BATCH, EPOCHS * steps_per_epoch, seed=0)
print(f"{len(x_train)} train / {len(x_test)} test images, {steps_per_epoch} steps per epoch")


class MLP(nnx.Module):  # the demo's digits MLP, 64-64-10
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 64, rngs=rngs)
        self.out = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))


# %% [markdown]
# ## Functional: EMA every step, SWA every epoch
# The model is split into a graph and its params, so a training step is a pure
# function of arrays. `ema.update` runs inside the jitted step (one more fused
# computation); `swa.update` once per epoch from epoch `SWA_START` on. Both start
# from `init(params)` and, as torch's `AveragedModel`, copy the params at their
# first update.

# %%
graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
tx = fo.sgd(lr=0.3, momentum=0.9)
ema = fo.swa_utils.averaged(multi_avg_fn=fo.swa_utils.get_ema_multi_avg_fn(0.97))
swa = fo.swa_utils.averaged()  # equal weights
SWA_START = 8


def loss_of(params, x, y):
    return cross_entropy(nnx.merge(graphdef, params)(x), y)


@jax.jit
def train_step(params, opt_state, ema_state, x, y):
    grads = jax.grad(loss_of)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = fo.apply_updates(params, updates)
    return params, opt_state, ema.update(params, ema_state)


evaluate = jax.jit(lambda params: loss_of(params, x_test, y_test))
swa_update = jax.jit(swa.update)

opt_state, ema_state, swa_state = tx.init(params), ema.init(params), swa.init(params)
curves = {"SGD": [], "EMA (decay 0.97)": [], "SWA": []}
for epoch in range(EPOCHS):
    for idx in order[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]:
        params, opt_state, ema_state = train_step(
            params, opt_state, ema_state, x_train[idx], y_train[idx]
        )
    curves["SGD"].append(float(evaluate(params)))
    curves["EMA (decay 0.97)"].append(float(evaluate(ema_state.params)))
    if epoch >= SWA_START:
        swa_state = swa_update(params, swa_state)
    curves["SWA"].append(float(evaluate(swa_state.params)) if epoch >= SWA_START else np.nan)

print(f"models averaged: EMA {int(ema_state.n_averaged)}, SWA {int(swa_state.n_averaged)}")
for name, curve in curves.items():
    print(f"{name:>17}: final test loss {curve[-1]:.4f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
for name, curve in curves.items():
    ax.plot(range(1, EPOCHS + 1), curve, label=name)
ax.axvline(SWA_START + 1, color="gray", lw=0.8, ls=":")
ax.set(xlabel="epoch", ylabel="test loss", yscale="log", title="digits MLP, SGD lr 0.3")
ax.legend()
plt.show()

# %% [markdown]
# ## Torch-style: `AveragedModel`, `SWALR`'s schedule and `update_bn`
# The MLP now has a BatchNorm. `AveragedModel(model)` keeps an averaged copy of the
# `nnx` model (`.module` is an `nnx.Module`); its BatchNorm statistics are not
# averaged (`use_buffers=False`, torch's default), so `update_bn` recomputes them
# for the averaged weights with one pass over the training data, with torch's
# cumulative average and unbiased variance. The learning rate follows torch's
# recipe: cosine annealing, then `SWALR` annealing to a constant `swa_lr` over 3
# epochs (here back up to 0.3: SWA wants a high lr, so that the iterates keep
# moving and their average is the model), as the pure schedules
# `fo.cosine_annealing_lr` and `fo.swa_utils.swalr` (per step: one epoch is
# `steps_per_epoch` counts).


# %%
class BatchNormMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 64, rngs=rngs)
        self.norm = nnx.BatchNorm(64, rngs=rngs)
        self.out = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


model = BatchNormMLP(nnx.Rngs(0))
swa_model = fo.swa_utils.AveragedModel(model)
start = SWA_START * steps_per_epoch
lr = fo.sequential_lr(
    [
        fo.cosine_annealing_lr(0.3, T_max=EPOCHS * steps_per_epoch),
        fo.swa_utils.swalr(
            0.3 * (1 + np.cos(np.pi * SWA_START / EPOCHS)) / 2,  # the lr at SWA_START
            swa_lr=0.3,
            anneal_epochs=3 * steps_per_epoch,
        ),
    ],
    milestones=[start],
)
optimizer = nnx.Optimizer(model, fo.sgd(lr=lr, momentum=0.9), wrt=nnx.Param)


@nnx.jit
def bn_train_step(model, optimizer, x, y):
    grads = nnx.grad(lambda m: cross_entropy(m(x), y))(model)
    optimizer.update(model, grads)


@nnx.jit
def bn_test_loss(model):
    return cross_entropy(nnx.view(model, use_running_average=True)(x_test), y_test)


bn_curves = {"SGD": [], "SWA (after update_bn)": []}
for epoch in range(EPOCHS):
    for idx in order[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]:
        bn_train_step(model, optimizer, x_train[idx], y_train[idx])
    bn_curves["SGD"].append(float(bn_test_loss(model)))
    if epoch >= SWA_START:
        swa_model.update_parameters(model)
        fo.swa_utils.update_bn([x_train[i] for i in order[:steps_per_epoch]], swa_model)
        bn_curves["SWA (after update_bn)"].append(float(bn_test_loss(swa_model.module)))
    else:
        bn_curves["SWA (after update_bn)"].append(np.nan)

accuracy = {
    name: float(jnp.mean(jnp.argmax(nnx.view(m, use_running_average=True)(x_test), -1) == y_test))
    for name, m in [("SGD", model), ("SWA", swa_model.module)]
}
print(f"n_averaged {int(swa_model.n_averaged)}")
for name, curve in bn_curves.items():
    print(f"{name:>21}: final test loss {curve[-1]:.4f}")
print("test accuracy", {name: round(value, 4) for name, value in accuracy.items()})

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
for name, curve in bn_curves.items():
    ax1.plot(range(1, EPOCHS + 1), curve, label=name)
ax1.set(xlabel="epoch", ylabel="test loss", yscale="log", title="MLP with BatchNorm")
ax1.legend()
ax2.plot([float(lr(t)) for t in range(EPOCHS * steps_per_epoch)])
ax2.set(xlabel="step", ylabel="lr", title="cosine, then swalr")
plt.show()

# %% [markdown]
# On a problem this small the outcome depends on that lr: with a high SWA lr the
# last iterate stays noisy and the average does better, as above; with a small one
# (try `swa_lr=0.05`) the last iterate converges on its own and the average, which
# keeps the earlier epochs' weights, lags behind it.
#
# ## The same numbers as torch
# `fo.swa_utils.SWALR` on a facade optimizer and `torch.optim.swa_utils.SWALR` on
# torch's set the same learning rates (two param groups, each with its own
# `swa_lr`), and `state_dict()` moves an averaged model between the two libraries:
# here the SWA model of the first part, with torch's names, continues in torch.

# %%
ours = fo.SGD([{"params": [jnp.zeros(1)]}, {"params": [jnp.zeros(1)], "lr": 0.5}], lr=0.1)
theirs = torch.optim.SGD(
    [{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)], "lr": 0.5}], lr=0.1
)
our_sched = fo.swa_utils.SWALR(ours, swa_lr=[0.05, 0.01], anneal_epochs=4)
their_sched = torch.optim.swa_utils.SWALR(theirs, swa_lr=[0.05, 0.01], anneal_epochs=4)
for _ in range(6):
    ours.step([[jnp.zeros(1)], [jnp.zeros(1)]])
    theirs.step()
    our_sched.step()
    their_sched.step()
    assert our_sched.get_last_lr() == their_sched.get_last_lr()
print("SWALR lrs, both libraries:", our_sched.get_last_lr())



# The SWA params of the first part under torch's names and layouts (nnx keeps a
# Linear's kernel as torch's weight transposed) load into torch's AveragedModel.
def torch_named(p):
    return {
        f"{i}.{name}": p[layer]["kernel"][...].T if name == "weight" else p[layer]["bias"][...]
        for i, layer in [(0, "hidden"), (2, "out")]
        for name in ("weight", "bias")
    }


averaged_model = fo.swa_utils.AveragedModel(torch_named(params))
averaged_model.load_state_dict(
    {"n_averaged": swa_state.n_averaged}
    | {f"module.{k}": v for k, v in torch_named(swa_state.params).items()}
)
torch_swa = torch.optim.swa_utils.AveragedModel(
    torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
)
torch_swa.load_state_dict(fo.interop.to_torch(averaged_model.state_dict()))
with torch.no_grad():
    torch_loss = torch.nn.functional.cross_entropy(
        torch_swa(torch.tensor(x_test)), torch.tensor(y_test).long()
    ).item()
print(f"n_averaged in torch: {int(torch_swa.n_averaged)}")
print(f"SWA test loss: here {curves['SWA'][-1]:.6f}, torch's AveragedModel {torch_loss:.6f}")

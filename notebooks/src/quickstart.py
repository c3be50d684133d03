# %% [markdown]
# # functorch_optim quickstart: the functional API
#
# Every `torch.optim` algorithm as an optax-style `(init, update)` pair of pure
# functions: `fo.adam`, `fo.sgd`, ... with torch's keyword names and defaults. This
# notebook trains a small flax `nnx` model with one, chains transformations
# (ours and optax's), and drives hyperparameters with schedules.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import functorch_optim as fo

# %% [markdown]
# ## A model and data
# A two-layer MLP regressing a noisy sine.

# %%
rng = np.random.default_rng(0)
x = jnp.asarray(rng.uniform(-3, 3, (256, 1)), jnp.float32)
y = jnp.sin(x) + 0.05 * jnp.asarray(rng.standard_normal((256, 1)), jnp.float32)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(1, 32, rngs=rngs)
        self.out = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)


# %% [markdown]
# ## `flax.nnx.Optimizer` with a functorch_optim transformation
# `fo.adamw` is accepted as it is: it has optax's `(init, update)` shape.


# %%
def train(tx, steps=300, seed=0):
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return np.array([float(step(model, optimizer)) for _ in range(steps)])


curves = {"adamw(lr=1e-2)": train(fo.adamw(lr=1e-2, weight_decay=1e-2))}
print(f"final loss {curves['adamw(lr=1e-2)'][-1]:.4f}")

# %% [markdown]
# ## Chaining
# `fo.chain` composes transformations; `optax.chain` accepts ours too, and ours accept
# optax's. Clipping has `torch.nn.utils.clip_grad_norm_`'s semantics.

# %%
curves["chain(clip 1.0, rmsprop)"] = train(
    fo.chain(fo.clip_grad_norm(1.0), fo.rmsprop(lr=3e-3, momentum=0.5))
)
curves["optax.chain(optax clip, nadam)"] = train(
    optax.chain(optax.clip_by_global_norm(1.0), fo.nadam(lr=1e-2))
)

# %% [markdown]
# ## Schedules
# Any hyperparameter can be a schedule `count -> value`; the value at count `t` is
# the one torch's `lr_scheduler` sets after `t` calls of `step()`. Here: linear
# warm-up then cosine annealing (torch's `SequentialLR(LinearLR, CosineAnnealingLR)`).

# %%
steps = 300
lr = fo.sequential_lr(
    [
        fo.linear_lr(2e-2, start_factor=0.05, total_iters=30),
        fo.cosine_annealing_lr(2e-2, T_max=steps - 30),
    ],
    milestones=[30],
)
curves["adam, warm-up + cosine"] = train(fo.adam(lr=lr), steps)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
for label, c in curves.items():
    ax1.plot(c, label=label)
ax1.set(yscale="log", xlabel="step", ylabel="training loss")
ax1.legend(fontsize=8)
ax2.plot([float(lr(t)) for t in range(steps)])
ax2.set(xlabel="step", ylabel="lr", title="fo.sequential_lr")
plt.show()

# %% [markdown]
# ## The state: optax's shape, torch's names
# `fo.adam(...).init(params)` is an `fo.AdamState`: `state.count` (an int32 scalar,
# the steps taken) and torch's entries, `state.exp_avg` a tree shaped like the params.
# optax's tools read it (`optax.tree_utils.tree_get(state, "count")`). Under
# `jax.jit` a step is one XLA computation.

# %%
params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
tx = fo.adam(lr=1e-3, amsgrad=True)
state = tx.init(params)
print(jax.tree.map(jnp.shape, state))


@jax.jit
def update(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return fo.apply_updates(params, updates), state


params, state = update(params, state, jax.tree.map(jnp.ones_like, params))
print(state.count, optax.tree_utils.tree_get(state, "count"))
print(state.exp_avg["w"])

# %% [markdown]
# # Research use: hyperparameter sweeps and meta-gradients
#
# Hyperparameters of the functional transforms may be traced JAX scalars, so
# `jax.vmap` runs a whole sweep as one compiled program and `jax.grad`
# differentiates the final loss of an unrolled training run with respect to `lr`,
# `betas` or `weight_decay`.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import functorch_optim as fo

rng = np.random.default_rng(0)
X = jnp.asarray(rng.standard_normal((64, 8)))
Y = jnp.asarray(rng.standard_normal((64, 1)))
W0 = {
    "w1": jnp.asarray(rng.standard_normal((8, 16)) * 0.3),
    "w2": jnp.asarray(rng.standard_normal((16, 1)) * 0.3),
}


def loss_fn(p):
    return jnp.mean((jnp.tanh(X @ p["w1"]) @ p["w2"] - Y) ** 2)


def final_loss(lr, betas=(0.9, 0.999), weight_decay=0.0, steps=50):
    """Train with Adam for `steps` steps (a lax.scan) and return the final loss."""
    tx = fo.adam(lr=lr, betas=betas, weight_decay=weight_decay)

    def body(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
        return (fo.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (W0, tx.init(W0)), None, length=steps)
    return loss_fn(params)


# %% [markdown]
# ## A sweep of 16 learning rates in one compiled program

# %%
lrs = jnp.geomspace(1e-4, 1.0, 16)
sweep = jax.jit(jax.vmap(final_loss))
losses = sweep(lrs)
print("compiled programs:", sweep._cache_size())
print(f"best lr {float(lrs[jnp.argmin(losses)]):.3g}, loss {float(losses.min()):.4f}")
plt.loglog(lrs, losses, "o-")
plt.xlabel("lr")
plt.ylabel("loss after 50 Adam steps")
plt.title("jax.vmap over lr")
plt.show()

# %% [markdown]
# ## Meta-gradients through the unrolled run
# `jax.grad` w.r.t. lr, beta1 and weight_decay, checked against central differences.


# %%
def meta(h):
    # torch wants both betas floats or both tensors: beta2 joins beta1 as a JAX scalar
    return final_loss(h[0], betas=(h[1], jnp.asarray(0.999)), weight_decay=h[2])


point = jnp.array([0.02, 0.9, 0.01])
exact = jax.jit(jax.grad(meta))(point)
f = jax.jit(meta)
eps = 1e-6
central = jnp.array(
    [(f(point.at[i].add(eps)) - f(point.at[i].add(-eps))) / (2 * eps) for i in range(3)]
)
for name, e, c in zip(["lr", "beta1", "weight_decay"], exact, central):
    print(
        f"d loss / d {name:12s} = {float(e): .6e}   central difference {float(c): .6e}"
    )

# %% [markdown]
# ## Tuning the learning rate by gradient descent on log(lr)

# %%
meta_grad = jax.jit(jax.value_and_grad(lambda log_lr: final_loss(jnp.exp(log_lr))))
log_lr, history = jnp.log(1e-3), []
for _ in range(25):
    value, g = meta_grad(log_lr)
    history.append((float(jnp.exp(log_lr)), float(value)))
    log_lr = log_lr - 0.5 * jnp.sign(g) * jnp.minimum(jnp.abs(g) * 50, 0.5)
history = np.array(history)
print(
    f"lr {history[0, 0]:.3g} -> {history[-1, 0]:.3g}, loss {history[0, 1]:.4f} -> {history[-1, 1]:.4f}"
)

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(lrs, losses, "-", color="0.7", label="vmap sweep")
ax.loglog(history[:, 0], history[:, 1], "o-", ms=3, label="meta-gradient descent")
ax.set(xlabel="lr", ylabel="final loss")
ax.legend()
plt.show()

# %% [markdown]
# # L-BFGS against torch
#
# `fo.LBFGS` (facade) and `fo.lbfgs` (functional) reproduce `torch.optim.LBFGS`:
# the two-loop recursion, the first step's scaling, the stopping rules and the
# strong-Wolfe line search. A whole `step(closure)` (up to `max_iter` iterations,
# line search included) is one compiled XLA computation. Here: logistic regression
# in float64, torch and the library side by side, step by step.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch

import functorch_optim as fo

rng = np.random.default_rng(0)
n, d = 400, 30
A = rng.standard_normal((n, d))
labels = (A @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n) > 0).astype(
    np.float64
)


def loss_jax(params):
    logits = jnp.asarray(A) @ params["w"] + params["b"]
    return jnp.mean(jax.nn.softplus(logits) - labels * logits) + 1e-3 * jnp.sum(
        params["w"] ** 2
    )


def loss_torch(w, b):
    logits = torch.tensor(A) @ w + b
    return torch.mean(
        torch.nn.functional.softplus(logits) - torch.tensor(labels) * logits
    ) + 1e-3 * torch.sum(w**2)


# %% [markdown]
# ## Step by step: `torch.optim.LBFGS` and `fo.LBFGS`

# %%
options = dict(lr=1, max_iter=5, history_size=10, line_search_fn="strong_wolfe")
w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
b = torch.zeros((), dtype=torch.float64, requires_grad=True)
torch_opt = torch.optim.LBFGS([w, b], **options)


def closure():
    torch_opt.zero_grad()
    loss = loss_torch(w, b)
    loss.backward()
    return loss


fo_opt = fo.LBFGS({"w": jnp.zeros(d), "b": jnp.zeros(())}, **options)
torch_curve, fo_curve = [], []
for _ in range(12):
    torch_opt.step(closure)
    fo_opt.step(loss_jax)  # the same closure object every step: compiled once
    torch_curve.append(loss_torch(w, b).item())
    fo_curve.append(float(loss_jax(fo_opt.params)))

gap = np.max(np.abs(np.asarray(fo_opt.params["w"]) - w.detach().numpy()))
print(f"after 12 steps: torch loss {torch_curve[-1]:.12f}, fo loss {fo_curve[-1]:.12f}")
print(f"largest parameter difference {gap:.2e}")
print(
    "torch's state:",
    {
        k: v
        for k, v in torch_opt.state_dict()["state"][0].items()
        if k in ("func_evals", "n_iter")
    },
)
print(
    "fo's state:   ",
    {
        k: v
        for k, v in fo_opt.state_dict()["state"][0].items()
        if k in ("func_evals", "n_iter")
    },
)

# %%
best = min(min(torch_curve), min(fo_curve))
plt.semilogy(np.array(torch_curve) - best + 1e-16, "o-", label="torch.optim.LBFGS")
plt.semilogy(np.array(fo_curve) - best + 1e-16, "x--", label="fo.LBFGS")
plt.xlabel("step(closure) (5 iterations each)")
plt.ylabel("loss - best loss")
plt.legend()
plt.show()

# %% [markdown]
# ## The functional form under `jax.jit`
# `fo.lbfgs` is a transformation whose `update` takes the objective as `value_fn`;
# `state["orig_loss"]` is what torch's `step` returns.

# %%
tx = fo.lbfgs(**options)
params = {"w": jnp.zeros(d), "b": jnp.zeros(())}
state = tx.init(params)


@jax.jit
def step(params, state):
    updates, state = tx.update(None, state, params, value_fn=loss_jax)
    return fo.apply_updates(params, updates), state


for _ in range(12):
    params, state = step(params, state)
print(
    f"functional: loss {float(loss_jax(params)):.12f}, "
    f"difference to the facade {float(jnp.max(jnp.abs(params['w'] - fo_opt.params['w']))):.1e}"
)

# %% [markdown]
# # Porting a torch training loop to the facade
#
# `fo.SGD`, `fo.Adam`, ... have torch's class names, constructor signatures,
# `param_groups`, `state_dict()` and schedulers. A torch loop ports by changing the
# imports and passing gradients (or a closure) to `step`. Here a torch loop and its
# port train the same model from the same weights and print the same losses; then a
# torch optimizer checkpoint is loaded into the facade and training continues.

# %%
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import torch

import functorch_optim as fo

torch.manual_seed(0)
rng = np.random.default_rng(0)
X = rng.standard_normal((128, 5)).astype(np.float32)
Y = (X @ rng.standard_normal((5, 1)) + 0.1).astype(np.float32)
batches = [rng.integers(0, 128, 16) for _ in range(60)]

# %% [markdown]
# ## The torch loop

# %%
model = torch.nn.Linear(5, 1)
# the same names and layouts as torch's nn.Linear: weight (out, in), bias (out,)
initial = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
torch_losses = []
for idx in batches:
    opt.zero_grad()
    loss = torch.mean((model(torch.tensor(X[idx])) - torch.tensor(Y[idx])) ** 2)
    loss.backward()
    opt.step()
    sched.step()
    torch_losses.append(loss.item())

# %% [markdown]
# ## The same loop on the facade
# Differences: params are a pytree of JAX arrays, the loss is a function of them, and
# `step(closure)` differentiates it (or pass `step(grads)`). Read the updated params
# from `opt.params` (arrays read earlier stay valid: they hold the earlier values).

# %%
params = {k: jnp.asarray(v) for k, v in initial.items()}
opt = fo.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
sched = fo.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)


def batch_loss(p, idx):
    return jnp.mean((X[idx] @ p["weight"].T + p["bias"] - Y[idx]) ** 2)


fo_losses = []
for idx in batches:
    loss, grads = jax.value_and_grad(batch_loss)(opt.params, idx)
    opt.step(grads)
    sched.step()
    fo_losses.append(float(loss))

print(
    "largest |torch loss - fo loss|:",
    np.max(np.abs(np.array(torch_losses) - fo_losses)),
)
print("lr now:", opt.param_groups[0]["lr"], "(torch:", sched.get_last_lr(), ")")
plt.plot(torch_losses, label="torch.optim.SGD")
plt.plot(fo_losses, "--", label="fo.SGD")
plt.yscale("log")
plt.xlabel("step")
plt.ylabel("loss")
plt.legend()
plt.show()

# %% [markdown]
# ## A torch checkpoint, continued in JAX
# An Adam run in torch is saved with `torch.save`; the facade loads torch's state
# dict directly (`load_state_dict` accepts torch tensors), and both continue.

# %%
tmp = tempfile.mkdtemp()
model = torch.nn.Linear(5, 1)
opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
for idx in batches[:30]:
    opt.zero_grad()
    torch.mean((model(torch.tensor(X[idx])) - torch.tensor(Y[idx])) ** 2).backward()
    opt.step()
torch.save(
    {"model": model.state_dict(), "optimizer": opt.state_dict()},
    os.path.join(tmp, "torch.pt"),
)

saved = torch.load(os.path.join(tmp, "torch.pt"))
# (name, array) pairs in torch's parameter order, as model.named_parameters() gives
# them, so the state dict's ids 0, 1 mean the same parameters (a dict in that order
# is numbered the same way, and load_state_dict checks torch's param_names).
named = [(k, jnp.asarray(v.numpy())) for k, v in saved["model"].items()]
fo_opt = fo.Adam(named, lr=1e-2, amsgrad=True)
fo_opt.load_state_dict(saved["optimizer"])
print(
    "restored state of param 0:",
    {k: tuple(v.shape) for k, v in fo_opt.state_dict()["state"][0].items()},
)

for idx in batches[30:]:
    opt.zero_grad()
    torch.mean((model(torch.tensor(X[idx])) - torch.tensor(Y[idx])) ** 2).backward()
    opt.step()
    grads = jax.grad(batch_loss)(dict(fo_opt.params), idx)
    fo_opt.step([(name, grads[name]) for name, _ in fo_opt.params])

print(
    "largest |torch - fo| weight difference after 30 more steps:",
    float(
        np.max(
            np.abs(
                np.asarray(dict(fo_opt.params)["weight"])
                - model.weight.detach().numpy()
            )
        )
    ),
)

# %% [markdown]
# ## Checkpointing the facade
# `fo.checkpoint.save` / `restore` keep the state dict exactly (integer keys, tuples
# like `betas`, dtypes); `format="orbax"` writes an orbax directory instead.

# %%
path = os.path.join(tmp, "fo.ckpt")
fo.checkpoint.save(path, {"params": fo_opt.params, "optimizer": fo_opt.state_dict()})
restored = fo.checkpoint.restore(path)
resumed = fo.Adam(restored["params"], lr=1e-2, amsgrad=True)
resumed.load_state_dict(restored["optimizer"])
print(
    restored["optimizer"]["param_groups"][0]["betas"],
    list(restored["optimizer"]["state"]),
)

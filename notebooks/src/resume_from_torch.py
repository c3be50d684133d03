# %% [markdown]
# # Resuming a PyTorch run in JAX, and back
#
# A torch run trains a small model with two param groups and a scheduler, and
# `torch.save`s the model, the optimizer and the scheduler. JAX loads that file with
# the facade (`fo.AdamW`, `fo.lr_scheduler.StepLR`) and continues. Fed the same
# gradients, the JAX run equals torch continuing from the same file, at every step,
# in float64. Then the JAX run is written as a torch file
# (`fo.checkpoint.save_torch`) and torch continues it.

# %%
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch

import functorch_optim as fo

jax.config.update("jax_enable_x64", True)
tmp = tempfile.mkdtemp()
rng = np.random.default_rng(0)
batches = [
    (rng.standard_normal((16, 3)), rng.standard_normal((16, 2))) for _ in range(30)
]


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(3, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.encoder(x)))


def torch_run(checkpoint=None):
    """The model, optimizer and scheduler, as the torch script builds them."""
    torch.manual_seed(0)
    model = Model().double()
    groups = [  # named params: torch's state dict then carries param_names
        {"params": list(model.encoder.named_parameters(prefix="encoder")), "lr": 0.02},
        {"params": list(model.head.named_parameters(prefix="head"))},
    ]
    opt = torch.optim.AdamW(groups, lr=0.01, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        sched.load_state_dict(checkpoint["scheduler"])
    return model, opt, sched


# %% [markdown]
# ## Torch trains and saves

# %%
model, opt, sched = torch_run()
for x, y in batches[:10]:
    opt.zero_grad()
    torch.mean((model(torch.tensor(x)) - torch.tensor(y)) ** 2).backward()
    opt.step()
    sched.step()
torch.save(
    {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
    },
    os.path.join(tmp, "torch.pt"),
)
print("torch lr after 10 steps:", sched.get_last_lr())

# %% [markdown]
# ## JAX loads the file
# `fo.interop.to_jax` turns the model's tensors into JAX arrays under torch's
# names. Each group is a dict of those names, so the facade numbers the params in
# the order torch did and names them as torch did: `load_state_dict` checks the
# file's `param_names` against them (a mismatch is an error naming both).

# %%
saved = torch.load(os.path.join(tmp, "torch.pt"))
params = fo.interop.to_jax(saved["model"])
fo_opt = fo.AdamW(
    [
        {"params": {name: params[name] for name in group["param_names"]}}
        for group in saved["optimizer"]["param_groups"]
    ],
    lr=0.01,
    weight_decay=0.05,
)
fo_opt.load_state_dict(saved["optimizer"])
fo_sched = fo.lr_scheduler.StepLR(fo_opt, step_size=5, gamma=0.5)
fo_sched.load_state_dict(saved["scheduler"])
print("param_names:", [g["param_names"] for g in fo_opt.state_dict()["param_groups"]])
print("lr:", fo_sched.get_last_lr())


def loss_fn(p, x, y):
    h = jnp.tanh(x @ p["encoder.weight"].T + p["encoder.bias"])
    return jnp.mean((h @ p["head.weight"].T + p["head.bias"] - y) ** 2)


grad_fn = jax.jit(jax.grad(loss_fn))


def merged(groups):
    return {name: value for group in groups for name, value in group.items()}


# %% [markdown]
# ## Both continue on the same gradients
# Torch continues from the same file; each step the JAX gradients go to both.

# %%
t_model, t_opt, t_sched = torch_run(torch.load(os.path.join(tmp, "torch.pt")))


def continue_both(data):
    worst = 0.0
    for x, y in data:
        grads = grad_fn(merged(fo_opt.params), x, y)
        fo_opt.step([{name: grads[name] for name in g} for g in fo_opt.params])
        fo_sched.step()
        for name, p in t_model.named_parameters():
            p.grad = torch.tensor(np.asarray(grads[name]))
        t_opt.step()
        t_sched.step()
        theirs = {k: v.detach().numpy() for k, v in t_model.named_parameters()}
        for name, value in merged(fo_opt.params).items():
            worst = max(worst, float(np.max(np.abs(np.asarray(value) - theirs[name]))))
        assert fo_sched.get_last_lr() == t_sched.get_last_lr()
    return worst


worst = continue_both(batches[10:20])
print("largest |JAX - torch| param difference over 10 steps:", worst)
assert worst < 1e-12

# %% [markdown]
# ## And back: the JAX run as a torch file
# `fo.checkpoint.save_torch` writes `{"model", "optimizer", "scheduler"}` with
# tensors, as the torch script saved it; torch loads it and continues.

# %%
fo.checkpoint.save_torch(os.path.join(tmp, "from_jax.pt"), fo_opt, fo_sched)
t_model, t_opt, t_sched = torch_run(torch.load(os.path.join(tmp, "from_jax.pt")))
worst = continue_both(batches[20:])
print("after the way back, largest difference over 10 steps:", worst)
assert worst < 1e-12

# %% [markdown]
# ## A checkpoint of the JAX run
# `fo.checkpoint.save` keeps params, optimizer and scheduler exactly (msgpack, or
# `format="orbax"`). To restore, build the optimizer and scheduler as the run did
# (here from the restored params, one group each), then load the optimizer's and
# the scheduler's state; an optimizer built from other arrays takes the restored
# ones with `opt.params = restored["params"]`.

# %%
path = os.path.join(tmp, "run.ckpt")
fo.checkpoint.save(
    path,
    {
        "params": fo_opt.params,
        "optimizer": fo_opt.state_dict(),
        "scheduler": fo_sched.state_dict(),
    },
)
restored = fo.checkpoint.restore(path)
again = fo.AdamW(
    [{"params": g} for g in restored["params"]], lr=0.01, weight_decay=0.05
)
again.load_state_dict(restored["optimizer"])
again_sched = fo.lr_scheduler.StepLR(again, step_size=5, gamma=0.5)
again_sched.load_state_dict(restored["scheduler"])
print("restored lr:", again_sched.get_last_lr(), "== run's", fo_sched.get_last_lr())

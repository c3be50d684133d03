"""pytorch/examples ``mnist/main.py``: Adadelta with ``StepLR(step_size=1,
gamma=0.7)`` stepped once per epoch, in torch as written there and ported to JAX
(the facade and the functional API).

The model and data are stand-ins (a two-layer ``Net`` without dropout, a few
random batches); ``args`` holds the script's options. The script saves only the
model when it ends; to resume, ``main`` here also saves the optimizer and the
scheduler after each epoch. ``log(key, lr, norm, params)`` stands for the loop's
logging (``norm`` None: the recipe clips nothing).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR

import functorch_optim as fo

args = SimpleNamespace(lr=1.0, gamma=0.7, seed=1, log_interval=1)

# --- the model and data: stand-ins, in torch and in JAX -----------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


def nll_loss(params, data, target):
    """Net's forward and F.nll_loss in JAX, over the params by torch's names."""
    x = jax.nn.relu(data @ params["fc1.weight"].T + params["fc1.bias"])
    output = jax.nn.log_softmax(x @ params["fc2.weight"].T + params["fc2.bias"])
    return -jnp.mean(jnp.take_along_axis(output, target[:, None], axis=1))


def make_loader(n_batches=3, batch_size=4):
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((batch_size, 8)), rng.integers(0, 3, batch_size))
        for _ in range(n_batches)
    ]


train_loader = make_loader()


def new_model():
    torch.manual_seed(args.seed)
    return Net().double()


# --- torch: main.py -----------------------------------------------------------------


# [torch]
def train(args, model, train_loader, optimizer, epoch, log):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = torch.from_numpy(data), torch.from_numpy(target)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            lr = optimizer.param_groups[0]["lr"]
            log((epoch, batch_idx), lr, None, dict(model.named_parameters()))


def main_torch(out_dir, epochs, resume=False, log=None):
    model = new_model()
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    start_epoch = 1
    if resume:
        checkpoint = torch.load(os.path.join(out_dir, "mnist.pt"))
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch = checkpoint["epoch"] + 1
    for epoch in range(start_epoch, epochs + 1):
        train(args, model, train_loader, optimizer, epoch, log)
        scheduler.step()
        torch.save(
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            os.path.join(out_dir, "mnist.pt"),
        )
# [/torch]


# --- JAX, the facade ----------------------------------------------------------------

loss_and_grad = jax.jit(jax.value_and_grad(nll_loss))


# [facade]
def train_facade(args, train_loader, optimizer, epoch, log):
    for batch_idx, (data, target) in enumerate(train_loader):
        loss, grads = loss_and_grad(optimizer.params, data, target)
        optimizer.step(grads)
        if batch_idx % args.log_interval == 0:
            lr = optimizer.param_groups[0]["lr"]
            log((epoch, batch_idx), lr, None, optimizer.params)


def main_facade(out_dir, epochs, resume=False, log=None):
    params = fo.interop.to_jax(dict(new_model().named_parameters()))
    if resume:
        checkpoint = torch.load(os.path.join(out_dir, "mnist.pt"))
        params = fo.interop.to_jax(checkpoint["model"])
    optimizer = fo.Adadelta(params, lr=args.lr)
    scheduler = fo.lr_scheduler.StepLR(optimizer, step_size=1, gamma=args.gamma)
    start_epoch = 1
    if resume:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch = checkpoint["epoch"] + 1
    for epoch in range(start_epoch, epochs + 1):
        train_facade(args, train_loader, optimizer, epoch, log)
        scheduler.step()
        fo.checkpoint.save_torch(
            os.path.join(out_dir, "mnist.pt"),
            {
                "epoch": epoch,
                "model": optimizer.params,
                "optimizer": optimizer,
                "scheduler": scheduler,
            },
        )
# [/facade]


# --- JAX, functional ----------------------------------------------------------------

# [functional]
# StepLR stepped once per epoch: the schedule of the epoch, at count // len(loader)
lr_schedule = fo.schedules.per_epoch(
    fo.step_lr(args.lr, step_size=1, gamma=args.gamma),
    steps_per_epoch=len(train_loader),
)
tx = fo.adadelta(lr=lr_schedule)


@jax.jit
def train_step(params, opt_state, data, target):
    loss, grads = jax.value_and_grad(nll_loss)(params, data, target)
    updates, opt_state = tx.update(grads, opt_state, params)
    return fo.apply_updates(params, updates), opt_state, loss


def main_functional(out_dir, epochs, resume=False, log=None):
    params = fo.interop.to_jax(dict(new_model().named_parameters()))
    names = list(params)  # torch's order: jitted steps return sorted dicts
    opt_state = tx.init(params)
    start_epoch = 1
    if resume:
        checkpoint = torch.load(os.path.join(out_dir, "mnist.pt"))
        params = fo.interop.to_jax(checkpoint["model"])
        opt_state = fo.interop.load_torch_state(
            tx, checkpoint["optimizer"], params, order=names
        )
        # the scheduler's position is the optimizer's count; check they agree
        assert lr_schedule.count_from_torch(checkpoint["scheduler"]) == opt_state.count
        start_epoch = checkpoint["epoch"] + 1
    for epoch in range(start_epoch, epochs + 1):
        for batch_idx, (data, target) in enumerate(train_loader):
            lr = lr_schedule(opt_state.count)  # the lr of this step
            params, opt_state, loss = train_step(params, opt_state, data, target)
            if batch_idx % args.log_interval == 0:
                log((epoch, batch_idx), lr, None, params)
        fo.checkpoint.save_torch(
            os.path.join(out_dir, "mnist.pt"),
            {
                "epoch": epoch,
                "model": params,
                "optimizer": fo.interop.torch_state_dict(tx, opt_state, params, names),
                "scheduler": lr_schedule.torch_state_dict(opt_state.count),
            },
        )
# [/functional]

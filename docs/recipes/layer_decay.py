"""Layer-wise lr decay as MAE and BEiT fine-tune a ViT (facebookresearch/mae:
``util/lr_decay.py``'s ``param_groups_lrd``, one group per layer and decay with an
``lr_scale``), with torch's ``SequentialLR(LinearLR, CosineAnnealingLR)`` stepped
every iteration; in torch and ported to JAX (the facade and the functional API).

The model is a stand-in with a ViT's parameter names (``cls_token``,
``pos_embed``, ``patch_embed``, ``blocks.<i>``, ``norm``, ``head``); each group
starts at ``args.lr * lr_scale``, which torch's schedulers then scale.
``log(key, lr, norm, params)`` stands for the loop's logging (MAE logs the
largest lr of the groups).
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
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

import functorch_optim as fo


args = SimpleNamespace(
    lr=0.05, weight_decay=0.05, layer_decay=0.75, epochs=3, warmup_iters=2,
    warmup_start=0.1,
)
D, PATCHES, CLASSES = 4, 3, 3  # width, patches per image, classes


# --- the model and data: stand-ins, in torch and in JAX -----------------------------


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(D)
        self.fc = nn.Linear(D, D)

    def forward(self, x):
        return x + torch.tanh(self.fc(self.norm1(x)))


class VisionTransformer(nn.Module):
    def __init__(self, depth=2):
        super().__init__()
        self.patch_embed = nn.ModuleDict(dict(proj=nn.Linear(5, D)))
        self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, PATCHES + 1, D) * 0.1)
        self.blocks = nn.ModuleList([Block() for _ in range(depth)])
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, CLASSES)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "dist_token"}

    def forward(self, x):
        x = self.patch_embed.proj(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def layer_norm(x, weight, bias):
    return jax.nn.standardize(x, epsilon=1e-5) * weight + bias  # nn.LayerNorm


def vit_loss(params, samples, targets, depth=2):
    """VisionTransformer's forward and cross entropy in JAX, by torch's names."""
    p = params
    x = samples @ p["patch_embed.proj.weight"].T + p["patch_embed.proj.bias"]
    cls = jnp.broadcast_to(p["cls_token"], (x.shape[0], 1, D))
    x = jnp.concatenate([cls, x], axis=1) + p["pos_embed"]
    for i in range(depth):
        b = f"blocks.{i}."
        y = layer_norm(x, p[b + "norm1.weight"], p[b + "norm1.bias"])
        x = x + jnp.tanh(y @ p[b + "fc.weight"].T + p[b + "fc.bias"])
    x = layer_norm(x, p["norm.weight"], p["norm.bias"])[:, 0]
    logits = x @ p["head.weight"].T + p["head.bias"]
    picked = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def make_loader(n_batches=2, batch_size=3):
    rng = np.random.default_rng(0)
    return [
        (
            rng.standard_normal((batch_size, PATCHES, 5)),
            rng.integers(0, CLASSES, batch_size),
        )
        for _ in range(n_batches)
    ]


data_loader = make_loader()
total_iters = args.epochs * len(data_loader)


def new_model():
    torch.manual_seed(0)
    return VisionTransformer().double()


# --- torch: MAE's util/lr_decay.py and a fine-tuning loop ----------------------------


# [torch-groups]
def param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=[], layer_decay=.75):
    param_group_names = {}
    param_groups = {}

    num_layers = len(model.blocks) + 1

    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))

    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue

        # no decay: all 1D parameters and model specific ones
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay = "no_decay"
            this_decay = 0.
        else:
            g_decay = "decay"
            this_decay = weight_decay

        layer_id = get_layer_id_for_vit(n, num_layers)
        group_name = "layer_%d_%s" % (layer_id, g_decay)

        if group_name not in param_group_names:
            this_scale = layer_scales[layer_id]

            param_group_names[group_name] = {
                "lr_scale": this_scale,
                "weight_decay": this_decay,
                "params": [],
            }
            param_groups[group_name] = {
                "lr_scale": this_scale,
                "weight_decay": this_decay,
                "params": [],
            }

        param_group_names[group_name]["params"].append(n)
        param_groups[group_name]["params"].append(p)

    return list(param_groups.values())
# [/torch-groups]


def get_layer_id_for_vit(name, num_layers):
    if name in ['cls_token', 'pos_embed']:
        return 0
    elif name.startswith('patch_embed'):
        return 0
    elif name.startswith('blocks'):
        return int(name.split('.')[1]) + 1
    else:
        return num_layers


# [torch]
def main_torch(out_dir, epochs, resume=False, log=None):
    model = new_model()
    param_groups = param_groups_lrd(
        model, args.weight_decay, no_weight_decay_list=model.no_weight_decay(),
        layer_decay=args.layer_decay,
    )
    for group in param_groups:
        group["lr"] = args.lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(param_groups, lr=args.lr)
    scheduler = SequentialLR(optimizer, [
        LinearLR(optimizer, start_factor=args.warmup_start, total_iters=args.warmup_iters),
        CosineAnnealingLR(optimizer, T_max=total_iters - args.warmup_iters),
    ], milestones=[args.warmup_iters])
    start_epoch = 0
    if resume:
        checkpoint = torch.load(os.path.join(out_dir, "checkpoint.pth"))
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["lr_scheduler"])
        start_epoch = checkpoint["epoch"] + 1

    for epoch in range(start_epoch, epochs):
        for data_iter_step, (samples, targets) in enumerate(data_loader):
            samples, targets = torch.from_numpy(samples), torch.from_numpy(targets)
            max_lr = max(group["lr"] for group in optimizer.param_groups)
            loss = F.cross_entropy(model(samples), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            log((epoch, data_iter_step), max_lr, None, dict(model.named_parameters()))
        torch.save({
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch,
        }, os.path.join(out_dir, "checkpoint.pth"))
# [/torch]


# --- JAX: the groups by name ---------------------------------------------------------


# [jax-groups]
def param_groups_lrd_names(params, num_blocks, weight_decay=0.05,
                           no_weight_decay_list=[], layer_decay=.75):
    param_group_names = {}

    num_layers = num_blocks + 1

    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))

    for n, p in params.items():
        # no decay: all 1D parameters and model specific ones
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay = "no_decay"
            this_decay = 0.
        else:
            g_decay = "decay"
            this_decay = weight_decay

        layer_id = get_layer_id_for_vit(n, num_layers)
        group_name = "layer_%d_%s" % (layer_id, g_decay)

        if group_name not in param_group_names:
            this_scale = layer_scales[layer_id]

            param_group_names[group_name] = {
                "lr_scale": this_scale,
                "weight_decay": this_decay,
                "params": [],
            }

        param_group_names[group_name]["params"].append(n)

    return list(param_group_names.values())
# [/jax-groups]


NO_WEIGHT_DECAY = {"pos_embed", "cls_token", "dist_token"}  # model.no_weight_decay()


# --- JAX, the facade ----------------------------------------------------------------

loss_and_grad = jax.jit(jax.value_and_grad(vit_loss))


# [facade]
def main_facade(out_dir, epochs, resume=False, log=None):
    params = fo.interop.to_jax(dict(new_model().named_parameters()))
    if resume:
        checkpoint = torch.load(os.path.join(out_dir, "checkpoint.pth"))
        params = fo.interop.to_jax(checkpoint["model"])
    param_groups = param_groups_lrd_names(
        params, 2, args.weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY,
        layer_decay=args.layer_decay,
    )
    for group in param_groups:
        group["lr"] = args.lr * group["lr_scale"]
    optimizer = fo.AdamW(fo.carve_groups(params, param_groups), lr=args.lr)
    scheduler = fo.lr_scheduler.SequentialLR(optimizer, [
        fo.lr_scheduler.LinearLR(
            optimizer, start_factor=args.warmup_start, total_iters=args.warmup_iters
        ),
        fo.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_iters - args.warmup_iters
        ),
    ], milestones=[args.warmup_iters])
    start_epoch = 0
    if resume:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["lr_scheduler"])
        start_epoch = checkpoint["epoch"] + 1

    for epoch in range(start_epoch, epochs):
        for data_iter_step, (samples, targets) in enumerate(data_loader):
            max_lr = max(group["lr"] for group in optimizer.param_groups)
            loss, grads = loss_and_grad(optimizer.params, samples, targets)
            optimizer.step(grads)
            scheduler.step()
            log((epoch, data_iter_step), max_lr, None, optimizer.params)
        fo.checkpoint.save_torch(os.path.join(out_dir, "checkpoint.pth"), {
            "model": optimizer.params,
            "optimizer": optimizer,
            "lr_scheduler": scheduler,
            "epoch": epoch,
        })
# [/facade]


# --- JAX, functional ----------------------------------------------------------------

# [functional]
def warmup_cosine(lr):
    """SequentialLR(LinearLR, CosineAnnealingLR) of a group starting at ``lr``."""
    return fo.sequential_lr([
        fo.linear_lr(lr, start_factor=args.warmup_start, total_iters=args.warmup_iters),
        fo.cosine_annealing_lr(lr, T_max=total_iters - args.warmup_iters),
    ], milestones=[args.warmup_iters])


def build(params):
    """The optimizer, each group's schedule, and the groups as torch's has them."""
    groups = param_groups_lrd_names(
        params, 2, args.weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY,
        layer_decay=args.layer_decay,
    )
    schedules = [warmup_cosine(args.lr * group["lr_scale"]) for group in groups]
    tx = fo.with_param_groups(fo.adamw, [
        {"params": group["params"], "weight_decay": group["weight_decay"], "lr": lr,
         "lr_scale": group["lr_scale"]}  # kept, as a key of torch's groups
        for group, lr in zip(groups, schedules)
    ])
    return tx, schedules, groups


def train_step(tx):
    @jax.jit
    def step(params, opt_state, samples, targets):
        loss, grads = jax.value_and_grad(vit_loss)(params, samples, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return fo.apply_updates(params, updates), opt_state, loss
    return step


def main_functional(out_dir, epochs, resume=False, log=None):
    params = fo.interop.to_jax(dict(new_model().named_parameters()))
    tx, schedules, groups = build(params)
    order = list(params)  # torch's params by name (its checkpoint has no names)
    opt_state = tx.init(params)
    start_epoch = 0
    if resume:
        checkpoint = torch.load(os.path.join(out_dir, "checkpoint.pth"))
        params = fo.interop.to_jax(checkpoint["model"])
        opt_state = fo.interop.load_torch_state(
            tx, checkpoint["optimizer"], params, order=order
        )
        for g, schedule in enumerate(schedules):  # torch's scheduler is ours
            count = schedule.count_from_torch(checkpoint["lr_scheduler"], group=g)
            assert count == opt_state.count
        start_epoch = checkpoint["epoch"] + 1
    step = train_step(tx)

    for epoch in range(start_epoch, epochs):
        for data_iter_step, (samples, targets) in enumerate(data_loader):
            max_lr = max(schedule(opt_state.count) for schedule in schedules)
            params, opt_state, loss = step(params, opt_state, samples, targets)
            log((epoch, data_iter_step), max_lr, None, params)
        fo.checkpoint.save_torch(os.path.join(out_dir, "checkpoint.pth"), {
            "model": params,
            "optimizer": fo.interop.torch_state_dict(tx, opt_state, params, order),
            "lr_scheduler": fo.interop.torch_scheduler_state_dict(
                schedules, opt_state.count
            ),
            "epoch": epoch,
        })
# [/functional]

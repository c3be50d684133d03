"""nanoGPT (karpathy/nanoGPT): ``GPT.configure_optimizers`` and ``train.py``'s loop,
in torch as written there and ported to JAX (the facade and the functional API).

The model is a stand-in with nanoGPT's parameter names (one block holding its MLP,
no attention, the head tied to the token embedding); ``train.py``'s configuration is
kept, with tiny values. ``log(iter_num, lr, norm, params)`` stands for the loop's
logging and is called after each iteration.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import functorch_optim as fo

# train.py's configuration, tiny; the checkpoint saves it as 'config'
learning_rate = 1e-2
weight_decay = 1e-1
beta1, beta2 = 0.9, 0.95
grad_clip = 1.0
decay_lr = True
warmup_iters = 2
lr_decay_iters = 6
min_lr = 1e-3
gradient_accumulation_steps = 2
eval_interval = 4
batch_size, block_size = 3, 4
model_args = dict(vocab_size=11, block_size=block_size, n_embd=6)
config = dict(
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    warmup_iters=warmup_iters,
    lr_decay_iters=lr_decay_iters,
    min_lr=min_lr,
)


# --- the model: nanoGPT's parameters in miniature, in torch and in JAX -------------


class Block(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.ModuleDict(
            dict(
                c_fc=nn.Linear(n_embd, 4 * n_embd),
                c_proj=nn.Linear(4 * n_embd, n_embd),
            )
        )

    def forward(self, x):
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_embd):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList([Block(n_embd)]),
                ln_f=nn.LayerNorm(n_embd),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1])
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    # model.py, as written there
    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # start with all of the candidate parameters
        param_dict = {pn: p for pn, p in self.named_parameters()}
        # filter out those that do not require grad
        param_dict = {pn: p for pn, p in param_dict.items() if p.requires_grad}
        # create optim groups. Any parameters that is 2D will be weight decayed,
        # otherwise no.
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)
        return optimizer


def layer_norm(x, weight, bias):
    return jax.nn.standardize(x, epsilon=1e-5) * weight + bias  # nn.LayerNorm


def gpt_loss(params, idx, targets):
    """GPT.forward's loss in JAX, over the params by torch's names."""
    p = params
    x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][: idx.shape[1]]
    h = "transformer.h.0."
    y = layer_norm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"])
    y = jax.nn.gelu(y @ p[h + "mlp.c_fc.weight"].T + p[h + "mlp.c_fc.bias"], False)
    x = x + y @ p[h + "mlp.c_proj.weight"].T + p[h + "mlp.c_proj.bias"]
    x = layer_norm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"])
    logits = x @ p["transformer.wte.weight"].T  # lm_head: tied to wte
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def get_batch(iter_num, micro_step):
    """A batch of token ids and targets (NumPy), the same for every run."""
    rng = np.random.default_rng(1000 * iter_num + micro_step)
    data = rng.integers(0, model_args["vocab_size"], (batch_size, block_size + 1))
    return np.ascontiguousarray(data[:, :-1]), np.ascontiguousarray(data[:, 1:])


def new_model(seed=0):
    torch.manual_seed(seed)
    return GPT(**model_args).double()


# train.py, as written there
def get_lr(it):
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) if it > lr_decay_iters, return min learning rate
    if it > lr_decay_iters:
        return min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return min_lr + coeff * (learning_rate - min_lr)


# --- torch: train.py ----------------------------------------------------------------


# [torch]
def train_torch(out_dir, max_iters, init_from="scratch", log=None):
    if init_from == "scratch":
        model = new_model()
        iter_num = 0
    elif init_from == "resume":
        checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"))
        model = GPT(**checkpoint["model_args"]).double()
        state_dict = checkpoint["model"]
        model.load_state_dict(state_dict)
        iter_num = checkpoint["iter_num"]
    optimizer = model.configure_optimizers(
        weight_decay, learning_rate, (beta1, beta2), "cpu"
    )
    if init_from == "resume":
        optimizer.load_state_dict(checkpoint["optimizer"])
    checkpoint = None

    while True:
        lr = get_lr(iter_num) if decay_lr else learning_rate
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr

        if iter_num % eval_interval == 0 and iter_num > 0:
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "model_args": model_args,
                "iter_num": iter_num,
                "config": config,
            }
            torch.save(checkpoint, os.path.join(out_dir, "ckpt.pt"))

        for micro_step in range(gradient_accumulation_steps):
            X, Y = map(torch.from_numpy, get_batch(iter_num, micro_step))
            logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        log(iter_num, lr, norm, dict(model.named_parameters()))
        iter_num += 1
        if iter_num > max_iters:
            break
# [/torch]


# --- JAX, the facade ----------------------------------------------------------------

# [facade-setup]
# torch's model.state_dict() holds the tied head twice, named_parameters() once;
# fo.interop.tied_names(GPT(...)) gives this dict from the torch model
TIED = {"lm_head.weight": "transformer.wte.weight"}

loss_and_grad = jax.jit(
    jax.value_and_grad(lambda p, X, Y: gpt_loss(p, X, Y) / gradient_accumulation_steps)
)


def configure_optimizers(params, weight_decay, learning_rate, betas):
    groups = fo.carve_groups(params, [
        {"params": lambda n, p: p.ndim >= 2, "weight_decay": weight_decay},
        {"params": lambda n, p: p.ndim < 2, "weight_decay": 0.0},
    ])
    return fo.AdamW(groups, lr=learning_rate, betas=betas)
# [/facade-setup]


# [facade]
def train_facade(out_dir, max_iters, init_from="scratch", log=None):
    if init_from == "scratch":
        params = fo.interop.to_jax(dict(new_model().named_parameters()))
        iter_num = 0
    elif init_from == "resume":
        checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"))
        state_dict = checkpoint["model"]
        params = fo.interop.to_jax(
            {k: v for k, v in state_dict.items() if k not in TIED}
        )
        iter_num = checkpoint["iter_num"]
    optimizer = configure_optimizers(
        params, weight_decay, learning_rate, (beta1, beta2)
    )
    if init_from == "resume":
        optimizer.load_state_dict(checkpoint["optimizer"])
    checkpoint = None

    while True:
        lr = get_lr(iter_num) if decay_lr else learning_rate
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr

        if iter_num % eval_interval == 0 and iter_num > 0:
            checkpoint = {
                "model": fo.checkpoint.model_state_dict(optimizer, tied=TIED),
                "optimizer": optimizer,
                "model_args": model_args,
                "iter_num": iter_num,
                "config": config,
            }
            fo.checkpoint.save_torch(os.path.join(out_dir, "ckpt.pt"), checkpoint)

        for micro_step in range(gradient_accumulation_steps):
            X, Y = get_batch(iter_num, micro_step)
            loss, grads = loss_and_grad(optimizer.params, X, Y)
            optimizer.accumulate_grad(grads)
        norm = fo.clip_grad_norm_(optimizer, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        log(iter_num, lr, norm, optimizer.params)
        iter_num += 1
        if iter_num > max_iters:
            break
# [/facade]


# --- JAX, functional ----------------------------------------------------------------

# [functional]
tx = fo.with_param_groups(fo.adamw, [
    {"params": lambda n, p: p.ndim >= 2, "weight_decay": weight_decay},
    {"params": lambda n, p: p.ndim < 2, "weight_decay": 0.0},
], lr=learning_rate, betas=(beta1, beta2))


@jax.jit
def train_step(params, opt_state, X, Y):
    """One iteration: the micro-batches' grads summed (X, Y: one row per
    micro-step), clipped, one AdamW step."""
    grads = None
    for micro_step in range(gradient_accumulation_steps):
        _, g = loss_and_grad(params, X[micro_step], Y[micro_step])
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    grads, norm = fo.clip_by_total_norm(grads, grad_clip)
    updates, opt_state = tx.update(grads, opt_state, params)
    return fo.apply_updates(params, updates), opt_state, norm


def train_functional(out_dir, max_iters, init_from="scratch", log=None):
    if init_from == "scratch":
        params = fo.interop.to_jax(dict(new_model().named_parameters()))
        opt_state = tx.init(params)
        iter_num = 0
    elif init_from == "resume":
        checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"))
        state_dict = checkpoint["model"]
        params = fo.interop.to_jax(
            {k: v for k, v in state_dict.items() if k not in TIED}
        )
        opt_state = fo.interop.load_torch_state(
            tx, checkpoint["optimizer"], params, order=list(params)
        )
        iter_num = checkpoint["iter_num"]
    # torch's params by name: jitted steps return dicts with sorted keys
    order = list(params)
    checkpoint = None

    while True:
        lr = get_lr(iter_num) if decay_lr else learning_rate
        for group in range(len(opt_state.hyperparams)):
            opt_state = fo.set_group_options(opt_state, group, lr=lr)

        if iter_num % eval_interval == 0 and iter_num > 0:
            checkpoint = {
                "model": fo.interop.with_tied(params, TIED),
                "optimizer": fo.interop.torch_state_dict(tx, opt_state, params, order),
                "model_args": model_args,
                "iter_num": iter_num,
                "config": config,
            }
            fo.checkpoint.save_torch(os.path.join(out_dir, "ckpt.pt"), checkpoint)

        X, Y = map(np.stack, zip(*[
            get_batch(iter_num, micro_step)
            for micro_step in range(gradient_accumulation_steps)
        ]))
        params, opt_state, norm = train_step(params, opt_state, X, Y)

        log(iter_num, lr, norm, params)
        iter_num += 1
        if iter_num > max_iters:
            break
# [/functional]

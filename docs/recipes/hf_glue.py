"""Hugging Face's ``run_glue_no_trainer.py`` (transformers' PyTorch text
classification example): AdamW with ``no_decay = ["bias", "LayerNorm.weight"]``
groups, ``get_linear_schedule_with_warmup`` (a torch ``LambdaLR``) stepped with
each optimizer step, gradient accumulation, and ``accelerator.save_state`` /
``load_state`` each epoch; in torch as written there (without accelerate, whose
save_state writes these files) and ported to JAX (the facade and the functional
API).

The model is a stand-in with BERT's parameter names. ``epochs`` is where a run
stops (``args.num_train_epochs`` for the whole run; the schedule always spans
all of it). ``log(key, lr, norm, params)`` stands for the loop's logging.
"""

from __future__ import annotations

import functools
import math
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

import functorch_optim as fo


args = SimpleNamespace(
    learning_rate=5e-2, weight_decay=0.01, gradient_accumulation_steps=2,
    num_train_epochs=3, num_warmup_steps=2, checkpointing_steps="epoch",
)
V, D, LABELS = 9, 4, 2  # vocabulary, width, labels


# --- the model and data: stand-ins, in torch and in JAX -----------------------------


class BertForSequenceClassification(nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = nn.ModuleDict(dict(
            embeddings=nn.ModuleDict(dict(
                word_embeddings=nn.Embedding(V, D), LayerNorm=nn.LayerNorm(D)
            )),
            pooler=nn.ModuleDict(dict(dense=nn.Linear(D, D))),
        ))
        self.classifier = nn.Linear(D, LABELS)

    def forward(self, input_ids, labels):
        embeddings = self.bert.embeddings
        x = embeddings.LayerNorm(embeddings.word_embeddings(input_ids).mean(1))
        logits = self.classifier(torch.tanh(self.bert.pooler.dense(x)))
        return SimpleNamespace(loss=F.cross_entropy(logits, labels), logits=logits)


def layer_norm(x, weight, bias):
    return jax.nn.standardize(x, epsilon=1e-5) * weight + bias  # nn.LayerNorm


def classifier_loss(params, input_ids, labels):
    """The model's loss in JAX, over its params by torch's names."""
    p = params
    e = "bert.embeddings."
    x = p[e + "word_embeddings.weight"][input_ids].mean(1)
    x = layer_norm(x, p[e + "LayerNorm.weight"], p[e + "LayerNorm.bias"])
    x = jnp.tanh(x @ p["bert.pooler.dense.weight"].T + p["bert.pooler.dense.bias"])
    logits = x @ p["classifier.weight"].T + p["classifier.bias"]
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def make_dataloader(n_batches=5, batch_size=3, length=4):
    rng = np.random.default_rng(0)
    return [
        {
            "input_ids": rng.integers(0, V, (batch_size, length)),
            "labels": rng.integers(0, LABELS, batch_size),
        }
        for _ in range(n_batches)
    ]


train_dataloader = make_dataloader()
num_update_steps_per_epoch = math.ceil(
    len(train_dataloader) / args.gradient_accumulation_steps
)
max_train_steps = args.num_train_epochs * num_update_steps_per_epoch


def new_model():
    torch.manual_seed(0)
    return BertForSequenceClassification().double()


def latest_checkpoint(out_dir):
    """The last ``epoch_<i>`` directory the run saved (the script sorts by ctime)."""
    epochs = [int(d.removeprefix("epoch_")) for d in os.listdir(out_dir)]
    return os.path.join(out_dir, f"epoch_{max(epochs)}")


# transformers/optimization.py, as written there
def _get_linear_schedule_with_warmup_lr_lambda(
    current_step: int, *, num_warmup_steps: int, num_training_steps: int
):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    return max(
        0.0,
        float(num_training_steps - current_step)
        / float(max(1, num_training_steps - num_warmup_steps)),
    )


def get_linear_schedule_with_warmup(
    optimizer, num_warmup_steps, num_training_steps, last_epoch=-1
):
    lr_lambda = functools.partial(
        _get_linear_schedule_with_warmup_lr_lambda,
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
    )
    return LambdaLR(optimizer, lr_lambda, last_epoch)


# --- torch: run_glue_no_trainer.py ---------------------------------------------------


# [torch]
def save_state(output_dir, model, optimizer, lr_scheduler):  # accelerator.save_state
    os.makedirs(output_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(output_dir, "pytorch_model.bin"))
    torch.save(optimizer.state_dict(), os.path.join(output_dir, "optimizer.bin"))
    torch.save(lr_scheduler.state_dict(), os.path.join(output_dir, "scheduler.bin"))


def main_torch(out_dir, epochs, resume=False, log=None):
    model = new_model()
    no_decay = ["bias", "LayerNorm.weight"]
    optimizer_grouped_parameters = [
        {
            "params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
            "weight_decay": args.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(optimizer_grouped_parameters, lr=args.learning_rate)
    lr_scheduler = get_linear_schedule_with_warmup(
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps,
        num_training_steps=max_train_steps,
    )
    completed_steps = 0
    starting_epoch = 0
    if resume:  # accelerator.load_state(checkpoint_path)
        checkpoint_path = latest_checkpoint(out_dir)
        model.load_state_dict(torch.load(os.path.join(checkpoint_path, "pytorch_model.bin")))
        optimizer.load_state_dict(torch.load(os.path.join(checkpoint_path, "optimizer.bin")))
        lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint_path, "scheduler.bin")))
        path = os.path.basename(checkpoint_path)
        starting_epoch = int(path.replace("epoch_", "")) + 1
        completed_steps = starting_epoch * num_update_steps_per_epoch

    for epoch in range(starting_epoch, epochs):
        model.train()
        for step, batch in enumerate(train_dataloader):
            batch = {k: torch.from_numpy(v) for k, v in batch.items()}
            outputs = model(**batch)
            loss = outputs.loss
            loss = loss / args.gradient_accumulation_steps
            loss.backward()
            if step % args.gradient_accumulation_steps == 0 or step == len(train_dataloader) - 1:
                lr = lr_scheduler.get_last_lr()[0]
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                completed_steps += 1
                log(completed_steps, lr, None, dict(model.named_parameters()))

            if completed_steps >= max_train_steps:
                break

        if args.checkpointing_steps == "epoch":
            output_dir = f"epoch_{epoch}"
            save_state(os.path.join(out_dir, output_dir), model, optimizer, lr_scheduler)
# [/torch]


# --- JAX, the facade ----------------------------------------------------------------

loss_and_grad = jax.jit(jax.value_and_grad(classifier_loss))


# [facade]
def save_state_facade(output_dir, optimizer, lr_scheduler):
    os.makedirs(output_dir, exist_ok=True)
    path = functools.partial(os.path.join, output_dir)
    fo.checkpoint.save_torch(path("pytorch_model.bin"), optimizer.params)
    fo.checkpoint.save_torch(path("optimizer.bin"), optimizer.state_dict())
    fo.checkpoint.save_torch(path("scheduler.bin"), lr_scheduler.state_dict())


def main_facade(out_dir, epochs, resume=False, log=None):
    params = fo.interop.to_jax(dict(new_model().named_parameters()))
    if resume:
        checkpoint_path = latest_checkpoint(out_dir)
        params = fo.interop.to_jax(torch.load(os.path.join(checkpoint_path, "pytorch_model.bin")))
    no_decay = ["bias", "LayerNorm.weight"]
    optimizer_grouped_parameters = fo.carve_groups(params, [
        {
            "params": lambda n, p: not any(nd in n for nd in no_decay),
            "weight_decay": args.weight_decay,
        },
        {
            "params": lambda n, p: any(nd in n for nd in no_decay),
            "weight_decay": 0.0,
        },
    ])
    optimizer = fo.AdamW(optimizer_grouped_parameters, lr=args.learning_rate)
    lr_scheduler = fo.lr_scheduler.LambdaLR(optimizer, functools.partial(
        _get_linear_schedule_with_warmup_lr_lambda,
        num_warmup_steps=args.num_warmup_steps,
        num_training_steps=max_train_steps,
    ))
    completed_steps = 0
    starting_epoch = 0
    if resume:
        optimizer.load_state_dict(torch.load(os.path.join(checkpoint_path, "optimizer.bin")))
        lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint_path, "scheduler.bin")))
        path = os.path.basename(checkpoint_path)
        starting_epoch = int(path.replace("epoch_", "")) + 1
        completed_steps = starting_epoch * num_update_steps_per_epoch

    for epoch in range(starting_epoch, epochs):
        for step, batch in enumerate(train_dataloader):
            loss, grads = loss_and_grad(optimizer.params, **batch)
            optimizer.accumulate_grad(
                jax.tree.map(lambda g: g / args.gradient_accumulation_steps, grads)
            )
            if step % args.gradient_accumulation_steps == 0 or step == len(train_dataloader) - 1:
                lr = lr_scheduler.get_last_lr()[0]
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                completed_steps += 1
                log(completed_steps, lr, None, optimizer.params)

            if completed_steps >= max_train_steps:
                break

        if args.checkpointing_steps == "epoch":
            output_dir = f"epoch_{epoch}"
            save_state_facade(os.path.join(out_dir, output_dir), optimizer, lr_scheduler)
# [/facade]


# --- JAX, functional ----------------------------------------------------------------

# [functional]
def linear_schedule_with_warmup(num_warmup_steps, num_training_steps):
    """transformers' lr_lambda with jnp.where for Python's if: under jit the
    count is traced, and `if` on it raises TracerBoolConversionError."""
    def lr_lambda(current_step):
        # float(current_step): the count is int32, and int32 / int is float32
        step = jnp.asarray(current_step, float)
        warmup = step / max(1, num_warmup_steps)
        decay = jnp.maximum(
            0.0,
            (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps),
        )
        return jnp.where(step < num_warmup_steps, warmup, decay)
    return lr_lambda


no_decay = ["bias", "LayerNorm.weight"]
groups = [
    {
        "params": lambda n, p: not any(nd in n for nd in no_decay),
        "weight_decay": args.weight_decay,
    },
    {
        "params": lambda n, p: any(nd in n for nd in no_decay),
        "weight_decay": 0.0,
    },
]
lr_schedule = fo.lambda_lr(args.learning_rate, linear_schedule_with_warmup(
    args.num_warmup_steps, max_train_steps
))
tx = fo.with_param_groups(fo.adamw, groups, lr=lr_schedule)
grad_fn = jax.jit(jax.grad(
    lambda p, input_ids, labels:
        classifier_loss(p, input_ids, labels) / args.gradient_accumulation_steps
))


@jax.jit
def apply_grads(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return fo.apply_updates(params, updates), opt_state


def main_functional(out_dir, epochs, resume=False, log=None):
    params = fo.interop.to_jax(dict(new_model().named_parameters()))
    order = list(params)  # torch's params by name (its checkpoint has no names)
    opt_state = tx.init(params)
    completed_steps = 0
    starting_epoch = 0
    if resume:
        checkpoint_path = latest_checkpoint(out_dir)
        load = lambda name: torch.load(os.path.join(checkpoint_path, name))
        params = fo.interop.to_jax(load("pytorch_model.bin"))
        opt_state = fo.interop.load_torch_state(
            tx, load("optimizer.bin"), params, order=order
        )
        count = lr_schedule.count_from_torch(load("scheduler.bin"))
        assert count == opt_state.count  # torch's scheduler is ours
        path = os.path.basename(checkpoint_path)
        starting_epoch = int(path.replace("epoch_", "")) + 1
        completed_steps = starting_epoch * num_update_steps_per_epoch

    grads = None
    for epoch in range(starting_epoch, epochs):
        for step, batch in enumerate(train_dataloader):
            g = grad_fn(params, **batch)
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            if step % args.gradient_accumulation_steps == 0 or step == len(train_dataloader) - 1:
                lr = lr_schedule(opt_state.count)
                params, opt_state = apply_grads(params, opt_state, grads)
                grads = None
                completed_steps += 1
                log(completed_steps, lr, None, params)

            if completed_steps >= max_train_steps:
                break

        if args.checkpointing_steps == "epoch":
            output_dir = os.path.join(out_dir, f"epoch_{epoch}")
            os.makedirs(output_dir, exist_ok=True)
            path = functools.partial(os.path.join, output_dir)
            count = opt_state.count
            fo.checkpoint.save_torch(path("pytorch_model.bin"), params)
            fo.checkpoint.save_torch(
                path("optimizer.bin"),
                fo.interop.torch_state_dict(tx, opt_state, params, order),
            )
            fo.checkpoint.save_torch(
                path("scheduler.bin"),
                fo.interop.torch_scheduler_state_dict([lr_schedule] * 2, count),
            )
# [/functional]

"""Param groups carved from one model tree (``fo.carve_groups``) in the facade, and
tied weights, against torch's recipes.

The recipes: nanoGPT's (decay for params with ``ndim >= 2``, AdamW with betas (0.9,
0.95), the lr written into ``param_groups`` every iteration, gradient accumulation,
clipping, ``zero_grad(set_to_none=True)``, ``lm_head`` tied to ``wte``), Hugging
Face's ``no_decay`` names and MAE's layer-wise ``lr_scale``. torch runs each one on
the same gradients (computed by JAX from the facade's params), in float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import functorch_optim as fo

V, D = 7, 4  # vocabulary, width


class TinyGPT(torch.nn.Module):
    """nanoGPT's parameters in miniature, its head tied to its embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(V, D)
        self.h = torch.nn.ModuleList(
            [torch.nn.ModuleDict({"fc": torch.nn.Linear(D, D)})]
        )
        self.ln_f = torch.nn.LayerNorm(D)
        self.lm_head = torch.nn.Linear(D, V, bias=False)
        self.lm_head.weight = self.wte.weight


def gpt(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    model = TinyGPT().double()
    with torch.no_grad():  # a LayerNorm starts at ones and zeros: make it count
        model.ln_f.weight.uniform_(0.5, 1.5)
        model.ln_f.bias.uniform_(-0.5, 0.5)
    return model


def gpt_loss(params: dict, tokens, targets):
    """The model's loss in JAX, over its params by torch's names (``lm_head``
    reads ``wte``'s weight, as the tie makes torch's)."""
    h = params["wte.weight"][tokens]
    h = h + jnp.tanh(h @ params["h.0.fc.weight"].T + params["h.0.fc.bias"])
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-5)
    logits = (h * params["ln_f.weight"] + params["ln_f.bias"]) @ params["wte.weight"].T
    picked = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


gpt_grad = jax.jit(jax.grad(gpt_loss))


def batch(k: int):
    rng = np.random.default_rng(k)
    return jnp.asarray(rng.integers(0, V, 6)), jnp.asarray(rng.integers(0, V, 6))


def set_torch_grads(model, grads: dict, accumulate: bool = False) -> None:
    """``grads`` (by name) into torch's ``.grad``, summed as ``backward`` sums."""
    for name, p in model.named_parameters():
        g = torch.tensor(np.asarray(grads[name]))
        p.grad = p.grad + g if accumulate and p.grad is not None else g


def assert_params_equal(named: dict, model) -> None:
    for name, p in model.named_parameters():
        np.testing.assert_allclose(
            np.asarray(named[name]), p.detach().numpy(), rtol=1e-10, atol=1e-12
        )


DECAY_BY_NDIM = [
    {"params": lambda name, p: p.ndim >= 2, "weight_decay": 0.1},
    {"params": lambda name, p: p.ndim < 2, "weight_decay": 0.0},
]


def nanogpt_torch_optimizer(model):
    """nanoGPT's configure_optimizers: groups of plain tensors, in
    ``named_parameters()`` order."""
    param_dict = dict(model.named_parameters())
    return torch.optim.AdamW(
        [
            {
                "params": [p for p in param_dict.values() if p.dim() >= 2],
                "weight_decay": 0.1,
            },
            {
                "params": [p for p in param_dict.values() if p.dim() < 2],
                "weight_decay": 0.0,
            },
        ],
        lr=0.05,
        betas=(0.9, 0.95),
    )


def nanogpt_lr(it: int, warmup: int = 2, decay_iters: int = 6) -> float:
    """nanoGPT's get_lr: linear warmup, then cosine decay to a tenth."""
    if it < warmup:
        return 0.05 * (it + 1) / (warmup + 1)
    ratio = min(1.0, (it - warmup) / (decay_iters - warmup))
    return 0.005 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * 0.045


def nanogpt_iteration(it: int, opt, model, torch_opt) -> None:
    """One of nanoGPT's training iterations, the facade's and torch's side by side."""
    lr = nanogpt_lr(it)
    for group, torch_group in zip(opt.param_groups, torch_opt.param_groups):
        group["lr"] = torch_group["lr"] = lr
    for micro in range(2):  # gradient accumulation
        grads = jax.tree.map(
            lambda g: g / 2, gpt_grad(opt.params, *batch(2 * it + micro))
        )
        opt.accumulate_grad(grads)
        set_torch_grads(model, grads, accumulate=True)
    norm = fo.clip_grad_norm_(opt, 1.0)
    torch_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    np.testing.assert_allclose(float(norm), float(torch_norm), rtol=1e-12)
    opt.step()
    torch_opt.step()
    opt.zero_grad(set_to_none=True)
    torch_opt.zero_grad(set_to_none=True)
    assert_params_equal(opt.params, model)


def test_nanogpt_recipe_matches_torch_and_hands_its_state_back():
    model = gpt()
    torch_opt = nanogpt_torch_optimizer(model)
    params = fo.interop.to_jax(dict(model.named_parameters()))
    opt = fo.AdamW(fo.carve_groups(params, DECAY_BY_NDIM), lr=0.05, betas=(0.9, 0.95))

    # the whole tree comes back, in the order given; torch's groups and names stay
    assert (
        list(opt.params)
        == list(params)
        == ["wte.weight", "h.0.fc.weight", "h.0.fc.bias", "ln_f.weight", "ln_f.bias"]
    )
    assert [g["param_names"] for g in opt.param_groups] == [
        ["wte.weight", "h.0.fc.weight"],
        ["h.0.fc.bias", "ln_f.weight", "ln_f.bias"],
    ]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    for it in range(5):
        nanogpt_iteration(it, opt, model, torch_opt)
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3, 4]]
    assert sd["state"].keys() == {0, 1, 2, 3, 4}

    # back to torch: its optimizer numbers the params as the facade does, and its
    # model strictly loads the params with the tied head's key restored
    fresh = gpt(seed=1)
    with pytest.raises(RuntimeError, match='Missing key.*"lm_head.weight"'):
        fresh.load_state_dict(fo.interop.to_torch(opt.params))
    fresh.load_state_dict(
        fo.interop.to_torch(
            fo.interop.with_tied(opt.params, fo.interop.tied_names(fresh))
        )
    )
    assert fresh.lm_head.weight is fresh.wte.weight  # still tied
    # the checkpoint's model entry, as torch's model.state_dict() keys it
    model_sd = fo.checkpoint.model_state_dict(opt, tied=fresh)
    assert list(model_sd) == list(fresh.state_dict())
    assert model_sd["lm_head.weight"] is model_sd["wte.weight"]
    fresh_opt = nanogpt_torch_optimizer(fresh)
    fresh_opt.load_state_dict(fo.interop.to_torch_state_dict(sd))
    for it in range(5, 7):
        nanogpt_iteration(it, opt, fresh, fresh_opt)


NO_DECAY = ["bias", "ln_f.weight"]


def hf_torch_optimizer(model):
    """Hugging Face's grouping by ``no_decay`` names, with named params."""
    named = list(model.named_parameters())
    return torch.optim.AdamW(
        [
            {
                "params": [
                    (n, p) for n, p in named if not any(nd in n for nd in NO_DECAY)
                ],
                "weight_decay": 0.01,
            },
            {
                "params": [(n, p) for n, p in named if any(nd in n for nd in NO_DECAY)],
                "weight_decay": 0.0,
            },
        ],
        lr=0.03,
    )


def test_a_torch_checkpoint_with_tied_weights_resumes_in_the_facade(tmp_path):
    model = gpt()
    torch_opt = hf_torch_optimizer(model)
    for k in range(2):
        torch_opt.zero_grad()
        set_torch_grads(
            model,
            gpt_grad(fo.interop.to_jax(dict(model.named_parameters())), *batch(k)),
        )
        torch_opt.step()
    torch.save(
        {"model": model.state_dict(), "optimizer": torch_opt.state_dict()},
        tmp_path / "ckpt.pt",
    )

    saved = torch.load(tmp_path / "ckpt.pt")
    tied = fo.interop.tied_names(model)
    assert tied == {"lm_head.weight": "wte.weight"}
    assert "lm_head.weight" in saved["model"]  # torch's state_dict has both keys
    params = fo.interop.to_jax(
        {k: v for k, v in saved["model"].items() if k not in tied}
    )
    no_decay = [n for n in params if any(nd in n for nd in NO_DECAY)]
    groups = [  # a predicate, then names: the first group that takes a param has it
        {"params": lambda name, p: name not in no_decay, "weight_decay": 0.01},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt = fo.AdamW(fo.carve_groups(params, groups), lr=0.03)
    opt.load_state_dict(saved["optimizer"])
    # from model.state_dict() as it is, the tied head would be a param of its own
    untied = fo.carve_groups(fo.interop.to_jax(saved["model"]), groups)
    with pytest.raises(ValueError, match="doesn't match the size"):
        fo.AdamW(untied).load_state_dict(saved["optimizer"])
    for k in range(2, 4):
        grads = gpt_grad(opt.params, *batch(k))
        opt.step(grads)  # the whole tree's grads
        set_torch_grads(model, grads)
        torch_opt.step()
        assert_params_equal(opt.params, model)

    # torch's param_names are checked: groups carved otherwise do not take its state
    regrouped = fo.AdamW(
        fo.carve_groups(
            params, [{"params": ["wte.weight"]}, {"params": lambda n, p: True}]
        )
    )
    with pytest.raises(ValueError, match="parameter group"):
        regrouped.load_state_dict(saved["optimizer"])


def test_layerwise_lr_scale_groups_match_torch():
    """MAE's layer-wise lr decay: a group per layer with an ``lr_scale`` that the
    schedule multiplies in; the params a nested tree (a list of layers)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    ).double()
    tree = [
        {
            "weight": fo.interop.to_jax(layer.weight),
            "bias": fo.interop.to_jax(layer.bias),
        }
        for layer in model
    ]
    scales = [0.75**2, 0.75, 1.0]
    opt = fo.AdamW(
        fo.carve_groups(
            tree,
            [
                {"params": [f"{i}.weight", f"{i}.bias"], "lr_scale": scale}
                for i, scale in enumerate(scales)
            ],
        ),
        lr=0.1,
    )
    torch_opt = torch.optim.AdamW(
        [
            {"params": list(layer.parameters()), "lr_scale": scale}
            for layer, scale in zip(model, scales)
        ],
        lr=0.1,
    )

    def loss(layers, x):
        for layer in layers:
            x = jnp.tanh(x @ layer["weight"].T + layer["bias"])
        return jnp.sum(x**2)

    def flat(layers) -> dict:
        return {
            f"{i}.{k}": v for i, layer in enumerate(layers) for k, v in layer.items()
        }

    def steps(ks, torch_opt):
        for k in ks:
            for group, torch_group in zip(opt.param_groups, torch_opt.param_groups):
                group["lr"] = torch_group["lr"] = 0.1 * 0.8**k * group["lr_scale"]
            x = jnp.asarray(np.random.default_rng(k).standard_normal((5, 3)))
            grads = jax.grad(loss)(opt.params, x)
            opt.step(grads)
            set_torch_grads(model, flat(grads))
            torch_opt.step()
            assert_params_equal(flat(opt.params), model)

    steps(range(3), torch_opt)
    assert jax.tree.structure(opt.params) == jax.tree.structure(tree)
    sd = opt.state_dict()
    assert [g["lr_scale"] for g in sd["param_groups"]] == scales
    assert [g["param_names"] for g in sd["param_groups"]] == [
        [f"{i}.weight", f"{i}.bias"] for i in range(3)
    ]
    fresh_opt = torch.optim.AdamW(
        [{"params": list(layer.parameters()), "lr_scale": 1.0} for layer in model]
    )
    fresh_opt.load_state_dict(fo.interop.to_torch_state_dict(sd))
    assert [g["lr_scale"] for g in fresh_opt.param_groups] == scales
    steps(range(3, 5), fresh_opt)


def test_every_call_takes_and_gives_the_whole_tree():
    params = {
        "embed": jnp.ones((3, 2)),
        "block": {"w": jnp.full((2, 2), 2.0), "b": jnp.zeros(2)},
        "norm": jnp.ones(2),
    }
    opt = fo.SGD(fo.carve_groups(params, DECAY_BY_NDIM), lr=0.1, momentum=0.9)
    ones = jax.tree.map(jnp.ones_like, params)
    assert opt.grads == {"embed": None, "block": {"w": None, "b": None}, "norm": None}

    opt.step({**ones, "norm": None})  # a None leaf: that param is not stepped
    assert 3 not in opt.state  # norm, id 3: group 1's second param
    np.testing.assert_array_equal(opt.params["norm"], params["norm"])
    np.testing.assert_array_equal(opt.params["block"]["b"], jnp.full(2, -0.1))
    assert list(opt.params) == ["embed", "block", "norm"]
    assert list(opt.params["block"]) == ["w", "b"]

    opt.zero_grad(set_to_none=False)  # zeros stay zeros, None stays None
    assert opt.grads["norm"] is None and not opt.grads["embed"].any()
    opt.accumulate_grad(ones)
    np.testing.assert_array_equal(opt.grads["norm"], ones["norm"])

    def loss_fn(p):
        return jnp.sum(p["block"]["w"] ** 2) + jnp.sum(p["norm"])

    expected = float(loss_fn(opt.params))
    assert float(opt.step(loss_fn)) == expected
    assert opt.grads["block"]["b"] is not None and not opt.grads["block"]["b"].any()

    opt.params = params  # the whole tree, as torch's model.load_state_dict
    np.testing.assert_array_equal(opt.params["block"]["w"], params["block"]["w"])
    with pytest.raises(ValueError, match="structure of the params tree"):
        opt.step({"embed": ones["embed"]})
    with pytest.raises(RuntimeError, match="different size"):
        opt.step({**ones, "norm": jnp.ones(3)})
    with pytest.raises(ValueError, match="carved from one params tree"):
        opt.add_param_group({"params": [jnp.ones(2)]})

    # a group may take nothing (a model without biases), and is still named
    empty = fo.AdamW(fo.carve_groups({"w": jnp.ones((2, 2))}, DECAY_BY_NDIM))
    assert empty.param_groups[1]["params"] == empty.param_groups[1]["param_names"] == []


def test_the_grads_of_the_whole_tree_need_carved_groups():
    """Groups given as one tree per group take grads as one tree per group; the
    error for the model's whole grads points to carve_groups."""
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    opt = fo.AdamW([{"params": {"w": params["w"]}}, {"params": {"b": params["b"]}}])
    with pytest.raises(ValueError, match="fo.carve_groups"):
        opt.step(jax.tree.map(jnp.ones_like, params))


def test_with_tied_refuses_what_it_cannot_restore():
    w = jnp.ones(2)
    with pytest.raises(ValueError, match=r"already in the params: \['a'\]"):
        fo.interop.with_tied({"a": w}, {"a": "a"})
    with pytest.raises(ValueError, match=r"not in them: \['b'\]"):
        fo.interop.with_tied({"a": w}, {"c": "b"})

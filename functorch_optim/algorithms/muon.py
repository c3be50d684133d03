"""Muon: momentum orthogonalised by Newton-Schulz (torch.optim.Muon)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core import GradientTransformation
from ..doubled import rounded
from ..functional import make_transform
from ..kernels import add_step, lerp_kernel, mul
from ..rule import Algorithm, Array, Hyperparameter, Options, require

# torch's defaults, from Keller Jordan's Muon.
EPS = 1e-7
DEFAULT_A = 3.4445
DEFAULT_B = -4.7750
DEFAULT_C = 2.0315
DEFAULT_NS_STEPS = 5

_ADJUST_LR_FNS = ("original", "match_rms_adamw")


def _validate(o: Options) -> None:
    require(lambda v: 0.0 <= v, o.lr, f"Learning rate should be >= 0 but is: {o.lr}")
    require(
        lambda v: 0.0 <= v, o.momentum, f"momentum should be >= 0 but is: {o.momentum}"
    )
    require(
        lambda v: 0.0 <= v,
        o.weight_decay,
        f"weight decay should be >= 0 but is: {o.weight_decay}",
    )
    if o.adjust_lr_fn is not None and o.adjust_lr_fn not in _ADJUST_LR_FNS:
        raise ValueError(
            f"Adjust learning rate function {o.adjust_lr_fn} is not supported"
        )


def _init(param, o: Options) -> dict:
    if param.ndim != 2:
        raise ValueError(
            "Muon only supports 2D parameters whereas we found a parameter with "
            f"size: torch.Size({list(param.shape)})"
        )
    return {"momentum_buffer": jnp.zeros_like(param)}


def _bf16_matmul(x, y):
    """A bfloat16 product accumulated in float32, as torch's CPU kernel does."""
    return jnp.matmul(x, y, preferred_element_type=jnp.float32)


def _normalized_bf16(x, eps: float):
    """``x.bfloat16()`` divided in place by its Frobenius norm (at least eps)."""
    bf16, f32 = jnp.bfloat16, jnp.float32
    wide = x.astype(bf16).astype(f32)
    norm = jnp.sqrt(jnp.sum(wide * wide)).astype(bf16)
    norm = jnp.maximum(norm.astype(f32), eps).astype(bf16)
    return (wide / norm.astype(f32)).astype(bf16)


def zeropower_via_newtonschulz(grad, ns_coefficients, ns_steps: int, eps: float):
    r"""Approximately orthogonalise a matrix, in bfloat16 as torch does.

    With :math:`X_0 = G / \max(\lVert G \rVert_F, \epsilon)` (transposed so that
    it is wide) and :math:`(a, b, c)` the coefficients, ``ns_steps`` times:

    .. math::
        A = X X^\top, \quad B = b A + c A^2, \quad X \leftarrow a X + B X

    The result is close to :math:`U S' V^\top` for :math:`G = U S V^\top`, with
    :math:`S'` diagonal and its entries roughly in :math:`[0.5, 1.5]`.

    Every product is rounded to bfloat16 where torch rounds it: each ``addmm``
    accumulates in float32 and is rounded once.
    """
    # A traced count (optax.inject_hyperparams makes one of a given int) cannot
    # be checked; fori_loop runs it.
    require(
        lambda v: v < 100,
        ns_steps,
        "Number of steps must be less than 100 for computational efficiency",
    )
    if grad.ndim != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = ns_coefficients
    bf16, f32 = jnp.bfloat16, jnp.float32
    tall = grad.shape[0] > grad.shape[1]
    x = _normalized_bf16(grad, eps)
    if tall:
        x = x.T

    def iteration(_, x):
        gram = _bf16_matmul(x, x.T).astype(bf16)
        gram_update = (c * _bf16_matmul(gram, gram) + b * gram.astype(f32)).astype(bf16)
        return (_bf16_matmul(gram_update, x) + a * x.astype(f32)).astype(bf16)

    # A loop, not an unrolled chain: the compiled program does not grow with ns_steps.
    x = jax.lax.fori_loop(0, ns_steps, iteration, x)
    return x.T if tall else x


def adjusted_lr(lr, adjust_lr_fn, param_shape):
    """torch's ``_adjust_lr``: scale lr so the update's RMS is shape-independent."""
    rows, cols = param_shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    else:  # "match_rms_adamw" (the constructor rejects other names)
        ratio = 0.2 * math.sqrt(max(rows, cols))
    return lr * ratio


def _step(param, grad, state, o: Options, s: None):
    if jnp.iscomplexobj(param):
        raise RuntimeError("Muon does not support complex parameters")
    momentum = o.momentum
    buf = lerp_kernel(state["momentum_buffer"], grad, 1 - momentum)
    update = lerp_kernel(grad, buf, momentum) if o.nesterov else buf
    eps = rounded(o.eps)
    ortho = zeropower_via_newtonschulz(update, o.ns_coefficients, o.ns_steps, eps)
    if not o.nesterov and buf.dtype == jnp.bfloat16:
        # For a bfloat16 buffer torch's ``update.bfloat16()`` is the buffer itself,
        # and the in-place normalisation writes into momentum_buffer.
        buf = _normalized_bf16(buf, eps)
    lr = adjusted_lr(o.lr, o.adjust_lr_fn, param.shape)

    param = mul(param, 1 - o.lr * o.weight_decay)
    # param (any float dtype) + bf16 update: torch promotes, then adds in opmath.
    new_param = add_step(param, ortho, -lr)
    return new_param, {"momentum_buffer": buf}


class MuonState(NamedTuple):
    """The state of :func:`muon`: the step count and torch's per-parameter
    entries, each a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    momentum_buffer: Any


def muon(
    lr: Hyperparameter = 1e-3,
    weight_decay: Hyperparameter = 0.1,
    momentum: Hyperparameter = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[Hyperparameter, Hyperparameter, Hyperparameter] = (
        DEFAULT_A,
        DEFAULT_B,
        DEFAULT_C,
    ),
    eps: Hyperparameter = EPS,
    ns_steps: int = DEFAULT_NS_STEPS,
    adjust_lr_fn: str | None = None,
) -> GradientTransformation[MuonState]:
    r"""Muon (``torch.optim.Muon``), for 2-D parameters.

    With :math:`g_t` the gradient, :math:`\mu` the momentum, :math:`\lambda` the
    weight decay and :math:`\mathrm{NS}` the Newton-Schulz orthogonalisation
    (:func:`zeropower_via_newtonschulz`, run in bfloat16 as torch runs it):

    .. math::
        B_t &\leftarrow \mu B_{t-1} + (1 - \mu) g_t \\
        \tilde B_t &\leftarrow (1 - \mu) g_t + \mu B_t
            \text{ if nesterov, else } B_t \\
        O_t &\leftarrow \mathrm{NS}^{(a,b,c)}_k(\tilde B_t; \epsilon) \\
        \theta_t &\leftarrow \theta_{t-1}(1 - \gamma\lambda) - \gamma' O_t

    where :math:`\gamma' = \gamma \sqrt{\max(1, A/B)}` for ``adjust_lr_fn`` None or
    ``"original"`` and :math:`\gamma' = 0.2\gamma\sqrt{\max(A, B)}` for
    ``"match_rms_adamw"``, :math:`A \times B` the parameter's shape. ``init``
    rejects parameters that are not 2-D with torch's ValueError; complex
    parameters get torch's RuntimeError.

    Args:
      lr: learning rate :math:`\gamma`.
      weight_decay: decoupled weight decay :math:`\lambda`.
      momentum: momentum factor :math:`\mu`.
      nesterov: use the Nesterov-style look-ahead :math:`\tilde B_t`.
      ns_coefficients: the quintic's coefficients :math:`(a, b, c)`.
      eps: lower bound of the Frobenius norm the input is divided by.
      ns_steps: number :math:`k` of Newton-Schulz iterations (< 100).
      adjust_lr_fn: None, ``"original"`` or ``"match_rms_adamw"``.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is a
      :class:`MuonState`.

    Example:
      >>> tx = fo.muon(lr=0.02, momentum=0.95)
      >>> state = tx.init(params)                   # 2-D leaves only
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """
    return make_transform(MUON, locals())


MUON = Algorithm(
    name="Muon",
    functional=muon,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=MuonState,
    keeps_step=False,  # torch's Muon keeps no step
    complex_as_real=False,  # torch rejects complex parameters
)

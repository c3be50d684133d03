"""L-BFGS (``torch.optim.LBFGS``) with one whole ``step()`` compiled by XLA.

torch's ``LBFGS.step(closure)`` runs up to ``max_iter`` quasi-Newton iterations, each
with a two-loop recursion over the last ``history_size`` curvature pairs and either a
fixed step or a strong-Wolfe line search (cubic interpolation, minFunc's scheme).
Here the iterations are one ``lax.while_loop`` and the line search two nested ones, so
a step, line search included, is a single XLA computation that jits, vmaps and scans.

The parameters (any pytree; complex leaves as ``view_as_real``, as torch does) are
flattened into one vector; the state is torch's, with fixed shapes: the curvature
pairs live in ring buffers of ``history_size`` rows.
"""

from __future__ import annotations

import inspect
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from . import interop
from .algorithms.base import (
    Algorithm,
    Options,
    check_scalar_lr,
    require,
    to_complex,
    to_real,
)
from .checks import check_param_dtypes
from .core import GradientTransformation, scalar_dtype, updates_between
from .facade import Optimizer

Array = jax.Array

# Ring-buffer bookkeeping kept next to torch's state entries: the physical row of
# torch's ``old_dirs[0]`` and how many pairs torch's lists hold.
HISTORY_START = "history_start"
HISTORY_LEN = "history_len"

# torch's LBFGS state entries, in the order torch creates them.
TORCH_STATE = (
    "func_evals",
    "n_iter",
    "d",
    "t",
    "old_dirs",
    "old_stps",
    "ro",
    "H_diag",
    "prev_flat_grad",
    "prev_loss",
    "al",
)

# torch only stores a curvature pair when y·s exceeds this.
_CURVATURE_EPS = 1e-10
# torch calls _strong_wolfe with its own defaults: c1, c2 and tolerance_change are
# not the optimizer's options.
_WOLFE_C1 = 1e-4
_WOLFE_C2 = 0.9
_WOLFE_TOLERANCE_CHANGE = 1e-9


# --- flattening ----------------------------------------------------------------


def flatten(params: Any) -> tuple[Array, Callable[[Array], Any]]:
    """A pytree as one real vector (complex leaves as ``view_as_real``), and back.

    The vector's dtype is the leaves' common real dtype, as ``torch.cat`` of torch's
    flattened views.
    """
    flat, unravel_real = ravel_pytree(jax.tree.map(to_real, params))

    def unflatten(vector: Array) -> Any:
        return jax.tree.map(to_complex, unravel_real(vector), params)

    return flat, unflatten


def flatten_grads(grads: Any) -> Array:
    """torch's flat gradient from JAX gradients.

    For a complex leaf JAX's gradient of a real function is the conjugate of torch's
    (``df/dx - i df/dy``); torch's ``view_as_real`` gradient is ``(df/dx, df/dy)``.
    """
    torch_grads = jax.tree.map(
        lambda g: jnp.conj(g) if jnp.iscomplexobj(g) else g, grads
    )
    return flatten(torch_grads)[0]


# --- scalar helpers with Python's min/max semantics ----------------------------


def _py_max(a, b):
    """Python's ``max(a, b)``: ``b`` only when ``b > a`` (so NaN ``a`` is kept)."""
    return jnp.where(b > a, b, a)


def _py_min(a, b):
    """Python's ``min(a, b)``: ``b`` only when ``b < a``."""
    return jnp.where(b < a, b, a)


def _abs_max(x: Array) -> Array:
    # initial=0 makes an empty parameter vector read as already optimal instead of
    # failing on an empty reduction (torch raises there).
    return jnp.max(jnp.abs(x), initial=0)


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """torch's ``_cubic_interpolate``: minimizer of the cubic through two points.

    With the derivatives ``g1, g2`` at ``x1, x2`` (``x2`` the farther point):

    .. math::
        d_1 = g_1 + g_2 - 3 \\frac{f_1 - f_2}{x_1 - x_2}, \\quad
        d_2 = \\sqrt{d_1^2 - g_1 g_2}, \\quad
        x^* = x_2 - (x_2 - x_1) \\frac{g_2 + d_2 - d_1}{g_2 - g_1 + 2 d_2}

    clipped to ``bounds`` (default: the interval between the points), or the middle
    of the bounds when the cubic has no real minimizer.
    """
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        ordered = x1 <= x2
        xmin_bound = jnp.where(ordered, x1, x2)
        xmax_bound = jnp.where(ordered, x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    real_root = d2_square >= 0
    d2 = jnp.sqrt(jnp.where(real_root, d2_square, 0))
    min_pos = jnp.where(
        x1 <= x2,
        x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)),
        x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2)),
    )
    clipped = _py_min(_py_max(min_pos, xmin_bound), xmax_bound)
    return jnp.where(real_root, clipped, (xmin_bound + xmax_bound) / 2.0)


# --- strong-Wolfe line search ----------------------------------------------------


class _Search(NamedTuple):
    """The bracketing phase's loop state: the current and the previous trial."""

    t: Array
    f_new: Array
    g_new: Array
    gtd_new: Array
    t_prev: Array
    f_prev: Array
    g_prev: Array
    gtd_prev: Array
    ls_iter: Array


class _Zoom(NamedTuple):
    """The zoom phase's loop state: a bracket of two trials, low one at ``low``."""

    t: Array  # (2,) step lengths
    f: Array  # (2,) losses
    g: Array  # (2, n) gradients
    gtd: Array  # (2,) directional derivatives
    low: Array
    insuf_progress: Array
    done: Array
    ls_iter: Array


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, max_ls):
    """torch's ``_strong_wolfe`` (minFunc's ``lswolfe``) as two ``while_loop``s.

    Finds ``t`` with the strong Wolfe conditions
    :math:`f(x + t d) \\le f + c_1 t\\, g^\\top d` and
    :math:`|\\nabla f(x + t d)^\\top d| \\le -c_2\\, g^\\top d`: first bracketing a
    point (extrapolating by cubic interpolation within ``[t + 0.01 (t - t_prev),
    10 t]``), then zooming into the bracket. Every trial costs one evaluation, and
    there are at most ``max_ls`` after the first.

    Returns:
      ``(f_new, g_new, t, ls_func_evals)`` as torch.
    """
    c1, c2 = _WOLFE_C1, _WOLFE_C2
    d_norm = _abs_max(d)
    f_new, g_new = obj_func(x, t, d)
    zero = jnp.zeros_like(t)

    def stop_reason(s: _Search):
        # torch's three tests, in order: 1 = bracket [t_prev, t], 2 = Wolfe point
        # found, 0 = keep extrapolating.
        armijo_fails = (s.f_new > (f + c1 * s.t * gtd)) | (
            (s.ls_iter > 1) & (s.f_new >= s.f_prev)
        )
        wolfe = jnp.abs(s.gtd_new) <= -c2 * gtd
        return jnp.where(
            armijo_fails, 1, jnp.where(wolfe, 2, jnp.where(s.gtd_new >= 0, 1, 0))
        )

    def extrapolate(s: _Search) -> _Search:
        min_step = s.t + 0.01 * (s.t - s.t_prev)
        max_step = s.t * 10
        t_next = _cubic_interpolate(
            s.t_prev,
            s.f_prev,
            s.gtd_prev,
            s.t,
            s.f_new,
            s.gtd_new,
            bounds=(min_step, max_step),
        )
        f_next, g_next = obj_func(x, t_next, d)
        return _Search(
            t_next,
            f_next,
            g_next,
            g_next @ d,
            s.t,
            s.f_new,
            s.g_new,
            s.gtd_new,
            s.ls_iter + 1,
        )

    s = lax.while_loop(
        lambda s: (s.ls_iter < max_ls) & (stop_reason(s) == 0),
        extrapolate,
        _Search(t, f_new, g_new, g_new @ d, zero, f, g, gtd, jnp.int32(0)),
    )
    # torch runs the tests only while ls_iter < max_ls; after the last extrapolation
    # it brackets [0, t] without testing the new point.
    reason = jnp.where(s.ls_iter < max_ls, stop_reason(s), 0)

    def low_end(from_prev, from_point, from_origin):
        # The bracket's first end: the previous trial, the Wolfe point itself (a
        # bracket of one point), or the origin after max_ls trials.
        return jnp.where(
            reason == 1, from_prev, jnp.where(reason == 2, from_point, from_origin)
        )

    bracket_f = jnp.stack([low_end(s.f_prev, s.f_new, f), s.f_new])
    zoom = _Zoom(
        t=jnp.stack([low_end(s.t_prev, s.t, zero), s.t]),
        f=bracket_f,
        g=jnp.stack([low_end(s.g_prev, s.g_new, g), s.g_new]),
        gtd=jnp.stack([low_end(s.gtd_prev, s.gtd_new, gtd), s.gtd_new]),
        low=jnp.where(bracket_f[0] <= bracket_f[1], 0, 1),
        insuf_progress=jnp.bool_(False),
        done=reason == 2,
        ls_iter=s.ls_iter,
    )

    def keep_zooming(z: _Zoom):
        # the bracket is not yet too small to refine
        too_small = jnp.abs(z.t[1] - z.t[0]) * d_norm < _WOLFE_TOLERANCE_CHANGE
        return ~z.done & (z.ls_iter < max_ls) & ~too_small

    def refine(z: _Zoom) -> _Zoom:
        high = 1 - z.low
        t_new = _cubic_interpolate(z.t[0], z.f[0], z.gtd[0], z.t[1], z.f[1], z.gtd[1])
        # A trial too close to an end (within 10% of the bracket) after an earlier
        # such trial, or outside the bracket, moves 10% inside the nearer end.
        b_max = _py_max(z.t[0], z.t[1])
        b_min = _py_min(z.t[0], z.t[1])
        eps = 0.1 * (b_max - b_min)
        near_end = _py_min(b_max - t_new, t_new - b_min) < eps
        at_end = z.insuf_progress | (t_new >= b_max) | (t_new <= b_min)
        moved = jnp.where(
            jnp.abs(t_new - b_max) < jnp.abs(t_new - b_min), b_max - eps, b_min + eps
        )
        t_new = jnp.where(near_end & at_end, moved, t_new)
        insuf_progress = near_end & ~at_end

        f_new, g_new = obj_func(x, t_new, d)
        gtd_new = g_new @ d

        def put(arrays, index, value):
            return tuple(a.at[index].set(v) for a, v in zip(arrays, value))

        new_point = (t_new, f_new, g_new, gtd_new)
        bracket = (z.t, z.f, z.g, z.gtd)
        high_worse = (f_new > (f + c1 * t_new * gtd)) | (f_new >= z.f[z.low])
        wolfe = jnp.abs(gtd_new) <= -c2 * gtd
        # Armijo fails or no lower than the low end: the new point is the high end.
        as_high = put(bracket, high, new_point)
        # Otherwise it becomes the low end, the old low first becoming the high end
        # when the derivative says the minimum lies on the other side.
        flip = ~wolfe & (gtd_new * (z.t[high] - z.t[z.low]) >= 0)
        flipped = put(
            bracket, high, tuple(jnp.where(flip, a[z.low], a[high]) for a in bracket)
        )
        as_low = put(flipped, z.low, new_point)
        t_b, f_b, g_b, gtd_b = (
            jnp.where(high_worse, a, b) for a, b in zip(as_high, as_low)
        )
        low = jnp.where(high_worse, jnp.where(f_b[0] <= f_b[1], 0, 1), z.low)
        return _Zoom(
            t_b,
            f_b,
            g_b,
            gtd_b,
            low,
            insuf_progress,
            ~high_worse & wolfe,
            z.ls_iter + 1,
        )

    z = lax.while_loop(keep_zooming, refine, zoom)
    # every trial after the first counted one iteration
    return z.f[z.low], z.g[z.low], z.t[z.low], z.ls_iter + 1


# --- the L-BFGS iterations -------------------------------------------------------


def _two_loop(flat_grad, state, history_size):
    """The L-BFGS direction :math:`-H g` by the two-loop recursion (torch's order).

    .. math::
        q &= -g;\\quad \\alpha_i = \\rho_i s_i^\\top q,\\ q \\mathrel{-}= \\alpha_i y_i
            \\quad (i = m-1 \\dots 0) \\\\
        r &= \\gamma q;\\quad \\beta_i = \\rho_i y_i^\\top r,\\
            r \\mathrel{+}= (\\alpha_i - \\beta_i) s_i \\quad (i = 0 \\dots m-1)

    Returns the direction and torch's ``al`` (the :math:`\\alpha_i`).
    """
    old_dirs, old_stps, ro = state["old_dirs"], state["old_stps"], state["ro"]
    start, num_old = state[HISTORY_START], state[HISTORY_LEN]

    def row(i):
        return (start + i) % history_size

    def backward(k, carry):
        q, al = carry
        i = num_old - 1 - k
        j = row(i)
        al_i = old_stps[j] @ q * ro[j]
        return q + (-al_i) * old_dirs[j], al.at[i].set(al_i)

    q, al = lax.fori_loop(0, num_old, backward, (-flat_grad, state["al"]))

    def forward(i, r):
        j = row(i)
        be_i = old_dirs[j] @ r * ro[j]
        return r + (al[i] - be_i) * old_stps[j]

    return lax.fori_loop(0, num_old, forward, q * state["H_diag"]), al


def _update_memory(flat_grad, state, history_size):
    """Store the pair ``y = g - g_prev, s = t d`` when ``y·s > 1e-10``, as torch.

    A full history drops its oldest pair: the ring buffer overwrites the oldest row
    and advances its start. The initial Hessian scale becomes ``y·s / y·y``.
    """
    y = flat_grad - state["prev_flat_grad"]
    s = state["d"] * state["t"]
    ys = y @ s
    accept = ys > _CURVATURE_EPS
    start, num_old = state[HISTORY_START], state[HISTORY_LEN]
    full = num_old == history_size
    row = (start + num_old) % history_size  # the oldest row when full

    def store(buffer, value):
        return buffer.at[row].set(jnp.where(accept, value, buffer[row]))

    return {
        **state,
        "old_dirs": store(state["old_dirs"], y),
        "old_stps": store(state["old_stps"], s),
        "ro": store(state["ro"], 1.0 / ys),
        "H_diag": jnp.where(accept, ys / (y @ y), state["H_diag"]),
        HISTORY_START: jnp.where(accept & full, (start + 1) % history_size, start),
        HISTORY_LEN: jnp.where(accept & ~full, num_old + 1, num_old),
    }


class _Iteration(NamedTuple):
    """The outer loop's state: torch's locals of ``step()`` and its ``state``."""

    x: Array
    loss: Array
    flat_grad: Array
    opt_cond: Array
    n_iter: Array  # iterations in this step() call
    current_evals: Array
    done: Array
    state: dict


def _lbfgs_step(value_and_grad, x, loss, flat_grad, state, o: Options):
    """One torch ``LBFGS.step()`` from the first evaluation ``(loss, flat_grad)`` at x.

    Returns the final flat parameters and the new state.
    """
    dtype = x.dtype
    lr = jnp.asarray(o.lr, dtype)
    tolerance_grad = jnp.asarray(o.tolerance_grad, dtype)
    tolerance_change = jnp.asarray(o.tolerance_change, dtype)
    history_size, max_iter, max_eval = o.history_size, o.max_iter, o.max_eval

    def obj_func(x, t, d):
        return value_and_grad(x + t * d)

    def direction(flat_grad, state):
        def first(state):
            # torch's first iteration ever: steepest descent, empty history.
            return -flat_grad, {
                **state,
                "H_diag": jnp.ones_like(state["H_diag"]),
                HISTORY_START: jnp.zeros_like(state[HISTORY_START]),
                HISTORY_LEN: jnp.zeros_like(state[HISTORY_LEN]),
            }

        def quasi_newton(state):
            state = _update_memory(flat_grad, state, history_size)
            d, al = _two_loop(flat_grad, state, history_size)
            return d, {**state, "al": al}

        return lax.cond(state["n_iter"] == 1, first, quasi_newton, state)

    def iteration(it: _Iteration) -> _Iteration:
        n_iter = it.n_iter + 1
        state = {**it.state, "n_iter": it.state["n_iter"] + 1}
        d, state = direction(it.flat_grad, state)
        # torch's first step length is min(1, 1/|g|_1) lr, to tame a raw gradient.
        inv_g1 = 1.0 / jnp.sum(jnp.abs(it.flat_grad))
        t = jnp.where(
            state["n_iter"] == 1, jnp.where(inv_g1 < 1.0, inv_g1, 1.0) * lr, lr
        ).astype(dtype)
        state = {
            **state,
            "d": d,
            "t": t,
            "prev_flat_grad": it.flat_grad,
            "prev_loss": it.loss,
        }
        gtd = it.flat_grad @ d

        def move(_):
            if o.line_search_fn == "strong_wolfe":
                loss, flat_grad, t_ls, ls_evals = _strong_wolfe(
                    obj_func,
                    it.x,
                    t,
                    d,
                    it.loss,
                    it.flat_grad,
                    gtd,
                    max_ls=max_eval - it.current_evals,
                )
                x = it.x + t_ls * d
                return (
                    x,
                    loss,
                    flat_grad,
                    _abs_max(flat_grad) <= tolerance_grad,
                    t_ls,
                    ls_evals,
                )
            x = it.x + t * d

            def evaluate(_):
                loss, flat_grad = value_and_grad(x)
                return loss, flat_grad, _abs_max(flat_grad) <= tolerance_grad, 1

            def skip(_):
                # the last iteration does not re-evaluate: the caller evaluates next
                return it.loss, it.flat_grad, it.opt_cond, 0

            loss, flat_grad, opt_cond, evals = lax.cond(
                n_iter != max_iter, evaluate, skip, None
            )
            return x, loss, flat_grad, opt_cond, t, jnp.int32(evals)

        def stay(_):
            # directional derivative above -tolerance_change: no descent, stop.
            return it.x, it.loss, it.flat_grad, it.opt_cond, t, jnp.int32(0)

        no_descent = gtd > -tolerance_change
        x, loss, flat_grad, opt_cond, t, ls_evals = lax.cond(
            no_descent, stay, move, None
        )
        current_evals = it.current_evals + ls_evals
        state = {
            **state,
            "t": t,
            "func_evals": state["func_evals"] + ls_evals,
        }
        done = (
            no_descent
            | (n_iter == max_iter)
            | (current_evals >= max_eval)
            | opt_cond
            | (_abs_max(d * t) <= tolerance_change)
            | (jnp.abs(loss - state["prev_loss"]) < tolerance_change)
        )
        return _Iteration(
            x, loss, flat_grad, opt_cond, n_iter, current_evals, done, state
        )

    opt_cond = _abs_max(flat_grad) <= tolerance_grad
    state = {**state, "func_evals": state["func_evals"] + 1}
    start = _Iteration(
        x, loss, flat_grad, opt_cond, jnp.int32(0), jnp.int32(1), opt_cond, state
    )
    it = lax.while_loop(lambda it: ~it.done & (it.n_iter < max_iter), iteration, start)
    return it.x, it.state


# --- public API --------------------------------------------------------------------


# Options that are plain values (they decide no shape and no code path): they may be
# traced, so changing them between steps does not recompile.
VALUE_OPTIONS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change")


def validate(o: Options) -> None:
    """torch's constructor checks, plus what the ring buffers need to be built."""
    check_scalar_lr(o.lr)
    require(lambda v: 0.0 <= v, o.lr, f"Invalid learning rate: {o.lr}")
    if callable(o.lr):
        raise TypeError("lbfgs takes a number or a JAX scalar lr, not a schedule")
    # history_size sizes the ring buffers, so it must be known when tracing.
    if not isinstance(o.history_size, (int, np.integer)) or isinstance(
        o.history_size, bool
    ):
        raise TypeError(f"lbfgs's history_size must be an int, got {o.history_size!r}")
    if o.history_size < 1:
        # torch fails later, popping from an empty history.
        raise ValueError(f"Invalid history_size: {o.history_size}")


def check_line_search(o: Options) -> None:
    """torch's check of ``line_search_fn``, which torch makes in ``step()``."""
    if o.line_search_fn is not None and o.line_search_fn != "strong_wolfe":
        raise RuntimeError("only 'strong_wolfe' is supported")


def lbfgs_options(**given) -> Options:
    """torch's LBFGS options from keywords, validated as torch's constructor.

    ``max_eval=None`` becomes torch's ``max_iter * 5 // 4``.
    """
    options = Options(given)
    if options.max_eval is None:
        options["max_eval"] = options.max_iter * 5 // 4
    validate(options)
    return options


def init_state(flat: Array, history_size: int) -> dict:
    """The state before the first step, for a flat parameter vector ``flat``."""
    n, dtype = flat.shape[0], flat.dtype
    # a fresh buffer per entry: the facade donates the state, and XLA cannot donate
    # one buffer twice
    vector = lambda: jnp.zeros((n,), dtype)
    scalar = lambda: jnp.zeros((), dtype)
    count = lambda: jnp.zeros((), jnp.int32)
    return {
        "func_evals": count(),
        "n_iter": count(),
        "d": vector(),
        "t": scalar(),
        "old_dirs": jnp.zeros((history_size, n), dtype),
        "old_stps": jnp.zeros((history_size, n), dtype),
        "ro": jnp.zeros((history_size,), dtype),
        "H_diag": jnp.ones((), dtype),
        "prev_flat_grad": vector(),
        "prev_loss": scalar(),
        "al": jnp.zeros((history_size,), dtype),
        HISTORY_START: count(),
        HISTORY_LEN: count(),
        "orig_loss": scalar(),
    }


def to_torch_layout(state: dict) -> dict:
    """The state as torch keeps it: Python counts, flat vectors, lists of pairs.

    Entries torch has not created yet are left out (everything but the counts
    before the first iteration, ``al`` before the second); ``old_dirs``,
    ``old_stps`` and ``ro`` are lists from oldest to newest, ``al`` a list of
    ``history_size`` entries, ``None`` past the pairs in use. Arrays are NumPy.
    """
    n_iter = int(state["n_iter"])
    out: dict[str, Any] = {"func_evals": int(state["func_evals"]), "n_iter": n_iter}
    if n_iter == 0:
        return out
    history_size = state["ro"].shape[0]
    start, num_old = int(state[HISTORY_START]), int(state[HISTORY_LEN])
    rows = [(start + i) % history_size for i in range(num_old)]
    out.update(
        d=np.asarray(state["d"]),
        t=np.asarray(state["t"]),
        old_dirs=[np.asarray(state["old_dirs"][r]) for r in rows],
        old_stps=[np.asarray(state["old_stps"][r]) for r in rows],
        ro=[np.asarray(state["ro"][r]) for r in rows],
        H_diag=np.asarray(state["H_diag"]),
        prev_flat_grad=np.asarray(state["prev_flat_grad"]),
        prev_loss=float(state["prev_loss"]),
    )
    if n_iter >= 2:
        al = np.asarray(state["al"])
        out["al"] = [al[i] if i < num_old else None for i in range(history_size)]
    return out


def from_torch_layout(entry: dict, like: dict) -> dict:
    """Inverse of :func:`to_torch_layout`; ``like`` is a state of the right shapes.

    Accepts torch's own state entry (tensors, Python numbers, lists): the pairs fill
    the ring buffers from row 0.
    """
    history_size = like["ro"].shape[0]
    dtype = like["d"].dtype
    unknown = set(entry) - set(TORCH_STATE)
    if unknown:
        raise ValueError(
            f"loaded LBFGS state has {sorted(unknown)}, which LBFGS does not keep "
            f"(its state: {list(TORCH_STATE)})"
        )
    n = like["d"].shape[0]

    def vector(x):
        # a copy: a torch state's tensors keep changing in place (prev_flat_grad)
        array = jnp.array(np.asarray(x), dtype, copy=True)
        if array.shape not in ((), (n,)):
            raise ValueError(
                f"loaded LBFGS state has an entry of shape {array.shape}; the "
                f"parameters flatten to ({n},)"
            )
        return array

    state = dict(like)
    state["func_evals"] = jnp.asarray(int(entry.get("func_evals", 0)), jnp.int32)
    state["n_iter"] = jnp.asarray(int(entry.get("n_iter", 0)), jnp.int32)
    if "d" not in entry:
        return state
    old_dirs = list(entry["old_dirs"])
    if len(old_dirs) > history_size:
        raise ValueError(
            f"the state holds {len(old_dirs)} curvature pairs, more than "
            f"history_size={history_size}"
        )

    def rows(pairs, buffer):
        for i, pair in enumerate(pairs):
            buffer = buffer.at[i].set(vector(pair))
        return buffer

    al = entry.get("al") or []
    state.update(
        d=vector(entry["d"]),
        t=vector(entry["t"]),
        old_dirs=rows(old_dirs, jnp.zeros_like(like["old_dirs"])),
        old_stps=rows(entry["old_stps"], jnp.zeros_like(like["old_stps"])),
        ro=rows(entry["ro"], jnp.zeros_like(like["ro"])),
        H_diag=vector(entry["H_diag"]),
        prev_flat_grad=vector(entry["prev_flat_grad"]),
        prev_loss=vector(entry["prev_loss"]),
        al=rows([0.0 if a is None else a for a in al], jnp.zeros_like(like["al"])),
    )
    state[HISTORY_START] = jnp.zeros((), jnp.int32)
    state[HISTORY_LEN] = jnp.asarray(len(old_dirs), jnp.int32)
    return state


def step_flat(
    value_fn: Callable[[Any], Array],
    params: Any,
    state: dict,
    options: Options,
    value: Array | None = None,
    grads: Any = None,
) -> tuple[Any, dict]:
    """One torch ``step()`` on a pytree: the new params and state.

    ``value`` and ``grads`` (both at ``params``) replace the first evaluation when
    given; ``grads`` alone saves the backward pass of the first evaluation.
    """
    flat, unflatten = flatten(params)
    dtype = flat.dtype

    def value_and_grad(x):
        loss, g = jax.value_and_grad(lambda x: value_fn(unflatten(x)))(x)
        return jnp.asarray(loss, dtype), g

    if grads is None:
        loss, flat_grad = value_and_grad(flat)
    else:
        loss = value_fn(params) if value is None else value
        loss, flat_grad = jnp.asarray(loss, dtype), flatten_grads(grads).astype(dtype)
    new_flat, new_state = _lbfgs_step(
        value_and_grad, flat, loss, flat_grad, state, options
    )
    return unflatten(new_flat), {**new_state, "orig_loss": loss}


def lbfgs(
    lr=1,
    max_iter=20,
    max_eval=None,
    tolerance_grad=1e-7,
    tolerance_change=1e-9,
    history_size=100,
    line_search_fn=None,
) -> GradientTransformation:
    r"""L-BFGS (``torch.optim.LBFGS``): one ``update`` is one torch ``step(closure)``.

    Each of up to ``max_iter`` iterations takes the quasi-Newton direction
    :math:`d = -H_k g` from the two-loop recursion over the last ``history_size``
    pairs :math:`s_i = t_i d_i,\ y_i = g_{i+1} - g_i` (kept when
    :math:`y_i^\top s_i > 10^{-10}`), with initial scale
    :math:`\gamma = y^\top s / y^\top y`, then steps :math:`x \leftarrow x + t d`
    with :math:`t` = ``lr`` (the very first iteration: :math:`\min(1, 1/\|g\|_1)`
    ``lr``), or :math:`t` from a strong-Wolfe line search. It stops as torch: after
    ``max_iter`` iterations or ``max_eval`` evaluations, when
    :math:`\|g\|_\infty \le` ``tolerance_grad``, when :math:`g^\top d >
    -`\ ``tolerance_change``, or when the step or the loss change falls below
    ``tolerance_change``. The whole step is one XLA computation.

    Args:
      lr: step length factor (a number or a JAX scalar).
      max_iter: most iterations per ``update``.
      max_eval: most objective evaluations per ``update``; default
        ``max_iter * 5 // 4``.
      tolerance_grad: stop when the largest gradient entry is at most this.
      tolerance_change: stop when the step, the loss change or the directional
        derivative is smaller than this.
      history_size: number of curvature pairs kept (ring buffers of this many rows
        of the flattened parameters).
      line_search_fn: ``None`` (fixed step) or ``'strong_wolfe'``; anything else
        raises torch's ``RuntimeError`` here, where torch raises it at ``step()``.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose
      ``update(grads, state, params, *, value_fn, value=None)`` needs the objective
      ``value_fn(params) -> scalar loss``. ``grads`` (JAX's gradient at ``params``)
      and ``value`` may be given to save the first evaluation, or ``grads=None``.
      The state holds torch's entries (``func_evals``, ``n_iter``, ``d``, ``t``,
      ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``,
      ``prev_loss``, ``al``) over the flattened parameters, the curvature pairs in
      ring buffers (torch's ``old_dirs[i]`` is row ``(history_start + i) %
      history_size``, ``history_len`` rows in use), and ``orig_loss``: the loss at
      the parameters before the last update, which torch's ``step`` returns.

    Example:
      >>> tx = fo.lbfgs(line_search_fn="strong_wolfe", history_size=10)
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(None, state, params, value_fn=loss_fn)
      ...     return fo.apply_updates(params, updates), state
      >>> params, state = step(params, state)   # state["orig_loss"]: torch's return
    """
    options = lbfgs_options(**locals())
    # torch checks this at step(); a transformation can only say it before tracing
    check_line_search(options)

    def init(params):
        check_param_dtypes(params)
        return init_state(flatten(params)[0], options.history_size)

    def update(grads, state, params=None, *, value_fn=None, value=None, **extra_args):
        del extra_args
        if params is None or value_fn is None:
            raise ValueError(
                "lbfgs's update needs params and value_fn (params -> loss): "
                "torch's LBFGS re-evaluates the objective"
            )
        new_params, state = step_flat(value_fn, params, state, options, value, grads)
        return updates_between(new_params, params), state

    return GradientTransformation(init, update)


# --- the torch-style facade ------------------------------------------------------


def _global_rule(*args):
    raise TypeError(
        "LBFGS has no per-leaf rule: one step updates all parameters together "
        "(functorch_optim.lbfgs)"
    )


# What the facade's base reads of an algorithm (name, defaults from the signature,
# validation, state names); L-BFGS's step is global, so the per-leaf rules refuse.
ALGORITHM = Algorithm(
    name="LBFGS",
    functional=lbfgs,
    init=_global_rule,
    step=_global_rule,
    validate=validate,
    state_names=TORCH_STATE,
    complex_as_real=True,
    reads_params=lambda options: True,
)


def traced_values(options: Options) -> dict:
    """The value options as traced scalars of fixed dtypes, so that a new value
    (``lr=1`` after ``lr=0.5``) reuses the compiled step."""
    return {
        name: jnp.asarray(
            options[name],
            jnp.int32 if name in ("max_iter", "max_eval") else scalar_dtype(),
        )
        for name in VALUE_OPTIONS
    }


# Values a closure may capture by value in the compiled step's key: they cannot
# change behind the key's back (a function's code is fixed once it exists).
_IMMUTABLE = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.ModuleType,
    type,
)
_ARRAY = "<captured array>"


def _closure_key(closure: Callable) -> tuple[Any, list]:
    """The compiled-step key of ``closure`` and the arrays it captures.

    For a plain function whose captured variables (closure cells and defaults) are
    all arrays or immutable values, the key is its code with the immutable values,
    and the arrays are returned to be passed in: a closure redefined every step over
    new data reuses one compiled step (jit retraces by itself if their shapes
    change). Otherwise the key is the closure itself.
    """
    if not isinstance(closure, types.FunctionType):
        return closure, []
    try:
        captured = [cell.cell_contents for cell in closure.__closure__ or ()]
    except ValueError:  # a variable not bound yet
        return closure, []
    captured += list(closure.__defaults__ or ())
    static: list[Any] = []
    for value in captured:
        if isinstance(value, (jax.Array, np.ndarray)):
            static.append(_ARRAY)
        elif isinstance(value, _IMMUTABLE):
            static.append((type(value), value))
        else:
            return closure, []
    arrays = [v for v in captured if isinstance(v, (jax.Array, np.ndarray))]
    return (closure.__code__, tuple(static)), arrays


def _with_captured(closure: Callable, arrays: list) -> Callable:
    """``closure`` rebuilt over ``arrays`` (traced) in place of the ones it captured."""
    if not arrays:
        return closure
    supply = iter(arrays)
    fresh = lambda v: next(supply) if isinstance(v, (jax.Array, np.ndarray)) else v
    cells = tuple(
        types.CellType(fresh(cell.cell_contents)) for cell in closure.__closure__ or ()
    )
    defaults = tuple(fresh(v) for v in closure.__defaults__ or ()) or None
    return types.FunctionType(
        closure.__code__, closure.__globals__, closure.__name__, defaults, cells or None
    )


_SIGNATURE = inspect.signature(lbfgs)
# compiled steps kept per optimizer, one per closure key (see _closure_key)
_COMPILED_CLOSURES = 8


class LBFGS(Optimizer):
    """``torch.optim.LBFGS`` over JAX arrays: the stateful form of :func:`lbfgs`.

    ``step(closure)`` with ``closure(params) -> loss`` (``params`` shaped like
    :attr:`params`) runs one torch ``step()``, differentiating the closure inside
    one compiled XLA computation, and returns the loss of its first evaluation.
    Changing ``lr``, ``max_iter``, ``max_eval`` or the tolerances in
    ``param_groups`` does not recompile. Nor does a closure defined anew for each
    step (``opt.step(lambda p: loss_fn(p, x, y))`` in the training loop): the
    compiled step is kept per closure *code*, the arrays it captures (``x``, ``y``)
    are passed in as arguments, and numbers, strings and functions it captures are
    part of the key (a new value compiles once). A closure capturing any other
    object (a model, a list) is compiled per closure object, since that object's
    contents may change between steps. One parameter group only, as torch.

    ``state`` / ``state_dict()`` hold torch's entries on the first parameter
    (``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``,
    ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``), with torch's lists of
    curvature pairs; ``load_state_dict`` takes torch's.

    Example:
      >>> opt = fo.LBFGS(params, line_search_fn="strong_wolfe")
      >>> loss = opt.step(loss_fn)      # loss_fn(params) -> scalar
      >>> params = opt.params
    """

    algorithm = ALGORITHM

    def __init__(self, params, *args, **kwargs) -> None:
        given = _SIGNATURE.bind(*args, **kwargs)
        given.apply_defaults()
        super().__init__(params, lbfgs_options(**given.arguments))
        if len(self.param_groups) != 1:
            raise ValueError(
                "LBFGS doesn't support per-parameter options (parameter groups)"
            )
        self._compiled: OrderedDict = OrderedDict()

    # inspect reads a function's __signature__, which typeshed does not declare
    __init__.__signature__ = _SIGNATURE.replace(  # type: ignore[attr-defined]
        parameters=[
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *_SIGNATURE.parameters.values(),
        ],
        return_annotation=None,
    )

    def _check_initializable(self, group) -> None:
        pass  # the state is created at the first step, for all params together

    def step(self, closure):
        """One torch ``LBFGS.step(closure)``; returns the closure's first loss."""
        if len(self.param_groups) != 1:
            raise AssertionError(
                f"Expected exactly one param_group, but got {len(self.param_groups)}"
            )
        if not callable(closure):
            raise TypeError(
                "LBFGS.step needs a closure: closure(params) -> loss, got "
                f"{type(closure).__name__}"
            )
        group = self.param_groups[0]
        options = self._group_options(group)
        check_line_search(options)
        leaves = group["params"]
        state = self._states[0][0]
        if state is None:
            state = init_state(flatten(leaves)[0], options.history_size)
        values = traced_values(options)
        key, captured = _closure_key(closure)
        run = self._compiled_step(
            closure, key, options.line_search_fn, options.history_size
        )
        new_leaves, state = run(list(leaves), state, values, captured)
        leaves[:] = new_leaves
        self._states[0][0] = state
        return state["orig_loss"]

    def _compiled_step(self, closure, closure_key, line_search_fn, history_size):
        key = (closure_key, line_search_fn, history_size)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]

        def run(leaves, state, values, captured):
            options = Options(
                values, line_search_fn=line_search_fn, history_size=history_size
            )
            loss = _with_captured(closure, captured)
            value_fn = lambda leaves: loss(self._as_given([self._assemble(0, leaves)]))
            return step_flat(value_fn, leaves, state, options)

        # the state is donated (only the optimizer holds it; ``state`` and
        # ``state_dict`` hand out copies), never the params: a user may hold them
        self._compiled[key] = jax.jit(run, donate_argnums=1)
        if len(self._compiled) > _COMPILED_CLOSURES:
            self._compiled.popitem(last=False)
        return self._compiled[key]

    def _torch_state(self, state) -> dict:
        if state is None:
            return {}
        return interop.to_jax(to_torch_layout(state))

    def _loaded_state(self, pid, param, options, saved):
        if saved is None or len(saved) == 0:
            return None
        leaves = self.param_groups[0]["params"]
        if param is not leaves[0]:
            raise ValueError(
                f"loaded state has LBFGS state for parameter {pid}: LBFGS keeps its "
                "state on the first parameter only"
            )
        like = init_state(flatten(leaves)[0], options.history_size)
        return from_torch_layout(interop.to_numpy(dict(saved)), like)

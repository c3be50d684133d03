"""The L-BFGS iterations of one torch ``LBFGS.step()``, as one ``lax.while_loop``.

Each iteration takes the quasi-Newton direction from the two-loop recursion over
the stored curvature pairs, moves by a fixed step or a strong-Wolfe line search,
updates the pairs and tests torch's stopping rules. The parameters (any pytree;
complex leaves as ``view_as_real``, as torch does) are flattened into one vector;
the state holds torch's entries with fixed shapes: the curvature pairs live in ring
buffers of ``history_size`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from ..checks import flatten_params, holds_state, is_none, leaf_names
from ..kernels import to_complex, to_real
from ..rule import Options
from ..sharding import explicit_sharding
from .line_search import abs_max, strong_wolfe

Array = jax.Array
# The state of one L-BFGS transformation: torch's entries (and the ring buffers'
# bookkeeping) by name, each an array (see :func:`init_state`).
LBFGSState = dict[str, Array]

# Ring-buffer bookkeeping kept next to torch's state entries: the physical row of
# torch's ``old_dirs[0]`` and how many pairs torch's lists hold.
HISTORY_START = "history_start"
HISTORY_LEN = "history_len"

# torch only stores a curvature pair when y·s exceeds this.
_CURVATURE_EPS = 1e-10


def flatten(params: Any) -> tuple[Array, Callable[[Array], Any]]:
    """The parameters of a pytree (its array leaves, see
    :func:`~functorch_optim.checks.holds_state`) as one real vector, complex leaves
    as ``view_as_real``, and back; the other leaves (a model's functions, None)
    ride along unchanged.

    The vector's dtype is the leaves' common real dtype, as ``torch.cat`` of torch's
    flattened views. On an explicit-sharding mesh the vector is replicated (its
    dot products need every element) and ``unflatten`` puts each leaf back on its
    own sharding.
    """
    leaves, treedef = flatten_params(params)
    positions = [i for i, leaf in enumerate(leaves) if holds_state(leaf)]
    real: list[Any] = [to_real(jnp.asarray(leaves[i])) for i in positions]
    flat = _concatenate(real, flat_struct(params).dtype)

    def unflatten(vector: Array) -> Any:
        out = list(leaves)
        offset = 0
        for i, r in zip(positions, real, strict=True):
            piece = vector[offset : offset + r.size].reshape(r.shape).astype(r.dtype)
            offset += r.size
            out[i] = _placed_like(to_complex(piece, leaves[i]), leaves[i])
        return jax.tree.unflatten(treedef, out)

    return flat, unflatten


def flat_struct(params: Any) -> jax.ShapeDtypeStruct:
    """The shape and dtype of :func:`flatten`'s vector, also for abstract params
    (``jax.ShapeDtypeStruct`` leaves)."""
    shapes = [
        (math.prod(leaf.shape) * (2 if jnp.iscomplexobj(leaf) else 1), leaf.dtype)
        for leaf in flatten_params(params)[0]
        if holds_state(leaf)
    ]
    # a complex dtype's finfo is its real part's
    dtypes = [jnp.finfo(dtype).dtype for _, dtype in shapes]
    dtype = jnp.result_type(*dtypes) if dtypes else jnp.dtype(jnp.float32)
    return jax.ShapeDtypeStruct((sum(size for size, _ in shapes),), dtype)


def flatten_grads(grads: Any, params: Any) -> Array:
    """The flat gradient (:func:`flatten`'s layout) of ``grads``, torch's
    gradients as every transform takes them (for a complex leaf, the conjugate
    of JAX's: ``view_as_real`` of it is ``(df/dx, df/dy)``, the gradient of the
    real vector). Every parameter needs one: the curvature pairs span the whole
    vector, so a None gradient cannot freeze a part of it."""
    leaves, treedef = flatten_params(params)
    grad_leaves = treedef.flatten_up_to(grads)
    names = leaf_names(params, "grads", is_leaf=is_none)
    real = []
    for leaf, grad, name in zip(leaves, grad_leaves, names, strict=True):
        if not holds_state(leaf):
            continue
        if grad is None:
            raise ValueError(
                f"{name} is None: lbfgs steps every array of params as one vector; "
                "leave frozen leaves out of params (None there) and close over "
                "them in value_fn"
            )
        real.append(to_real(jnp.asarray(grad)))
    return _concatenate(real, flat_struct(params).dtype)


def _concatenate(real: list, dtype: Any) -> Array:
    if not real:
        return jnp.zeros((0,), dtype)
    return jnp.concatenate([jnp.ravel(_replicated(r)).astype(dtype) for r in real])


def _replicated(x: Array) -> Array:
    # a reshape of a sharded array has no sharding explicit mode can infer
    sharding = explicit_sharding(x)
    if sharding is None:
        return x
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))


def _placed_like(x: Any, leaf: Any) -> Any:
    sharding = explicit_sharding(leaf)
    return x if sharding is None else jax.sharding.reshard(x, sharding)


def init_state(flat: Any, history_size: int) -> LBFGSState:
    """The state before the first step, for a flat parameter vector ``flat`` (an
    array or a ``jax.ShapeDtypeStruct``: its shape and dtype)."""
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
                loss, flat_grad, t_ls, ls_evals = strong_wolfe(
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
                    abs_max(flat_grad) <= tolerance_grad,
                    t_ls,
                    ls_evals,
                )
            x = it.x + t * d

            def evaluate(_):
                loss, flat_grad = value_and_grad(x)
                return loss, flat_grad, abs_max(flat_grad) <= tolerance_grad, 1

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
            | (abs_max(d * t) <= tolerance_change)
            | (jnp.abs(loss - state["prev_loss"]) < tolerance_change)
        )
        return _Iteration(
            x, loss, flat_grad, opt_cond, n_iter, current_evals, done, state
        )

    opt_cond = abs_max(flat_grad) <= tolerance_grad
    state = {**state, "func_evals": state["func_evals"] + 1}
    start = _Iteration(
        x, loss, flat_grad, opt_cond, jnp.int32(0), jnp.int32(1), opt_cond, state
    )
    it = lax.while_loop(lambda it: ~it.done & (it.n_iter < max_iter), iteration, start)
    return it.x, it.state


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
        loss, flat_grad = jnp.asarray(loss, dtype), flatten_grads(grads, params)
    new_flat, new_state = _lbfgs_step(
        value_and_grad, flat, loss, flat_grad, state, options
    )
    return unflatten(new_flat), {**new_state, "orig_loss": loss}

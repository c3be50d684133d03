"""``fo.lbfgs``: torch's ``LBFGS`` as an optax-style transformation.

One ``update`` is one torch ``step(closure)`` (:mod:`.iteration`); this module holds
its options: torch's defaults (the signature of :func:`lbfgs`), torch's checks, and
which options are plain values that may be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import check_param_dtypes, flatten_params, holds_state
from ..core import GradientTransformation, scalar_dtype, updates_between
from ..rule import Array, Options, check_scalar_lr, require
from .iteration import LBFGSState, flat_struct, init_state, step_flat

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


def lbfgs(
    lr: float | Array = 1,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> GradientTransformation[LBFGSState]:
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
      ``value_fn(params) -> scalar loss``. ``grads`` (the gradient at ``params``
      as every transform takes it: torch's, the conjugate of JAX's for a complex
      leaf) and ``value`` may be given to save the first evaluation, or
      ``grads=None``. The array leaves of ``params`` are the flattened vector
      (also abstract ones at ``init``: ``jax.ShapeDtypeStruct``); its other leaves
      (functions, None) are passed to ``value_fn`` as they are and get None
      updates.
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

    def init(params) -> LBFGSState:
        check_param_dtypes(params)
        return init_state(flat_struct(params), options.history_size)

    def update(grads, state, params=None, *, value_fn=None, value=None, **extra_args):
        del extra_args
        if params is None or value_fn is None:
            raise ValueError(
                "lbfgs's update needs params and value_fn (params -> loss): "
                "torch's LBFGS re-evaluates the objective"
            )
        new_params, state = step_flat(value_fn, params, state, options, value, grads)
        leaves, treedef = flatten_params(params)
        updates = [
            updates_between(new, old) if holds_state(old) else None
            for new, old in zip(treedef.flatten_up_to(new_params), leaves, strict=True)
        ]
        return jax.tree.unflatten(treedef, updates), state

    return GradientTransformation(init, update)

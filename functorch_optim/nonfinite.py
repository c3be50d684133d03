"""Skipping steps whose gradients are not finite (torch's ``GradScaler`` skip).

By default a NaN or infinite gradient flows through every algorithm exactly as in
torch: nothing is masked, the parameters and state take the non-finite values.
:func:`skip_nonfinite` is the opt-in alternative that mixed-precision training uses:
``torch.amp.GradScaler.step`` does not call ``optimizer.step()`` when a gradient
holds an inf or a NaN, so the parameters and the optimizer state (step count
included) stay as they were. The facade's form is ``opt.skip_nonfinite = True``
(:class:`functorch_optim.Optimizer`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .core import GradientTransformation, _accepts_extra_args

PyTree = Any


def all_finite(tree: PyTree) -> jax.Array:
    """True when every element of every leaf of ``tree`` is finite (no inf, no NaN).

    ``None`` leaves and integer leaves (the indices of a sparse BCOO gradient) are
    finite; an empty tree is finite.
    """
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
      inner_state: the wrapped transformation's state, as of the last finite step.
      skipped: int32 count of the updates skipped so far.
    """

    inner_state: PyTree
    skipped: jax.Array


def skip_nonfinite(inner: GradientTransformation) -> GradientTransformation:
    r"""Wrap ``inner`` so that an update whose gradients are not all finite is
    skipped, as ``torch.amp.GradScaler.step`` skips ``optimizer.step()``.

    .. math::
        (u, s') = \begin{cases}
          \mathrm{inner.update}(g, s, p) & \text{if every } g_i \text{ is finite} \\
          (0,\ s) & \text{otherwise (and } \mathrm{skipped} \mathrel{+}= 1)
        \end{cases}

    The choice is made with ``jnp.where`` on a traced flag, so the wrapped
    transformation jits, vmaps and scans with no host synchronization; the inner
    update is still computed on a skipped step and discarded.

    Args:
      inner: any gradient transformation (this library's, optax's, a chain).

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is a
      :class:`SkipNonfiniteState` ``(inner_state, skipped)``.

    Example:
      >>> tx = fo.skip_nonfinite(fo.adam(lr=1e-3))
      >>> state = tx.init(params)
      >>> updates, state = tx.update(grads, state, params)   # zeros if grads have NaN
      >>> int(state.skipped)
      0
    """

    takes_extra = _accepts_extra_args(inner.update)

    def init(params):
        return SkipNonfiniteState(inner.init(params), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, **extra_args):
        updates, inner_state = inner.update(
            grads, state.inner_state, params, **(extra_args if takes_extra else {})
        )
        finite = all_finite(grads)
        updates = jax.tree.map(
            lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates
        )
        inner_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), inner_state, state.inner_state
        )
        skipped = state.skipped + jnp.where(finite, 0, 1).astype(state.skipped.dtype)
        return updates, SkipNonfiniteState(inner_state, skipped)

    return GradientTransformation(init, update)

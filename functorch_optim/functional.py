"""Turn an :class:`~functorch_optim.algorithms.base.Algorithm` into a transformation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .algorithms.base import Algorithm
from .core import GradientTransformation, updates_between
from .fused import init_tree, step_tree


def make_transform(
    algorithm: Algorithm, given: Mapping[str, Any]
) -> GradientTransformation:
    """The optax-style ``(init, update)`` pair running ``algorithm`` with ``given``.

    ``update`` returns ``new_params - params``, so ``apply_updates(params, updates)``
    reproduces the parameters torch holds after ``step()``.
    """
    options = algorithm.options(given)

    def init(params):
        return init_tree(algorithm, params, options)

    def update(grads, state, params=None, **extra_args):
        del extra_args  # the first-order algorithms read only grads and params
        if params is None:
            if algorithm.reads_params(options):
                raise ValueError(
                    f"{algorithm.functional.__name__}'s update needs params: with "
                    "these options the step reads the parameter values"
                )
            params = jax.tree.map(jnp.zeros_like, grads)
        new_params, new_state = step_tree(algorithm, params, grads, state, options)
        return updates_between(new_params, params), new_state

    return GradientTransformation(init, update)

"""Turn an :class:`~functorch_optim.rule.Algorithm` into a transformation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .core import GradientTransformation
from .rule import Algorithm, Options
from .runner import init_tree, step_tree


class AlgorithmUpdate:
    """The ``update`` of :func:`make_transform`: one algorithm with one set of
    options (kept, so :func:`functorch_optim.packed` can rebuild the transform)."""

    def __init__(self, algorithm: Algorithm, options: Options) -> None:
        self.algorithm = algorithm
        self.options = options

    def __call__(self, grads, state, params=None, **extra_args):
        del extra_args  # the first-order algorithms read only grads and params
        params = params_or_zeros(self.algorithm, self.options, grads, params)
        return step_tree(
            self.algorithm, params, grads, state, self.options, as_updates=True
        )


def params_or_zeros(algorithm: Algorithm, options: Options, grads, params):
    """``params``; zeros shaped like ``grads`` when the update does not read them."""
    if params is not None:
        return params
    if algorithm.reads_params(options):
        raise ValueError(
            f"{algorithm.functional.__name__}'s update needs params: with "
            "these options the step reads the parameter values"
        )
    return jax.tree.map(jnp.zeros_like, grads)


def make_transform(
    algorithm: Algorithm, given: Mapping[str, Any]
) -> GradientTransformation[Any]:
    """The optax-style ``(init, update)`` pair running ``algorithm`` with ``given``.

    Its state is an ``algorithm.state_type``, which the public functional's return
    annotation names (``GradientTransformation[AdamState]``).

    ``update`` returns the updates that ``apply_updates(params, updates)`` turns
    into the parameters torch holds after ``step()`` (the rule's increment where
    it ends in one, else ``new_params - params``).
    """
    options = algorithm.options(given)

    def init(params):
        return init_tree(algorithm, params, options)

    return GradientTransformation(init, AlgorithmUpdate(algorithm, options))

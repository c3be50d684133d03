"""The functional core: gradient transformations, chaining, applying updates.

A :class:`GradientTransformation` is a pair of pure functions,

    state = init(params)
    updates, state = update(grads, state, params=None, **extra_args)

a subclass of optax's own type, so a transformation of this library is accepted
unchanged by ``optax.chain``, ``flax.nnx.Optimizer`` and
``flax.training.train_state.TrainState``, and optax's transformations are accepted by
:func:`chain`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import jax
import jax.numpy as jnp
import optax

PyTree = Any
UpdateFn = Callable[..., tuple[PyTree, PyTree]]
StateT = TypeVar("StateT")


class StateUpdateFn(Protocol[StateT]):
    """The type of a transformation's ``update``: its state type in and out."""

    def __call__(
        self,
        updates: PyTree,
        state: StateT,
        params: PyTree | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, StateT]: ...


class GradientTransformation(optax.GradientTransformationExtraArgs, Generic[StateT]):
    """An ``(init, update)`` pair of pure functions over pytrees.

    ``update(grads, state, params=None, **extra_args)`` returns ``(updates, state)``;
    ``apply_updates(params, updates)`` then gives the new parameters. Extra keyword
    arguments (``value``, ``value_fn``, ...) are accepted and ignored by
    transformations that do not use them.

    It is optax's ``GradientTransformationExtraArgs`` (a subclass with no new
    fields), so ``optax.chain`` forwards the extra arguments that L-BFGS
    (``value_fn``) and reduce-on-plateau (``value``) read. For type checkers it is
    generic in its state: ``fo.adam(...)`` is a ``GradientTransformation[AdamState]``,
    so ``tx.init(params).exp_avg`` and the state ``update`` returns are typed.
    """

    __slots__ = ()
    # Annotations only (the fields are optax's): the state type, where optax's
    # annotations say only "a pytree".
    init: Callable[[PyTree], StateT]
    update: StateUpdateFn[StateT]


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """Return ``params + updates`` leaf by leaf, keeping each parameter's dtype.

    Args:
      params: a pytree of arrays (``None`` leaves are left alone).
      updates: a pytree of the same structure; a ``None`` update (a leaf without a
        gradient, or not an array) leaves its parameter as it is.

    Returns:
      The updated parameters. For this library's optimizers this equals the
      parameters torch holds after one ``step()``.

    Example:
      >>> updates, state = tx.update(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
    """

    def add(p, u):
        if p is None or u is None:
            return p
        return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)


def updates_between(new_params: PyTree, params: PyTree) -> PyTree:
    """The updates that :func:`apply_updates` turns ``params`` into ``new_params``.

    ``new - old``, but 0 where the two are equal, so that a parameter torch keeps at
    inf stays inf instead of becoming ``inf + (inf - inf) = nan``.
    """
    # lax.select, not jnp.where: jnp.where lowers to a call per leaf, which a
    # tree of thousands of leaves pays for in compile time
    return jax.tree.map(
        lambda new, old: jax.lax.select(new == old, jnp.zeros_like(new), new - old),
        new_params,
        params,
    )


def _accepts_extra_args(update: UpdateFn) -> bool:
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations one after the other, as ``optax.chain``.

    The state is the tuple of the transformations' states. Extra keyword arguments of
    ``update`` reach every transformation whose ``update`` takes ``**kwargs``.

    Example:
      >>> tx = fo.chain(fo.clip_grad_norm(1.0), fo.adamw(lr=3e-4))
    """
    takes_extra = tuple(_accepts_extra_args(t.update) for t in transforms)

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(
                f"chain of {len(transforms)} transformations got a state of "
                f"{len(state)} entries"
            )
        new_state = []
        for t, s, extra in zip(transforms, state, takes_extra):
            updates, s = t.update(updates, s, params, **(extra_args if extra else {}))
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def is_concrete(x: Any) -> bool:
    """True when ``x`` has a value now (not a tracer inside jit, vmap or grad)."""
    return not isinstance(x, jax.core.Tracer)


def is_bcoo(x: Any) -> bool:
    """True when ``x`` is a ``jax.experimental.sparse.BCOO``.

    Looks the module up instead of importing it (it pulls in scipy): a BCOO can only
    exist once its module is loaded.
    """
    sparse = sys.modules.get("jax.experimental.sparse")
    return sparse is not None and isinstance(x, sparse.BCOO)


def scalar_dtype():
    """Dtype for scalar hyperparameter arithmetic: float64 when x64 is on.

    torch does its scalar arithmetic (bias corrections, step sizes) in Python double;
    this is the closest JAX has.
    """
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32

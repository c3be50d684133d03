"""Optimizer state placed where its parameter lives (SPMD meshes, multi-process).

An elementwise state entry (``exp_avg``, ``momentum_buffer``, ...) has its
parameter's shape and gets its parameter's sharding, so a step touches only local
shards and compiles without collectives. Entries of another shape get the sharding
derived from the parameter's: the axes they share with the parameter keep its mesh
axes (Adafactor's ``row_var`` of shape ``(m, 1)`` is split over rows as the
parameter is), the others are replicated; scalar state (``step``, ASGD's ``eta``)
is replicated over the parameter's mesh, so every input of a compiled step lives on
the same devices, also across processes.

Where the sharding is known:
  * a concrete ``jax.Array`` carries it (``param.sharding``), globally: arrays
    spanning several processes are placed without gathering anything;
  * under tracing (``jax.jit``, ``jax.eval_shape`` of ``jax.ShapeDtypeStruct``
    inputs) only explicit-sharding meshes (``jax.sharding.AxisType.Explicit``) put
    it in the types; there :func:`place_like` reshards entries to the derived
    sharding, so ``eval_shape`` reports it and a ``lax.scan`` carry keeps its type.
    With auto axes JAX itself carries no sharding through tracing (``eval_shape`` of
    the identity reports none); ``jax.jit(tx.init, out_shardings=...)`` or an eager
    ``tx.init`` on sharded arrays places the state there.

That is where a fresh state starts. A step keeps each entry where it is
(:func:`place_state`), so a state the user resharded otherwise (flax's "sharding
optimization state differently") stays so, as optax's does.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from .core import is_concrete


def derived_sharding(sharding: Any, param_shape: tuple, shape: tuple) -> Any:
    """The sharding of a state entry of ``shape`` for a parameter of
    ``param_shape`` sharded as ``sharding``; None when it cannot be derived."""
    if tuple(shape) == tuple(param_shape):
        return sharding
    if isinstance(sharding, SingleDeviceSharding):
        return sharding
    if not isinstance(sharding, NamedSharding):
        return None
    if len(shape) != len(param_shape):
        return NamedSharding(sharding.mesh, PartitionSpec())
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    kept = [
        axes if size == param_size else None
        for axes, size, param_size in zip(spec, shape, param_shape)
    ]
    return NamedSharding(sharding.mesh, PartitionSpec(*kept))


def place(value: Any, param: Any) -> Any:
    """``value`` (an array or None) with the sharding derived from ``param``'s.

    Concrete parameters only; a traced value is returned as it is, except in
    explicit-sharding mode, see :func:`place_like`.
    """
    if value is None or not hasattr(value, "shape"):
        return value
    if not is_concrete(param):
        return _reshard_traced(value, param)
    if not is_concrete(value) or not isinstance(param, jax.Array):
        return value
    target = derived_sharding(param.sharding, param.shape, value.shape)
    if target is None or (isinstance(value, jax.Array) and value.sharding == target):
        return value
    if target.is_fully_addressable or (
        isinstance(value, jax.Array) and not value.is_fully_addressable
    ):
        return jax.device_put(value, target)
    # A host-local value (every process computed the same one) placed on a mesh
    # spanning several processes: each process fills its own shards, no
    # collective (jax.device_put would compare the value across processes).
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def place_like(state: dict, param: Any) -> dict:
    """Every array of a leaf's state dict placed by :func:`place`."""
    return {k: place(v, param) for k, v in state.items()}


def place_state(state: dict, old: dict, param: Any) -> dict:
    """A leaf's new state placed where its old one is: an entry keeps the sharding
    it has (set by the user, as optax's states keep theirs; the parameter's
    sharding is where a fresh state starts, not an override), and an entry
    without an old array of its shape gets its parameter's (:func:`place`)."""
    return {k: _place_as(v, old.get(k), param) for k, v in state.items()}


def _place_as(value: Any, old: Any, param: Any) -> Any:
    if value is None or getattr(old, "shape", None) != getattr(value, "shape", ()):
        return place(value, param)
    if is_concrete(old):
        if (
            isinstance(old, jax.Array)
            and isinstance(value, jax.Array)
            and is_concrete(value)
            and not value.sharding.is_equivalent_to(old.sharding, value.ndim)
        ):
            return jax.device_put(value, old.sharding)
        return value
    sharding = explicit_sharding(old)
    if sharding is None or jax.typeof(value).sharding == sharding:
        return value
    return jax.sharding.reshard(value, sharding)


def explicit_sharding(x: Any) -> NamedSharding | None:
    """``x``'s sharding where its type carries it (a mesh with explicit axes, also
    under tracing), else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    if isinstance(sharding, NamedSharding) and getattr(
        sharding.mesh, "_any_axis_explicit", False
    ):
        return sharding
    return None


def _reshard_traced(value: Any, param: Any) -> Any:
    """Under tracing only explicit mesh axes are in the types: reshard to the
    derived sharding there (entries of the parameter's shape already follow it)."""
    param_sharding = explicit_sharding(param)
    if param_sharding is None:
        return value
    target = derived_sharding(param_sharding, param.shape, value.shape)
    if target is None or jax.typeof(value).sharding == target:
        return value
    return jax.sharding.reshard(value, target)


def static_sharding(param: Any) -> Any:
    """The sharding a compiled step should keep ``param`` on, hashable (part of a
    jit's static key); None for one device or a sharding already in the types."""
    sharding = getattr(param, "sharding", None)
    if (
        not isinstance(sharding, NamedSharding)
        or sharding.num_devices == 1
        or getattr(sharding.mesh, "_any_axis_explicit", False)
    ):
        return None
    return sharding


def constrain(value: Any, sharding: Any, param_shape: tuple) -> Any:
    """Inside a compiled step: ``value`` (an array, a state dict or None) kept on
    the sharding derived from its parameter's ``sharding`` (auto-mode meshes, where
    tracing does not see the inputs' shardings; see :func:`static_sharding`)."""
    if sharding is None:
        return value
    if isinstance(value, dict):
        return {k: constrain(v, sharding, param_shape) for k, v in value.items()}
    if value is None or not hasattr(value, "shape"):
        return value
    target = derived_sharding(sharding, param_shape, value.shape)
    return jax.lax.with_sharding_constraint(value, target)


def sharded_apart(param: Any, state: dict) -> bool:
    """Whether an entry of ``state`` has ``param``'s shape but another sharding in
    its type (a state the user placed otherwise, see :func:`place_state`):
    explicit mode refuses some elementwise ops on such operands (a select)."""
    sharding = explicit_sharding(param)
    return sharding is not None and any(
        getattr(v, "shape", None) == param.shape and explicit_sharding(v) != sharding
        for v in state.values()
    )


def explicit_as_auto(step: Any, param: Any, state: dict) -> Any:
    """``step(param, grad, state, *rest)`` runnable on explicit-sharding meshes.

    A step that is not elementwise (Muon's matrix products, SparseAdam's gathers)
    has intermediates whose sharding explicit mode cannot decide alone; it runs
    with the mesh axes in auto mode (``jax.sharding.auto_axes``) and returns the
    parameter on its sharding, each state entry on its own (see
    :func:`place_state`). Elsewhere ``step`` is returned as is.
    """
    sharding = explicit_sharding(param)
    if sharding is None:
        return step

    def spec(value):
        own = explicit_sharding(value)
        if own is not None:
            return own.spec
        return derived_sharding(sharding, param.shape, value.shape).spec

    out = (
        spec(param),
        {k: None if v is None else spec(v) for k, v in state.items()},
    )
    return jax.sharding.auto_axes(step, out_sharding=out)

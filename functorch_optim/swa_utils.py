r"""torch.optim.swa_utils: weight averaging (SWA, EMA), SWALR and update_bn.

torch's stochastic weight averaging and parameter EMA, with torch's rules and
numbers:

* :class:`AveragedModel` keeps a running average of a model's parameters (a pytree,
  or a flax ``nnx.Module``): the first :meth:`~AveragedModel.update_parameters`
  copies them, every later one applies the averaging function with the count of
  models averaged so far (``n_averaged``). Its ``state_dict()`` has the keys of
  torch's (``n_averaged``, ``module.<name>``).
* :func:`get_ema_multi_avg_fn`, :func:`get_swa_multi_avg_fn`, :func:`get_ema_avg_fn`
  and :func:`get_swa_avg_fn` are torch's averaging functions, each computed as
  torch's CPU kernels compute it (the multi-tensor ones through ``lerp``).
* :class:`SWALR` anneals each param group's lr to a fixed SWA lr (a scheduler of
  :mod:`functorch_optim.lr_scheduler`); :func:`swalr` is the same shape as a pure
  schedule for the functional API.
* :func:`update_bn` recomputes the running statistics of the ``nnx.BatchNorm``
  layers of a model from data, as torch's does for its BatchNorm layers: cumulative
  averages of the batch means and of the *unbiased* batch variances.
* :func:`averaged` is the functional form of :class:`AveragedModel`: an
  ``(init, update)`` pair of pure functions that works under ``jax.jit``,
  ``lax.scan`` and ``vmap`` and keeps the params' shardings.

Where torch mutates tensors in place, the functions here return new arrays: an
``avg_fn`` returns the new average of one leaf (as torch's does), a
``multi_avg_fn`` returns the list of new averages (torch's updates its first
argument in place).

Example (EMA of the weights in a functional loop)::

    >>> ema_fn = fo.swa_utils.get_ema_multi_avg_fn(0.999)
    >>> ema = fo.swa_utils.averaged(multi_avg_fn=ema_fn)
    >>> ema_state = ema.init(params)
    >>> @jax.jit
    ... def train_step(params, opt_state, ema_state, batch):
    ...     grads = jax.grad(loss_fn)(params, batch)
    ...     updates, opt_state = tx.update(grads, opt_state, params)
    ...     params = fo.apply_updates(params, updates)
    ...     return params, opt_state, ema.update(params, ema_state)
    >>> eval_params = ema_state.params
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import interop
from .algorithms.base import lerp_kernel, mul
from .checks import leaf_names
from .core import scalar_dtype
from .lr_scheduler import (
    LRScheduler,
    _format_param,
    _warn_get_lr_called_within_step,
)

__all__ = [
    "AveragedModel",
    "AveragedState",
    "Averaging",
    "SWALR",
    "averaged",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "swalr",
    "update_bn",
]

PyTree = Any
Array = jax.Array
AvgFn = Callable[[Array, Array, Array], Array]
MultiAvgFn = Callable[[list, list, Array], Sequence[Array]]

# torch raises these from the tensor arithmetic of its SWA averaging functions.
_INTEGER_ADDCDIV_ERROR = (
    "Integer division with addcdiv is no longer supported, and in a future  release "
    "addcdiv will perform a true division of tensor1 and tensor2. The historic "
    "addcdiv behavior can be implemented as (input + value * "
    "torch.trunc(tensor1 / tensor2)).to(input.dtype) for integer inputs and as "
    "(input + value * tensor1 / tensor2) for float inputs. The future addcdiv "
    "behavior is just the latter implementation: (input + value * tensor1 / "
    "tensor2), for all dtypes."
)
_BOOL_SUBTRACTION_ERROR = (
    "Subtraction, the `-` operator, with two bool tensors is not supported. Use the "
    "`^` or `logical_xor()` operator instead."
)


def _is_inexact(x: Array) -> bool:
    # torch.is_floating_point(x) or torch.is_complex(x)
    return bool(jnp.issubdtype(x.dtype, jnp.inexact))


def _as_torch_default_float(x: Array) -> Array:
    """An integer leaf as torch computes with it in float arithmetic: in its
    default dtype, float32 (the cast back to the leaf then truncates)."""
    return x.astype(jnp.float32)


def _integer_ema(averaged: Array, current: Array, decay: float) -> Array:
    """torch's ``averaged * decay + current * (1 - decay)`` for an integer leaf, in
    float32. Under jit XLA fuses the two products and the sum into one fma, so the
    truncation back to an integer can differ from torch's by one."""
    return _as_torch_default_float(averaged) * decay + _as_torch_default_float(
        current
    ) * (1 - decay)


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] "
            "range."
        )


def _difference(current: Array, averaged: Array) -> Array:
    if current.dtype == jnp.bool_:
        raise RuntimeError(_BOOL_SUBTRACTION_ERROR)
    return current - averaged


# --- averaging functions ------------------------------------------------------------


def get_ema_multi_avg_fn(decay: float = 0.999) -> MultiAvgFn:
    r"""torch's exponential moving average over a list of leaves:

    .. math::
        W^{EMA}_0 = W^{model}_0, \qquad
        W^{EMA}_{t+1} = \text{decay}\, W^{EMA}_t + (1 - \text{decay})\, W^{model}_{t+1}

    computed as torch's ``_foreach_lerp_(ema, model, 1 - decay)`` for floating-point
    and complex leaves (:func:`~functorch_optim.algorithms.base.lerp_kernel`), and as
    ``ema * decay + model * (1 - decay)`` for the others (their cast back truncates,
    as torch's ``copy_``).

    Args:
      decay: the decay rate, in ``[0, 1]``.

    Returns:
      ``multi_avg_fn(averaged, current, num_averaged) -> list``: the new averages of
      the ``averaged`` leaves, for :class:`AveragedModel` and :func:`averaged`.

    Example:
      >>> ema_fn = fo.swa_utils.get_ema_multi_avg_fn(0.99)
      >>> ema = fo.swa_utils.AveragedModel(params, multi_avg_fn=ema_fn)
    """
    _check_decay(decay)

    def ema_update(averaged: list, current: list, num_averaged: Array) -> list:
        if averaged and _is_inexact(averaged[0]):
            return [lerp_kernel(a, c, 1 - decay) for a, c in zip(averaged, current)]
        return [_integer_ema(a, c, decay) for a, c in zip(averaged, current)]

    return ema_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    r"""torch's equally weighted (SWA) average over a list of leaves:

    .. math::
        W^{SWA}_{n+1} = W^{SWA}_n + \frac{W^{model} - W^{SWA}_n}{n + 1}

    computed as torch's ``_foreach_lerp_(swa, model, 1 / (n + 1))``, whose weight
    ``1 / (n + 1)`` torch rounds to float32 (the reciprocal of its integer count
    tensor); so in float64 this agrees with :func:`get_swa_avg_fn` to float32's
    precision only, as torch's does. Integer and boolean leaves raise torch's
    ``RuntimeError``.

    Returns:
      ``multi_avg_fn(averaged, current, num_averaged) -> list``.

    Example:
      >>> swa_fn = fo.swa_utils.get_swa_multi_avg_fn()
      >>> swa = fo.swa_utils.AveragedModel(params, multi_avg_fn=swa_fn)
    """

    def swa_update(averaged: list, current: list, num_averaged: Array) -> list:
        if averaged and not _is_inexact(averaged[0]):
            _difference(current[0], averaged[0])
            raise RuntimeError(_INTEGER_ADDCDIV_ERROR)
        weight = jnp.float32(1) / (jnp.asarray(num_averaged) + 1).astype(jnp.float32)
        return [lerp_kernel(a, c, weight) for a, c in zip(averaged, current)]

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> AvgFn:
    r"""torch's exponential moving average of one leaf,

    .. math::
        W^{EMA}_{t+1} = \text{decay}\, W^{EMA}_t + (1 - \text{decay})\, W^{model}_{t+1}

    computed as torch's ``decay * ema + (1 - decay) * model`` (each scalar product
    in the kernel's compute dtype, as :func:`~functorch_optim.algorithms.base.mul`).

    Args:
      decay: the decay rate, in ``[0, 1]``.

    Returns:
      ``avg_fn(averaged, current, num_averaged) -> array``.

    Example:
      >>> ema_fn = fo.swa_utils.get_ema_avg_fn(0.99)
      >>> ema = fo.swa_utils.AveragedModel(params, avg_fn=ema_fn)
    """
    _check_decay(decay)

    def ema_update(averaged: Array, current: Array, num_averaged: Array) -> Array:
        if _is_inexact(averaged):
            return mul(averaged, decay) + mul(current, 1 - decay)
        return _integer_ema(averaged, current, decay)

    return ema_update


def get_swa_avg_fn() -> AvgFn:
    r"""torch's equally weighted (SWA) average of one leaf,
    :math:`W^{SWA}_{n+1} = W^{SWA}_n + (W^{model} - W^{SWA}_n) / (n + 1)`, computed
    as written (the division by the integer count is exact in the leaf's dtype).
    This is also what :class:`AveragedModel` does without an averaging function,
    as torch does on the CPU (on CUDA torch takes :func:`get_swa_multi_avg_fn`'s
    path).

    Returns:
      ``avg_fn(averaged, current, num_averaged) -> array``.

    Example:
      >>> swa = fo.swa_utils.AveragedModel(params, avg_fn=fo.swa_utils.get_swa_avg_fn())
    """

    def swa_update(averaged: Array, current: Array, num_averaged: Array) -> Array:
        difference = _difference(current, averaged)
        if _is_inexact(averaged):
            return averaged + difference / (num_averaged + 1)
        # In float32, as torch (XLA multiplies by the reciprocal of the count, so a
        # truncated result can differ from torch's by one).
        count = _as_torch_default_float(jnp.asarray(num_averaged) + 1)
        return _as_torch_default_float(averaged) + (
            _as_torch_default_float(difference) / count
        )

    return swa_update


# --- the functional form ------------------------------------------------------------


class AveragedState(NamedTuple):
    """The state of :func:`averaged`, with torch's count name.

    Attributes:
      n_averaged: int32 scalar, the number of models averaged so far.
      params: the averaged params, a tree shaped like the params.
    """

    n_averaged: Array
    params: PyTree


class Averaging(NamedTuple):
    """An ``(init, update)`` pair of pure functions averaging params over steps.

    ``init(params) -> AveragedState`` and ``update(params, state) -> AveragedState``
    (see :func:`averaged`).
    """

    init: Callable[[PyTree], AveragedState]
    update: Callable[[PyTree, AveragedState], AveragedState]


def _average_leaves(
    averaged: list,
    current: list,
    num_averaged: Array,
    avg_fn: AvgFn | None,
    multi_avg_fn: MultiAvgFn | None,
) -> list:
    """The averaged leaves after one more model, by torch's dispatch (before the
    cast back to each leaf's dtype)."""
    if multi_avg_fn is None:
        per_leaf = get_swa_avg_fn() if avg_fn is None else avg_fn
        return [per_leaf(a, c, num_averaged) for a, c in zip(averaged, current)]
    # torch calls multi_avg_fn once per (device, dtype) group of the averaged leaves,
    # the groups in order of first appearance, each in the leaves' order.
    groups: dict[Any, list[int]] = {}
    for i, leaf in enumerate(averaged):
        groups.setdefault(leaf.dtype, []).append(i)
    new = list(averaged)
    for indices in groups.values():
        results = list(
            multi_avg_fn(
                [averaged[i] for i in indices],
                [current[i] for i in indices],
                num_averaged,
            )
        )
        if len(results) != len(indices):
            raise ValueError(
                f"multi_avg_fn returned {len(results)} arrays for a group of "
                f"{len(indices)} leaves"
            )
        for i, result in zip(indices, results):
            new[i] = result
    return new


def _cast_like(results: Sequence[Any], leaves: Sequence[Array], names: list) -> list:
    """torch's ``copy_`` into the averaged leaf: cast to its dtype (a float into an
    integer leaf truncates), never a change of shape."""
    out = []
    for result, leaf, name in zip(results, leaves, names):
        result = jnp.asarray(result)
        if result.shape != leaf.shape:
            raise ValueError(
                f"the average of {name} has shape {result.shape}, but the leaf "
                f"has shape {leaf.shape}"
            )
        out.append(result.astype(leaf.dtype))
    return out


def averaged(
    avg_fn: AvgFn | None = None, multi_avg_fn: MultiAvgFn | None = None
) -> Averaging:
    r"""A running average of params: torch's ``AveragedModel`` as pure functions.

    With :math:`n` models averaged so far (``state.n_averaged``), ``update`` gives

    .. math::
        \bar W \leftarrow \begin{cases} W & n = 0 \\
        \text{avg}(\bar W, W, n) & n > 0 \end{cases}, \qquad n \leftarrow n + 1

    where avg is ``avg_fn`` leaf by leaf, or ``multi_avg_fn`` on the list of leaves
    of each dtype, or (neither given) the equal-weight average
    :math:`\bar W + (W - \bar W) / (n + 1)` (SWA). Each result is cast to its leaf's
    dtype. ``update`` is traceable: ``jax.jit``, ``lax.scan`` and ``vmap`` apply,
    and the averaged leaves keep the params' shardings.

    Args:
      avg_fn: ``avg_fn(averaged, current, num_averaged) -> array`` for one leaf
        (e.g. :func:`get_ema_avg_fn`), or None.
      multi_avg_fn: ``multi_avg_fn(averaged, current, num_averaged) -> list`` for
        lists of leaves (e.g. :func:`get_ema_multi_avg_fn`), or None.

    Returns:
      An :class:`Averaging`: ``init(params)`` (the averaged params start as a copy
      of ``params``, ``n_averaged`` 0) and ``update(params, state)``.

    Raises:
      AssertionError: both ``avg_fn`` and ``multi_avg_fn`` are given (torch's).

    Example:
      >>> swa = fo.swa_utils.averaged()                    # equal weights (SWA)
      >>> swa_state = swa.init(params)
      >>> swa_state = jax.jit(swa.update)(params, swa_state)   # once per epoch
    """
    if avg_fn is not None and multi_avg_fn is not None:
        raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")

    def init(params: PyTree) -> AveragedState:
        return AveragedState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.copy, params))

    def update(params: PyTree, state: AveragedState) -> AveragedState:
        leaves, treedef = jax.tree.flatten(state.params)
        treedef = cast(Any, treedef)  # the stubs do not know PyTreeDef's methods
        if jax.tree.structure(params) != treedef:
            raise ValueError(
                f"params have the structure {jax.tree.structure(params)}, but the "
                f"averaged params have {treedef}"
            )
        current = treedef.flatten_up_to(params)
        names = leaf_names(state.params, "params")
        for name, leaf, new in zip(names, leaves, current):
            if jnp.shape(new) != leaf.shape:
                raise ValueError(
                    f"{name} has shape {jnp.shape(new)}, but the averaged leaf has "
                    f"shape {leaf.shape}"
                )
        n = state.n_averaged

        def copy() -> list:
            return _cast_like(current, leaves, names)

        def average() -> list:
            results = _average_leaves(leaves, current, n, avg_fn, multi_avg_fn)
            return _cast_like(results, leaves, names)

        new_leaves = jax.lax.cond(n == 0, copy, average)
        return AveragedState(n + 1, treedef.unflatten(new_leaves))

    return Averaging(init, update)


# --- AveragedModel ------------------------------------------------------------------


def _dotted(path: tuple) -> str:
    """A leaf's name: its key path joined by ``.`` (torch's parameter names)."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def _named_leaves(tree: PyTree) -> dict[str, Array]:
    return {
        _dotted(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _shape_text(shape: tuple) -> str:
    return f"torch.Size({list(shape)})"


def _tracked_update(
    averaging: Averaging, state: AveragedState, current: PyTree, synced: PyTree
) -> tuple[AveragedState, PyTree]:
    # The buffers that are not averaged are copied (torch's copy_), so that the
    # averaged model never holds an array the training loop may donate.
    return averaging.update(current, state), jax.tree.map(jnp.copy, synced)


class AveragedModel:
    r"""torch's ``AveragedModel``: a running average (SWA or EMA) of a model.

    The averaged model starts as a copy of ``model``, with ``n_averaged = 0``.
    :meth:`update_parameters` then applies torch's rule (see :func:`averaged`): the
    first call copies the model's parameters, each later one averages them in with
    ``avg_fn`` (leaf by leaf), ``multi_avg_fn`` (per dtype group) or, neither
    given, the equal-weight running mean
    :math:`\bar W + (W - \bar W) / (n + 1)`. The update is one jitted computation,
    compiled at the first call and reused after.

    ``model`` is a pytree of arrays (all of its leaves are parameters; give torch's
    names, e.g. a dict from ``named_parameters()``, for the state dict to match
    torch's) or a flax ``nnx.Module``, whose ``nnx.Param`` variables are the
    parameters and whose ``nnx.BatchStat`` variables (BatchNorm's running
    statistics) are torch's buffers: averaged too with ``use_buffers=True``, else
    copied from the model at each update, as torch does.

    Args:
      model: the params (a pytree) or an ``nnx.Module``.
      device: a ``jax.Device`` or ``Sharding`` to keep the averaged copy on (and to
        move the model's arrays to before averaging), or None (where they are).
      avg_fn: ``avg_fn(averaged, current, num_averaged) -> array``, or None.
      multi_avg_fn: ``multi_avg_fn(averaged, current, num_averaged) -> list``, or
        None.
      use_buffers: average an nnx model's ``BatchStat`` buffers as well.

    Raises:
      AssertionError: both ``avg_fn`` and ``multi_avg_fn`` are given (torch's).

    Example:
      >>> swa_model = fo.swa_utils.AveragedModel(model)           # an nnx.Module
      >>> swa_scheduler = fo.swa_utils.SWALR(opt, swa_lr=0.05)
      >>> for epoch in range(epochs):
      ...     train_one_epoch(model, opt)
      ...     if epoch >= swa_start:
      ...         swa_model.update_parameters(model)
      ...         swa_scheduler.step()
      >>> fo.swa_utils.update_bn(loader, swa_model)
      >>> predictions = swa_model(x)                       # swa_model.module(x)
    """

    def __init__(
        self,
        model: PyTree,
        device: Any = None,
        avg_fn: AvgFn | None = None,
        multi_avg_fn: MultiAvgFn | None = None,
        use_buffers: bool = False,
    ) -> None:
        averaging = averaged(avg_fn, multi_avg_fn)
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers
        self.device = device
        self._is_nnx = isinstance(model, nnx.Module)
        if self._is_nnx:
            graphdef, state = nnx.split(model)
            self._module = nnx.merge(graphdef, self._copied(state))
        else:
            self._module = self._copied(model)
        self._n_averaged = self._copied(jnp.zeros((), jnp.int32))
        self._update = jax.jit(lambda *args: _tracked_update(averaging, *args))

    def _copied(self, tree: PyTree) -> PyTree:
        if self.device is not None:
            return jax.device_put(tree, self.device, may_alias=False)
        return jax.tree.map(jnp.copy, tree)

    @property
    def module(self) -> PyTree:
        """The averaged model: a pytree like the one given, or an ``nnx.Module``."""
        return self._module

    @property
    def n_averaged(self) -> Array:
        """The number of models averaged so far (an int32 scalar)."""
        return self._n_averaged

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The averaged nnx model's forward pass (torch's ``forward``)."""
        if not self._is_nnx:
            raise TypeError(
                "an AveragedModel of a pytree has no forward pass: apply the model "
                "function to .module"
            )
        return self._module(*args, **kwargs)

    def _split(self, model: Any) -> tuple[PyTree, PyTree]:
        """(averaged part, copied part) of a model of this averaged model's kind."""
        if not self._is_nnx:
            if isinstance(model, nnx.Module):
                raise TypeError(
                    "this AveragedModel averages a pytree; got an nnx.Module"
                )
            return model, ()
        if not isinstance(model, nnx.Module):
            raise TypeError(
                f"this AveragedModel averages an nnx.Module; got {type(model).__name__}"
            )
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        buffers = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        if self.use_buffers:  # torch's order: parameters, then buffers
            return (params, buffers), {}
        return (params,), buffers

    def update_parameters(self, model: PyTree) -> None:
        """Average ``model``'s current parameters in (torch's rule, see the class).

        Args:
          model: params of the structure given to the constructor, or an
            ``nnx.Module`` of the same structure.
        """
        current, synced = self._split(model)
        if self.device is not None:
            current, synced = jax.device_put((current, synced), self.device)
        tracked, _ = self._split(self._module)
        state, synced = self._update(
            AveragedState(self._n_averaged, tracked), current, synced
        )
        self._n_averaged = state.n_averaged
        if self._is_nnx:
            for part in (*state.params, synced):
                nnx.update(self._module, part)
        else:
            self._module = state.params

    def _named_state(self) -> dict[str, Array]:
        if self._is_nnx:
            return _named_leaves(
                nnx.to_pure_dict(
                    nnx.state(self._module, nnx.Any(nnx.Param, nnx.BatchStat))
                )
            )
        return _named_leaves(self._module)

    def state_dict(self) -> dict[str, Any]:
        """torch's ``AveragedModel.state_dict()``: ``{"n_averaged": n,
        "module.<name>": array, ...}``.

        A leaf's name is its key path joined by ``.``; for an nnx model these are
        nnx's paths (``module.linear.kernel``, with nnx's array layouts), its
        ``Param`` and ``BatchStat`` variables. ``fo.interop.to_torch`` turns the
        arrays into tensors for torch's ``load_state_dict``.

        Returns:
          A dict of JAX arrays, ``n_averaged`` first, as torch orders it.
        """
        named = self._named_state()
        return {"n_averaged": self._n_averaged} | {
            f"module.{name}": leaf for name, leaf in named.items()
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state from :meth:`state_dict` or from torch's ``AveragedModel``.

        Values may be JAX, NumPy or torch arrays; each is cast to its leaf's dtype
        (as torch's ``copy_``) and placed like the leaf. Nothing changes unless
        every entry is valid.

        Args:
          state_dict: ``{"n_averaged": n, "module.<name>": array, ...}``.

        Raises:
          RuntimeError: torch's error for missing, unexpected, mis-shaped or
            non-array entries.
        """
        current = {"n_averaged": self._n_averaged} | {
            f"module.{name}": leaf for name, leaf in self._named_state().items()
        }
        errors, loaded = [], {}
        # In the given order: a torch state dict's is its module's, as torch reports.
        for key, value in state_dict.items():
            if key not in current:
                continue
            leaf = current[key]
            if not hasattr(value, "shape"):
                errors.append(
                    f'While copying the parameter named "{key}", expected '
                    "torch.Tensor or Tensor-like object from checkpoint but received "
                    f"{type(value)}"
                )
                continue
            array = np.asarray(interop.to_numpy(value))
            if leaf.shape == () and array.shape == (1,):  # torch's 0-dim allowance
                array = array.reshape(())
            if array.shape != leaf.shape:
                errors.append(
                    f"size mismatch for {key}: copying a param with shape "
                    f"{_shape_text(array.shape)} from checkpoint, the shape in "
                    f"current model is {_shape_text(leaf.shape)}."
                )
                continue
            loaded[key] = jax.device_put(
                jnp.asarray(array).astype(leaf.dtype), leaf.sharding
            )
        missing = [key for key in current if key not in state_dict]
        unexpected = [key for key in state_dict if key not in current]
        if unexpected:
            names = ", ".join(f'"{k}"' for k in unexpected)
            errors.insert(0, f"Unexpected key(s) in state_dict: {names}. ")
        if missing:
            names = ", ".join(f'"{k}"' for k in missing)
            errors.insert(0, f"Missing key(s) in state_dict: {names}. ")
        if errors:
            raise RuntimeError(
                "Error(s) in loading state_dict for AveragedModel:\n\t"
                + "\n\t".join(errors)
            )
        self._n_averaged = loaded.pop("n_averaged")
        values = [loaded[f"module.{name}"] for name in self._named_state()]
        if self._is_nnx:
            like = nnx.to_pure_dict(
                nnx.state(self._module, nnx.Any(nnx.Param, nnx.BatchStat))
            )
            nnx.update(
                self._module, jax.tree.unflatten(jax.tree.structure(like), values)
            )
        else:
            self._module = jax.tree.unflatten(jax.tree.structure(self._module), values)


# --- SWALR --------------------------------------------------------------------------


def _check_swalr(anneal_epochs: Any, anneal_strategy: Any) -> None:
    """SWALR's argument checks, in torch's order."""
    if anneal_strategy not in ["cos", "linear"]:
        raise ValueError(
            "anneal_strategy must be one of 'cos' or 'linear', "
            f"instead got {anneal_strategy}"
        )
    if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
        raise ValueError(
            f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}"
        )


def _anneal(strategy: str, t: Any, cos: Callable[[Any], Any]) -> Any:
    """The fraction of the way to the SWA lr at progress ``t`` in [0, 1]."""
    if strategy == "cos":
        return (1 - cos(math.pi * t)) / 2
    return t


class SWALR(LRScheduler):
    r"""torch's ``SWALR``: anneal each group's lr to its ``swa_lr``, then hold it.

    At scheduler step :math:`s` (0 at construction) with :math:`E` =
    ``anneal_epochs``, :math:`\alpha_s = f(\min(1, s / \max(1, E)))` with
    :math:`f(t) = (1 - \cos \pi t) / 2` (``"cos"``) or :math:`f(t) = t`
    (``"linear"``), and

    .. math::
        \eta_s = \alpha_s\, \eta_{swa} + (1 - \alpha_s)\, \eta_0

    where :math:`\eta_0` is the lr when annealing began, recovered at each step from
    the current lr as torch does (so another scheduler may have set it). With
    :math:`E = 0` the lr is ``swa_lr`` from the constructor on.

    Args:
      optimizer: a facade optimizer (or any with torch's ``param_groups``).
      swa_lr: the SWA lr, one for all groups or a list with one per group.
      anneal_epochs: the number of annealing steps, an int >= 0.
      anneal_strategy: ``"cos"`` or ``"linear"``.
      last_epoch: the index of the last epoch (-1 starts the schedule).

    Raises:
      ValueError: torch's errors for a wrong ``swa_lr`` list length, strategy or
        ``anneal_epochs``; nothing is changed before them.

    Example:
      >>> scheduler = fo.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
      >>> swa_scheduler = fo.swa_utils.SWALR(opt, swa_lr=0.05, anneal_epochs=5)
      >>> for epoch in range(100):
      ...     train_one_epoch(opt)
      ...     if epoch > swa_start:
      ...         swa_scheduler.step()
      ...     else:
      ...         scheduler.step()
    """

    def __init__(
        self,
        optimizer,
        swa_lr: float | Sequence[float],
        anneal_epochs: int = 10,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        last_epoch: int = -1,
    ) -> None:
        swa_lrs = _format_param("swa_lr", optimizer, swa_lr)
        _check_swalr(anneal_epochs, anneal_strategy)
        for value, group in zip(swa_lrs, optimizer.param_groups, strict=True):
            group["swa_lr"] = value
        self._set_anneal_func(anneal_strategy)
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _linear_anneal(t):
        return _anneal("linear", t, math.cos)

    @staticmethod
    def _cosine_anneal(t):
        return _anneal("cos", t, math.cos)

    def _set_anneal_func(self, anneal_strategy: str) -> None:
        # torch's attribute names; a static method (not a closure) keeps the
        # scheduler picklable
        self._anneal_strategy = anneal_strategy
        if anneal_strategy == "cos":
            self.anneal_func = self._cosine_anneal
        else:
            self.anneal_func = self._linear_anneal

    @staticmethod
    def _get_initial_lr(lr, swa_lr, alpha):
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self) -> list:
        """The next lr of each group (called by :meth:`step`)."""
        _warn_get_lr_called_within_step(self)
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_t = max(0, min(1, (step - 1) / max(1, self.anneal_epochs)))
        prev_alpha = self.anneal_func(prev_t)
        prev_lrs = [
            self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha)
            for group in self.optimizer.param_groups
        ]
        t = max(0, min(1, step / max(1, self.anneal_epochs)))
        alpha = self.anneal_func(t)
        return [
            group["swa_lr"] * alpha + lr * (1 - alpha)
            for group, lr in zip(self.optimizer.param_groups, prev_lrs, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state, torch's keys: every attribute but the optimizer
        and the anneal function."""
        return {
            key: value
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "anneal_func")
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict` (or from torch's ``SWALR``)."""
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)


def swalr(
    lr: Any,
    swa_lr: Any,
    anneal_epochs: int = 10,
    anneal_strategy: Literal["cos", "linear"] = "cos",
) -> Callable[[Any], Any]:
    r""":class:`SWALR` as a pure schedule: the lr after ``count`` scheduler steps,

    .. math::
        \eta_t = \alpha_t\, \eta_{swa} + (1 - \alpha_t)\, \eta_0, \qquad
        \alpha_t = f(\min(1, t' / \max(1, E)))

    with :math:`t' = t` (:math:`t' = \max(1, t)` when :math:`E = 0`) and :math:`f`
    as in :class:`SWALR`. torch's scheduler reaches the same values recursively
    (they agree to rounding).

    Args:
      lr: :math:`\eta_0`, the lr when annealing begins.
      swa_lr: :math:`\eta_{swa}`, the lr annealed to.
      anneal_epochs: :math:`E`, the number of annealing steps, an int >= 0.
      anneal_strategy: ``"cos"`` or ``"linear"``.

    Returns:
      A jnp-traceable schedule ``count -> value``.

    Raises:
      ValueError: torch's errors for the strategy and ``anneal_epochs``.

    Example:
      >>> lr = fo.sequential_lr(
      ...     [fo.cosine_annealing_lr(0.1, T_max=150),  # 0.05 at count 75
      ...      fo.swa_utils.swalr(0.05, swa_lr=0.01, anneal_epochs=5)],
      ...     milestones=[75])
      >>> tx = fo.sgd(lr=lr, momentum=0.9)
    """
    _check_swalr(anneal_epochs, anneal_strategy)

    def schedule(count):
        t = jnp.asarray(count).astype(scalar_dtype())
        if anneal_epochs == 0:
            t = jnp.maximum(1, t)
        alpha = _anneal(
            anneal_strategy, jnp.clip(t / max(1, anneal_epochs), 0, 1), jnp.cos
        )
        return swa_lr * alpha + lr * (1 - alpha)

    return schedule


# --- update_bn ----------------------------------------------------------------------


class _BatchCount(nnx.Variable):
    """The batches a BatchNorm has normalized during :func:`update_bn` (torch's
    ``num_batches_tracked``)."""


def _cumulative_call(base: type) -> Callable:
    def __call__(self, x, use_running_average=None, *, mask=None):
        # Train mode, as torch's model.train(): normalize with the batch statistics.
        running_mean, running_var = self.mean[...], self.var[...]
        out = base.__call__(self, x, use_running_average=False, mask=mask)
        feature_axes = {a % x.ndim for a in np.atleast_1d(self.axis)}
        axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        dtype = jnp.promote_types(x.dtype, running_mean.dtype)
        x = x.astype(dtype)
        if mask is None:
            n = math.prod(x.shape[i] for i in axes)
            if n <= 1:
                raise ValueError(
                    "Expected more than 1 value per channel when training, got "
                    f"input size {x.shape}"
                )
        else:
            n = jnp.sum(jnp.broadcast_to(mask, x.shape), axes).astype(dtype)
        mean = jnp.mean(x, axes, where=mask)
        var_sum = jnp.sum((x - jnp.expand_dims(mean, axes)) ** 2, axes, where=mask)
        # momentum=None: the factor 1 / (batches seen) makes the running values
        # the mean over batches of the batch mean and of the unbiased variance.
        self.num_batches_tracked[...] += 1
        factor = 1 / self.num_batches_tracked[...].astype(dtype)
        self.mean[...] = (
            factor * mean.reshape(running_mean.shape) + (1 - factor) * running_mean
        ).astype(running_mean.dtype)
        unbiased = (var_sum / (n - 1)).reshape(running_var.shape)
        self.var[...] = (factor * unbiased + (1 - factor) * running_var).astype(
            running_var.dtype
        )
        return out

    return __call__


_CUMULATIVE_CLASSES: dict[type, type] = {}


def _cumulative_class(cls: type) -> type:
    """``cls`` (an ``nnx.BatchNorm`` class) with torch's cumulative statistics;
    one per class, so the jitted forward pass is reused across calls."""
    if cls not in _CUMULATIVE_CLASSES:
        _CUMULATIVE_CLASSES[cls] = type(
            f"Cumulative{cls.__name__}", (cls,), {"__call__": _cumulative_call(cls)}
        )
    return _CUMULATIVE_CLASSES[cls]


@nnx.jit
def _forward(model: nnx.Module, x: Any) -> None:
    model(x)


def update_bn(loader: Iterable[Any], model: Any, device: Any = None) -> None:
    r"""torch's ``update_bn``: recompute the running statistics of every
    ``nnx.BatchNorm`` of ``model`` with one pass over ``loader``.

    As torch does: the statistics are reset (mean 0, variance 1), the model runs in
    train mode (batch statistics; dropout on) on each batch, and each BatchNorm
    accumulates with momentum ``None``, so after :math:`K` batches

    .. math::
        \mu = \frac1K \sum_k \bar x_k, \qquad
        \sigma^2 = \frac1K \sum_k \frac{1}{n_k - 1} \sum_i (x_{k,i} - \bar x_k)^2

    per feature, with torch's *unbiased* batch variances (flax's own BatchNorm
    update uses the biased one and a momentum). ``model``'s attributes (its
    ``use_running_average``/``deterministic`` mode, each BatchNorm's ``momentum``)
    are left as they were: the pass runs on an ``nnx.view`` of it in train mode.
    A model without BatchNorm is left untouched.

    Args:
      loader: an iterable of batches: arrays (JAX, NumPy or torch), or lists /
        tuples whose first element is the model's input.
      model: an ``nnx.Module``, or an :class:`AveragedModel` of one.
      device: a ``jax.Device`` or ``Sharding`` to move each batch to, or None.

    Example:
      >>> swa_model = fo.swa_utils.AveragedModel(model)
      >>> # ... training, with swa_model.update_parameters(model)
      >>> fo.swa_utils.update_bn(train_batches, swa_model)
    """
    if isinstance(model, AveragedModel):
        model = model.module
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"update_bn needs an nnx.Module with BatchNorm layers, got "
            f"{type(model).__name__}"
        )
    norms = [
        node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)
    ]
    if not norms:
        return
    for norm in norms:
        if norm.axis_name is not None:
            raise ValueError(
                "update_bn computes each BatchNorm's statistics on its own input; "
                f"a BatchNorm with axis_name={norm.axis_name!r} is not supported"
            )
    for norm in norms:
        norm.mean[...] = jnp.zeros_like(norm.mean[...])
        norm.var[...] = jnp.ones_like(norm.var[...])
    view = nnx.view(
        model, deterministic=False, use_running_average=False, raise_if_not_found=False
    )
    for _, node in nnx.iter_graph(view):
        if isinstance(node, nnx.BatchNorm):
            counted: Any = node  # it becomes a subclass with a batch count
            counted.__class__ = _cumulative_class(type(node))
            counted.num_batches_tracked = _BatchCount(jnp.zeros((), jnp.int32))
    for batch in loader:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        batch = interop.to_jax(batch)
        if device is not None:
            batch = jax.device_put(batch, device)
        _forward(view, batch)

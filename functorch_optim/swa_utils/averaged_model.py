"""torch's ``AveragedModel``: a running average of a model's params (a pytree or a
flax ``nnx.Module``), stepped by :func:`~functorch_optim.swa_utils.averaged`, with
torch's ``state_dict`` keys (``n_averaged``, ``module.<name>``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import interop
from ..optim.compiles import committed, counted
from ..sharding import derived_sharding
from .averaged import AveragedState, averaged
from .avg_fns import Array, AvgFn, MultiAvgFn, PyTree


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


def _own_copy(x: Any) -> jax.Array:
    """A copy of ``x`` committed to its device (a NumPy array: the default one)."""
    if isinstance(x, jax.Array):
        return jax.device_put(x, x.sharding, may_alias=False)
    return jax.device_put(np.array(x), jax.devices()[0])


_BY_VALUE = (bool, int, float, complex, str, type(None))


@dataclasses.dataclass(frozen=True, eq=False)
class _SameFunction:
    """An averaging function as a compiled update's static key: equal to another
    of the same code capturing equal numbers (``get_ema_multi_avg_fn(0.999)``
    called twice), so that averaged models share their compiled update; any
    other function only to itself."""

    function: Callable | None

    def _key(self) -> Any:
        code = getattr(self.function, "__code__", None)
        cells = getattr(self.function, "__closure__", None) or ()
        values = [cell.cell_contents for cell in cells]
        if code is None or not all(isinstance(v, _BY_VALUE) for v in values):
            return self.function
        return code, tuple((type(v), repr(v)) for v in values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SameFunction) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@functools.partial(jax.jit, static_argnums=(0, 1))
def _tracked_update(
    avg_fn: _SameFunction,
    multi_avg_fn: _SameFunction,
    state: AveragedState,
    current: PyTree,
    synced: PyTree,
) -> tuple[AveragedState, PyTree]:
    """One update, compiled once per structure and averaging function for every
    :class:`AveragedModel` (a jit per instance compiled per instance: 1,000
    averaged models took 292 s)."""
    averaging = averaged(avg_fn.function, multi_avg_fn.function)
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

    @counted
    def __init__(
        self,
        model: PyTree,
        device: Any = None,
        avg_fn: AvgFn | None = None,
        multi_avg_fn: MultiAvgFn | None = None,
        use_buffers: bool = False,
    ) -> None:
        averaged(avg_fn, multi_avg_fn)  # torch's check of the pair, now
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
        first = jax.tree.leaves(self._split(self._module)[0])
        self._n_averaged = jax.device_put(
            np.zeros((), np.int32),
            derived_sharding(first[0].sharding, first[0].shape, ()) if first else None,
        )
        self._averaging = (_SameFunction(avg_fn), _SameFunction(multi_avg_fn))

    def _copied(self, tree: PyTree) -> PyTree:
        """A copy of ``tree``'s arrays, committed to their devices (or to
        ``device``) as a compiled update's outputs are, so that the first update
        and the next ones share one program (:func:`~functorch_optim.optim.
        compiles.committed`); a transfer, not a copy compiled per shape."""
        if self.device is not None:
            return jax.device_put(tree, self.device, may_alias=False)
        return jax.tree.map(_own_copy, tree)

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

    @counted
    def update_parameters(self, model: PyTree) -> None:
        """Average ``model``'s current parameters in (torch's rule, see the class).

        Args:
          model: params of the structure given to the constructor, or an
            ``nnx.Module`` of the same structure.
        """
        current, synced = self._split(model)
        if self.device is not None:
            current, synced = jax.device_put((current, synced), self.device)
        leaves, treedef = jax.tree.flatten((current, synced))
        current, synced = jax.tree.unflatten(treedef, committed(leaves))
        tracked, _ = self._split(self._module)
        state, synced = _tracked_update(
            *self._averaging, AveragedState(self._n_averaged, tracked), current, synced
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

    @counted
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

    @counted
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
            # cast and copied on the host (torch's copy_; a NumPy view of a torch
            # tensor is not aliased): nothing compiled per shape
            loaded[key] = jax.device_put(
                np.array(array, dtype=leaf.dtype), leaf.sharding
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

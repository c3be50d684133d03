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

One module per concern, this package exporting their public names:
``avg_fns`` (the averaging functions), ``averaged`` (the functional form),
``averaged_model`` (:class:`AveragedModel`), ``swalr`` (:class:`SWALR`,
:func:`swalr`) and ``update_bn``.

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

from .averaged import AveragedState, Averaging, averaged
from .averaged_model import AveragedModel
from .avg_fns import (
    get_ema_avg_fn,
    get_ema_multi_avg_fn,
    get_swa_avg_fn,
    get_swa_multi_avg_fn,
)
from .swalr import SWALR, swalr
from .update_bn import update_bn

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

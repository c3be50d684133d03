r"""torch.optim.lr_scheduler for the facade optimizers.

The fifteen schedulers of torch 2.13 with torch's names, constructor arguments,
defaults, ``step()`` semantics (the chainable recursive forms and, when an epoch is
passed, the closed forms), ``get_last_lr()``, ``last_epoch``, ``state_dict()`` /
``load_state_dict()`` (the same keys as torch's, so a torch scheduler's state dict
loads here), warnings and errors. A scheduler touches only
``optimizer.param_groups``, ``optimizer.defaults`` and wraps ``optimizer.step`` to
detect a ``scheduler.step()`` before the first ``optimizer.step()``, as torch does;
so it works on any optimizer object with those attributes (the facade's, or
torch's own).

Values are Python floats computed with Python arithmetic, as torch computes them.
The facade passes hyperparameters to its compiled step as traced arrays, so a
scheduler changing ``lr`` (or ``momentum`` / ``betas``) never recompiles it.

The closed forms, the cyclic and one-cycle policies and the plateau state machine are
:mod:`functorch_optim.schedule_math`'s, shared with the pure schedules of
:mod:`functorch_optim.schedules` and :mod:`functorch_optim.plateau`.

Example:
  >>> opt = fo.SGD(params, lr=0.1, momentum=0.9)
  >>> sched = fo.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
  >>> for _ in range(100):
  ...     opt.step(grads)
  ...     sched.step()
"""

from __future__ import annotations

import math
import types
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from typing import Any, SupportsFloat
from weakref import ref

import jax
import numpy as np

from . import schedule_math as sm
from .schedule_math import PY

__all__ = [
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "SequentialLR",
    "CosineAnnealingLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
    "CyclicLR",
    "CosineAnnealingWarmRestarts",
    "OneCycleLR",
    "PolynomialLR",
    "LRScheduler",
]

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)


def _check_optimizer(optimizer: Any) -> None:
    # torch checks isinstance(optimizer, torch.optim.Optimizer); the interface a
    # scheduler uses is param_groups and defaults, so any optimizer having them
    # (the facade's or torch's) is accepted.
    if not (hasattr(optimizer, "param_groups") and hasattr(optimizer, "defaults")):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")


def _format_param(name: str, optimizer, param) -> list:
    """One value per param group: a list of the right length, or a repeated scalar."""
    if isinstance(param, (list, tuple)):
        if len(param) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(param)} values, param_groups has "
                f"{len(optimizer.param_groups)}."
            )
        return list(param)
    return [param] * len(optimizer.param_groups)


def _host(value: Any) -> Any:
    """A JAX array value as a NumPy value of its dtype, so the scheduler's arithmetic
    on it runs on the host and compiles nothing (an op on a JAX array compiles a
    program); any other value as it is."""
    return np.asarray(value)[()] if isinstance(value, jax.Array) else value


def _param_groups_val_list(optimizer, key: str) -> list:
    # torch clones tensor values; JAX arrays are immutable, so a host copy is
    # taken only so that arithmetic on them compiles nothing.
    return [_host(group[key]) for group in optimizer.param_groups]


def _update_param_group_val(param_group: dict, key: str, val) -> None:
    """Set ``param_group[key]``, keeping an array value an array of its dtype, as
    torch fills a tensor lr in place instead of replacing it by a float. The cast
    is made on the host: ``device_put`` compiles nothing (``jnp.asarray(v, dtype)``
    compiles a conversion), and leaves the array uncommitted, as ``jnp.asarray``."""
    if isinstance(param_group[key], jax.Array):
        param_group[key] = jax.device_put(np.asarray(val, param_group[key].dtype))
    else:
        param_group[key] = val


def _set_momentum(group: dict, momentum, use_beta1: bool) -> None:
    if use_beta1:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum


def _setup_momentum_cycle(optimizer, base_momentum, max_momentum, last_epoch):
    """CyclicLR/OneCycleLR's momentum set-up; returns (use_beta1, max, base)."""
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(
            "optimizer must support momentum or beta1 with `cycle_momentum` option "
            "enabled"
        )
    use_beta1 = "betas" in optimizer.defaults
    max_momentums = _format_param("max_momentum", optimizer, max_momentum)
    base_momentums = _format_param("base_momentum", optimizer, base_momentum)
    if last_epoch == -1:
        for m_momentum, b_momentum, group in zip(
            max_momentums, base_momentums, optimizer.param_groups, strict=True
        ):
            _set_momentum(group, m_momentum, use_beta1)
            group["max_momentum"] = m_momentum
            group["base_momentum"] = b_momentum
    return use_beta1, max_momentums, base_momentums


def _patch_track_step_called(scheduler: LRScheduler) -> None:
    """Wrap ``optimizer.step`` so it records that it ran (torch issue #20124).

    The wrapper is an instance attribute calling the class's method on the
    optimizer (held weakly, so the scheduler does not keep it alive).
    """
    opt = scheduler.optimizer
    if hasattr(opt.step, "_wrapped_by_lr_sched"):
        return
    opt_ref = ref(opt)
    func = opt.step.__func__

    @wraps(func)
    def wrapper(*args, **kwargs):
        optimizer = opt_ref()
        optimizer._opt_called = True
        return func.__get__(optimizer, optimizer.__class__)(*args, **kwargs)

    wrapper._wrapped_by_lr_sched = True  # type: ignore[attr-defined]  # a function attribute
    opt.step = wrapper


class _Flag:
    """Set a boolean attribute of a scheduler for the duration of a block."""

    def __init__(self, scheduler: LRScheduler, name: str) -> None:
        self.scheduler, self.name = scheduler, name

    def __enter__(self):
        setattr(self.scheduler, self.name, True)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.scheduler, self.name, False)


def _enable_get_lr_call(scheduler):
    return _Flag(scheduler, "_get_lr_called_within_step")


def _initial_mode(scheduler):
    return _Flag(scheduler, "_is_initial")


def _warn_get_lr_called_within_step(scheduler: LRScheduler) -> None:
    if not scheduler._get_lr_called_within_step:
        warnings.warn(
            "To get the last learning rate computed by the scheduler, "
            "please use `get_last_lr()`.",
            UserWarning,
            stacklevel=3,
        )


class LRScheduler:
    r"""Base class of the schedulers: torch's ``LRScheduler``.

    Subclasses implement :meth:`get_lr` (the chainable form, from the current
    ``group['lr']``) and optionally ``_get_closed_form_lr`` (from ``base_lrs``,
    used when ``step(epoch)`` is given an epoch).

    Args:
      optimizer: the optimizer whose ``param_groups`` are scheduled.
      last_epoch: the index of the last epoch; -1 (default) starts the schedule and
        records each group's ``initial_lr``. Another value resumes, and needs
        ``initial_lr`` in every group (torch's ``KeyError`` otherwise).
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    def __init__(self, optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] "
                        "when resuming scheduler with last_epoch >= 0.\n"
                        "This typically happens when:\n"
                        "1. You're trying to resume training from a checkpoint but "
                        "haven't properly loaded the optimizer state\n"
                        "2. You're using last_epoch >= 0 for a fresh training run "
                        "(not recommended)"
                    )
        self.base_lrs: list = _param_groups_val_list(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        _patch_track_step_called(self)
        self._initial_step()

    def _initial_step(self) -> None:
        """Reset the step count and take the constructor's step."""
        self._step_count = 0
        with _initial_mode(self):
            self.step()

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: every attribute but the optimizer (torch's keys)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict` (or from torch's scheduler)."""
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list:
        """The learning rates of the groups after the last :meth:`step`."""
        return self._last_lr

    def get_lr(self) -> list:
        """The next learning rate of every group (called by :meth:`step`)."""
        raise NotImplementedError

    def step(self, epoch: int | None = None) -> None:
        """Advance the schedule by one epoch (or, deprecated, to ``epoch``).

        Call it after ``optimizer.step()``; torch's warnings flag the opposite
        order and a replaced ``optimizer.step``.
        """
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(
                    "Seems like `optimizer.step()` has been overridden after learning "
                    "rate scheduler initialization. Please, make sure to call "
                    "`optimizer.step()` before `lr_scheduler.step()`. See more "
                    "details at https://pytorch.org/docs/stable/optim.html"
                    "#how-to-adjust-learning-rate",
                    UserWarning,
                    stacklevel=2,
                )
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(
                    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
                    "In PyTorch 1.1.0 and later, you should call them in the opposite "
                    "order: `optimizer.step()` before `lr_scheduler.step()`.  Failure "
                    "to do this will result in PyTorch skipping the first value of "
                    "the learning rate schedule. See more details at "
                    "https://pytorch.org/docs/stable/optim.html"
                    "#how-to-adjust-learning-rate",
                    UserWarning,
                    stacklevel=2,
                )
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        with _enable_get_lr_call(self):
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                if hasattr(self, "_get_closed_form_lr"):
                    values = self._get_closed_form_lr()
                else:
                    values = self.get_lr()
        for param_group, lr in zip(self.optimizer.param_groups, values, strict=True):
            _update_param_group_val(param_group, "lr", lr)
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")

    def _current_lrs(self) -> list:
        return _param_groups_val_list(self.optimizer, "lr")

    def _scaled_lrs(self, factor) -> list:
        return [_host(group["lr"]) * factor for group in self.optimizer.param_groups]


class _LambdaScheduler(LRScheduler):
    """LambdaLR and MultiplicativeLR: per-group functions of the epoch, saved in
    the state dict only when they are callable objects (their ``__dict__``)."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1) -> None:
        self.optimizer = optimizer
        if not isinstance(lr_lambda, (list, tuple)):
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        else:
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(
                    f"Expected {len(optimizer.param_groups)} lr_lambdas, but got "
                    f"{len(lr_lambda)}"
                )
            self.lr_lambdas = list(lr_lambda)
        self._check_lambdas()
        super().__init__(optimizer, last_epoch)

    def _check_lambdas(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        state = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("optimizer", "lr_lambdas")
        }
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
            for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        lr_lambdas = state_dict.pop("lr_lambdas")
        self.__dict__.update(state_dict)
        # Put the key back: the caller's dict must not change (torch #32756).
        state_dict["lr_lambdas"] = lr_lambdas
        for idx, fn in enumerate(lr_lambdas):
            if fn is not None:
                self.lr_lambdas[idx].__dict__.update(fn)


class LambdaLR(_LambdaScheduler):
    r"""Set each group's lr to its initial lr times ``lr_lambda(epoch)``:
    :math:`\eta_t = \eta_0 \lambda(t)`.

    Args:
      optimizer: the optimizer.
      lr_lambda: a function of the epoch, or a list of one per param group.
      last_epoch: the index of the last epoch (-1 starts the schedule).

    Example:
      >>> sched = fo.lr_scheduler.LambdaLR(opt, lr_lambda=lambda epoch: 0.95**epoch)
    """

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        return [
            base_lr * lmbda(self.last_epoch)
            for lmbda, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]


class MultiplicativeLR(_LambdaScheduler):
    r"""Multiply each group's lr by ``lr_lambda(epoch)`` at every step:
    :math:`\eta_t = \eta_{t-1} \lambda(t)`.

    Example:
      >>> sched = fo.lr_scheduler.MultiplicativeLR(opt, lr_lambda=lambda e: 0.95)
    """

    def _check_lambdas(self) -> None:
        for lr_lambda in self.lr_lambdas:
            if not callable(lr_lambda):
                raise TypeError(
                    "lr_lambda should be a function, but got "
                    f"{type(lr_lambda).__name__}"
                )

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        if self._is_initial:
            return self._current_lrs()
        return [
            _host(group["lr"]) * lmbda(self.last_epoch)
            for lmbda, group in zip(
                self.lr_lambdas, self.optimizer.param_groups, strict=True
            )
        ]


class StepLR(LRScheduler):
    r"""Multiply each group's lr by ``gamma`` every ``step_size`` epochs:
    :math:`\eta_t = \eta_0 \gamma^{\lfloor t / s \rfloor}`.

    Example:
      >>> sched = fo.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
    """

    def __init__(
        self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        if (self.last_epoch == 0) or (self.last_epoch % self.step_size != 0):
            return self._current_lrs()
        return self._scaled_lrs(self.gamma)

    def _get_closed_form_lr(self) -> list:
        return [
            sm.step_value(base_lr, self.last_epoch, self.step_size, self.gamma)
            for base_lr in self.base_lrs
        ]


class MultiStepLR(LRScheduler):
    r"""Multiply each group's lr by ``gamma`` at each milestone (by ``gamma**n``
    at a milestone listed ``n`` times).

    Example:
      >>> sched = fo.lr_scheduler.MultiStepLR(opt, milestones=[30, 80], gamma=0.1)
    """

    def __init__(
        self,
        optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        return self._scaled_lrs(self.gamma ** self.milestones[self.last_epoch])

    def _get_closed_form_lr(self) -> list:
        milestones = sorted(self.milestones.elements())
        return [
            sm.multi_step_value(base_lr, self.last_epoch, milestones, self.gamma, PY)
            for base_lr in self.base_lrs
        ]


class ConstantLR(LRScheduler):
    r"""Multiply each group's lr by ``factor`` until epoch ``total_iters``.

    Example:
      >>> sched = fo.lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=4)
    """

    def __init__(
        self,
        optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        sm.check_constant_factor(factor)
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        if self.last_epoch == 0:
            return self._scaled_lrs(self.factor)
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return self._scaled_lrs(1.0 / self.factor)

    def _get_closed_form_lr(self) -> list:
        return [
            sm.constant_value(base_lr, self.last_epoch, self.factor, self.total_iters)
            for base_lr in self.base_lrs
        ]


class LinearLR(LRScheduler):
    r"""Ramp each group's lr factor linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` epochs.

    Example:
      >>> sched = fo.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10)
    """

    def __init__(
        self,
        optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        sm.check_linear_factors(start_factor, end_factor)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        if self.last_epoch == 0:
            return self._scaled_lrs(self.start_factor)
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        return self._scaled_lrs(
            1.0
            + (self.end_factor - self.start_factor)
            / (
                self.total_iters * self.start_factor
                + (self.last_epoch - 1) * (self.end_factor - self.start_factor)
            )
        )

    def _get_closed_form_lr(self) -> list:
        return [
            sm.linear_value(
                base_lr,
                self.last_epoch,
                self.start_factor,
                self.end_factor,
                self.total_iters,
                PY,
            )
            for base_lr in self.base_lrs
        ]


class ExponentialLR(LRScheduler):
    r"""Multiply each group's lr by ``gamma`` every epoch:
    :math:`\eta_t = \eta_0 \gamma^t`.

    Example:
      >>> sched = fo.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    """

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        # On resuming, the constructor's step must not advance the lr again.
        if self._is_initial:
            return self._current_lrs()
        return self._scaled_lrs(self.gamma)

    def _get_closed_form_lr(self) -> list:
        return [
            sm.exponential_value(base_lr, self.last_epoch, self.gamma)
            for base_lr in self.base_lrs
        ]


def _check_schedulers(owner: str, optimizer, schedulers: Sequence) -> None:
    """SequentialLR's and ChainedScheduler's checks of their schedulers."""
    for scheduler_idx, scheduler in enumerate(schedulers):
        if not hasattr(scheduler, "optimizer"):
            raise TypeError(
                f"{owner} at index {scheduler_idx} should have `optimizer` as its "
                "attribute."
            )
        if isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(
                f"{owner} does not support `ReduceLROnPlateau` scheduler as it "
                "requires additional kwargs to be specified when calling `step`, "
                f"but got one at index {scheduler_idx} in the given schedulers "
                "sequence."
            )
        if optimizer != scheduler.optimizer:
            raise ValueError(
                f"{owner} expects all schedulers to belong to the same optimizer, "
                f"but got scheduler {scheduler.__class__.__name__} at index "
                f"{scheduler_idx} has {scheduler.optimizer}, which is different from "
                f"{optimizer.__class__.__name__}."
            )


class _SchedulerContainer(LRScheduler):
    """SequentialLR and ChainedScheduler: the state dict nests the children's."""

    _schedulers: Sequence[LRScheduler]

    def state_dict(self) -> dict[str, Any]:
        state = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("optimizer", "_schedulers")
        }
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        schedulers = state_dict.pop("_schedulers")
        self.__dict__.update(state_dict)
        state_dict["_schedulers"] = schedulers
        for idx, s in enumerate(schedulers):
            self._schedulers[idx].load_state_dict(s)


class SequentialLR(_SchedulerContainer):
    r"""Run ``schedulers`` one after another, switching at ``milestones``.

    Example:
      >>> warmup = fo.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5)
      >>> decay = fo.lr_scheduler.ExponentialLR(opt, gamma=0.9)
      >>> sched = fo.lr_scheduler.SequentialLR(opt, [warmup, decay], milestones=[5])
    """

    def __init__(
        self, optimizer, schedulers: list, milestones: list[int], last_epoch: int = -1
    ) -> None:
        sm.check_scheduler_count(
            self.__class__.__name__, len(schedulers), chained=False
        )
        _check_schedulers(self.__class__.__name__, optimizer, schedulers)
        sm.check_sequential_milestones(len(schedulers), len(milestones))
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer

        # Undo the constructor steps the schedulers took, then take the first's.
        for group in self.optimizer.param_groups:
            _update_param_group_val(group, "lr", group["initial_lr"])
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def recursive_undo(self, sched=None) -> None:
        """Undo the constructor step of every (nested) scheduler."""
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    # torch's SequentialLR.step takes no epoch (torch ignores [override] here too)
    def step(self) -> None:  # type: ignore[override]
        """Step the scheduler of the current phase (restarting it at a milestone)."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class PolynomialLR(LRScheduler):
    r"""Decay each group's lr polynomially to 0 over ``total_iters`` epochs:
    :math:`\eta_t = \eta_0 (1 - \min(t, T)/T)^p`.

    Example:
      >>> sched = fo.lr_scheduler.PolynomialLR(opt, total_iters=4, power=1.0)
    """

    def __init__(
        self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1
    ) -> None:
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        decay_factor = (
            (1.0 - self.last_epoch / self.total_iters)
            / (1.0 - (self.last_epoch - 1) / self.total_iters)
        ) ** self.power
        return self._scaled_lrs(decay_factor)

    def _get_closed_form_lr(self) -> list:
        return [
            sm.polynomial_value(
                base_lr, self.last_epoch, self.total_iters, self.power, PY
            )
            for base_lr in self.base_lrs
        ]


class CosineAnnealingLR(LRScheduler):
    r"""Anneal each group's lr along a cosine from its initial lr to ``eta_min``
    over ``T_max`` epochs (recursively, as torch; past ``T_max`` it rises again):

    .. math::
        \eta_{t+1} = \eta_{min} + (\eta_t - \eta_{min})
            \frac{1 + \cos(\pi (t+1) / T_{max})}{1 + \cos(\pi t / T_{max})}

    Example:
      >>> sched = fo.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-5)
    """

    def __init__(
        self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and self.last_epoch > 0:
            return [
                sm.cosine_value(base_lr, self.eta_min, self.last_epoch, self.T_max, PY)
                for base_lr in self.base_lrs
            ]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            # The recursion divides by 1 + cos(pi) = 0 here: step off the minimum.
            return [
                _host(group["lr"])
                + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                for base_lr, group in zip(
                    self.base_lrs, self.optimizer.param_groups, strict=True
                )
            ]
        return [
            (1 + math.cos(math.pi * self.last_epoch / self.T_max))
            / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
            * (_host(group["lr"]) - self.eta_min)
            + self.eta_min
            for group in self.optimizer.param_groups
        ]

    def _get_closed_form_lr(self) -> list:
        return [
            sm.cosine_value(base_lr, self.eta_min, self.last_epoch, self.T_max, PY)
            for base_lr in self.base_lrs
        ]


class ChainedScheduler(_SchedulerContainer):
    r"""Step several chainable schedulers together at each :meth:`step`.

    Example:
      >>> s1 = fo.lr_scheduler.ConstantLR(opt, factor=0.1, total_iters=2)
      >>> s2 = fo.lr_scheduler.ExponentialLR(opt, gamma=0.9)
      >>> sched = fo.lr_scheduler.ChainedScheduler([s1, s2], optimizer=opt)
    """

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer=None) -> None:
        sm.check_scheduler_count(self.__class__.__name__, len(schedulers), chained=True)
        optimizer = optimizer or schedulers[0].optimizer
        _check_schedulers(self.__class__.__name__, optimizer, schedulers)
        self._schedulers = schedulers
        self.optimizer = optimizer
        self._last_lr = _param_groups_val_list(self._schedulers[-1].optimizer, "lr")

    # torch's ChainedScheduler.step takes no epoch (torch ignores [override] too)
    def step(self) -> None:  # type: ignore[override]
        """Step every chained scheduler, in order."""
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _param_groups_val_list(self._schedulers[-1].optimizer, "lr")


class ReduceLROnPlateau(LRScheduler):
    r"""Reduce each group's lr by ``factor`` when a metric stops improving.

    ``step(metrics)`` compares the metric with the best seen (``threshold``
    relative or absolute per ``threshold_mode``, in ``mode`` 'min' or 'max');
    after more than ``patience`` epochs without improvement the lr becomes
    ``max(lr * factor, min_lr)`` (unless that changes it by at most ``eps``), and
    the next ``cooldown`` epochs do not count.

    Example:
      >>> sched = fo.lr_scheduler.ReduceLROnPlateau(opt, "min", patience=5)
      >>> sched.step(val_loss)
    """

    def __init__(
        self,
        optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        sm.check_plateau_factor(factor)
        self.factor = factor
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(
                    f"expected {len(optimizer.param_groups)} min_lrs, got {len(min_lr)}"
                )
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")
        self._init_is_better(
            mode=mode, threshold=threshold, threshold_mode=threshold_mode
        )
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    # torch's ReduceLROnPlateau.step takes the metric first (torch ignores
    # [override] here too)
    def step(self, metrics: SupportsFloat, epoch=None) -> None:  # type: ignore[override]
        """Record one epoch's metric and reduce the lr on a plateau."""
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        counted = sm.plateau_count(
            self._counters(),
            current,
            self.mode,
            self.threshold,
            self.threshold_mode,
            PY,
        )
        # torch has stored the count when reducing raises (the groups changed)
        self._set_counters(counted)
        counters, reduce = sm.plateau_decide(counted, self.patience, self.cooldown, PY)
        if reduce:
            self._reduce_lr(epoch)
        self._set_counters(counters)
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")

    def _counters(self) -> sm.PlateauCounters:
        return sm.PlateauCounters(self.best, self.num_bad_epochs, self.cooldown_counter)

    def _set_counters(self, counters: sm.PlateauCounters) -> None:
        self.best, self.num_bad_epochs, self.cooldown_counter = counters

    def _reduce_lr(self, epoch) -> None:
        if len(self.optimizer.param_groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    "The number of param groups in the `optimizer` "
                    f"({len(self.optimizer.param_groups)}) differs "
                    "from when `ReduceLROnPlateau` was initialized "
                    f"({len(self.min_lrs)}), usually due to a new "
                    "param group being added to the optimizer. Please "
                    "modify the `min_lrs` field to match the length "
                    "of the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(self.optimizer.param_groups)
        for i, param_group in enumerate(self.optimizer.param_groups):
            new_lr, changes = sm.plateau_reduced(
                float(param_group["lr"]), self.factor, self.min_lrs[i], self.eps, PY
            )
            if changes:
                _update_param_group_val(param_group, "lr", new_lr)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _init_is_better(self, mode, threshold, threshold_mode) -> None:
        sm.check_plateau_modes(mode, threshold_mode)
        self.mode_worse = sm.plateau_worst(mode)
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._init_is_better(
            mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode
        )


class CyclicLR(LRScheduler):
    r"""Cycle each group's lr between ``base_lr`` and ``max_lr`` (CLR), and its
    momentum (Adam's beta1) inversely between ``max_momentum`` and
    ``base_momentum``; see :func:`functorch_optim.schedules.cyclic_lr`.

    Example:
      >>> sched = fo.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1,
      ...                                  step_size_up=10)
    """

    def __init__(
        self,
        optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = _format_param("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                _update_param_group_val(group, "lr", lr)
        self.max_lrs = _format_param("max_lr", optimizer, max_lr)
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        sm.check_cyclic_mode(mode, scale_fn)
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1, self.max_momentums, self.base_momentums = (
                _setup_momentum_cycle(
                    optimizer, base_momentum, max_momentum, last_epoch
                )
            )
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self) -> None:
        if self._scale_fn_custom is not None:
            return
        self._scale_fn_ref, self.scale_mode = sm.cyclic_scale_fn(
            self.mode, self.gamma, None, self.scale_mode
        )

    def scale_fn(self, x) -> float:
        """The scaling policy (``scale_fn`` if given, else the mode's)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        return self._scale_fn_ref(x)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        cycle, scale_factor = sm.cyclic_position(
            self.last_epoch, self.total_size, self.step_ratio, PY
        )

        def scale() -> float:
            # Evaluated for every value it scales, as torch does: a custom policy
            # with state of its own sees torch's calls.
            return self.scale_fn(
                cycle if self.scale_mode == "cycle" else self.last_epoch
            )

        lrs = [
            sm.cyclic_lr_value(base_lr, max_lr, scale_factor, scale())
            for base_lr, max_lr in zip(self.base_lrs, self.max_lrs, strict=True)
        ]
        if self.cycle_momentum:
            momentums = [
                sm.cyclic_momentum_value(
                    base_momentum, max_momentum, scale_factor, scale()
                )
                for base_momentum, max_momentum in zip(
                    self.base_momentums, self.max_momentums, strict=True
                )
            ]
            for group, momentum in zip(
                self.optimizer.param_groups, momentums, strict=True
            ):
                _set_momentum(group, momentum, self.use_beta1)
        return lrs

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # The built-in policy is rebuilt on loading; a custom one is saved only
        # when it is a callable object (its __dict__), as torch does.
        state.pop("_scale_fn_ref", None)
        fn = state.pop("_scale_fn_custom")
        state["_scale_fn_custom"] = None
        if fn is not None and not isinstance(fn, types.FunctionType):
            state["_scale_fn_custom"] = fn.__dict__.copy()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fn = state_dict.pop("_scale_fn_custom")
        super().load_state_dict(state_dict)
        if fn is not None:
            self._scale_fn_custom.__dict__.update(fn)
        self._init_scale_fn()


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""SGDR: cosine annealing from the initial lr to ``eta_min`` in cycles of
    ``T_0``, ``T_0 * T_mult``, ... epochs, restarting at the initial lr.

    ``step(epoch)`` accepts fractional epochs (``epoch + i / iters``) and jumps.

    Example:
      >>> sched = fo.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2)
    """

    def __init__(
        self,
        optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        sm.check_warm_restarts(T_0, T_mult, eta_min)
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        return [
            sm.cosine_value(base_lr, self.eta_min, self.T_cur, self.T_i, PY)
            for base_lr in self.base_lrs
        ]

    def step(self, epoch=None) -> None:
        """Advance one epoch, or move to ``epoch`` (which may be fractional)."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(
                        math.log(
                            (epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult
                        )
                    )
                    self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (
                        self.T_mult - 1
                    )
                    self.T_i = self.T_0 * self.T_mult ** (n)
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        with _enable_get_lr_call(self):
            for param_group, lr in zip(
                self.optimizer.param_groups, self.get_lr(), strict=True
            ):
                _update_param_group_val(param_group, "lr", lr)
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy: each group's lr rises from ``max_lr / div_factor`` to
    ``max_lr`` and anneals to ``max_lr / div_factor / final_div_factor`` (in three
    phases with ``three_phase``), momentum (Adam's beta1) moving inversely; see
    :func:`functorch_optim.schedules.one_cycle_lr`. Stepping past
    ``total_steps`` raises torch's ``ValueError``.

    Example:
      >>> sched = fo.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=1000)
    """

    def __init__(
        self,
        optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        self.total_steps = sm.one_cycle_total_steps(
            total_steps, epochs, steps_per_epoch
        )
        self._schedule_phases = sm.one_cycle_phases(
            self.total_steps, pct_start, three_phase, anneal_strategy
        )
        self._anneal_func_type = anneal_strategy
        max_lrs = _format_param("max_lr", self.optimizer, max_lr)
        if last_epoch == -1:
            for idx, group in enumerate(self.optimizer.param_groups):
                group["initial_lr"] = max_lrs[idx] / div_factor
                group["max_lr"] = max_lrs[idx]
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if self.cycle_momentum:
            self.use_beta1, _, _ = _setup_momentum_cycle(
                optimizer, base_momentum, max_momentum, last_epoch
            )
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        _warn_get_lr_called_within_step(self)
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(
                f"Tried to step {step_num} times. The specified number of total "
                f"steps is {self.total_steps}"
            )
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(self._value(step_num, group, "lr"))
            if self.cycle_momentum:
                momentum = self._value(step_num, group, "momentum")
                _set_momentum(group, momentum, self.use_beta1)
        return lrs

    def _value(self, step_num, group, quantity):
        return sm.one_cycle_value(
            step_num, self._schedule_phases, group, quantity, self._anneal_func_type, PY
        )

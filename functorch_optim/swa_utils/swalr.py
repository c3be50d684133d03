"""torch's ``SWALR`` (a scheduler of :mod:`functorch_optim.lr_scheduler` over a
facade optimizer) and :func:`swalr`, the same annealing as a pure schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax.numpy as jnp

from ..core import scalar_dtype
from ..lr_scheduler import (
    LRScheduler,
    _format_param,
    _warn_get_lr_called_within_step,
)


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

"""functorch_optim: every torch.optim algorithm for JAX, functional and torch-style.

Functional (optax-style) transformations have lowercase names (``fo.adam``); the
torch-style stateful optimizers have torch's class names (``fo.Adam``).
"""

import importlib
from typing import TYPE_CHECKING, Any

from . import interop, lr_scheduler, schedules
from .clipping import (
    clip_by_total_norm,
    clip_grad_norm,
    clip_grad_norm_,
    clip_grad_value,
    clip_grad_value_,
    global_norm,
)
from .core import GradientTransformation, apply_updates, chain
from .grouping import CarvedGroups, carve_groups
from .lbfgs import LBFGS, lbfgs
from .nonfinite import SkipNonfiniteState, all_finite, skip_nonfinite
from .optim import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from .optim import classes as _registry

# Each algorithm's facade class, functional and state type, as the registry lists
# them (its __all__): adding an algorithm adds no line here.
from .optim.classes import *  # noqa: F403
from .packing import PackedState, packed
from .param_groups import ParamGroupsState, set_group_options, with_param_groups
from .schedules import (
    Schedule,
    chained_lr,
    constant_lr,
    cosine_annealing_lr,
    cosine_annealing_warm_restarts,
    cyclic_lr,
    cyclic_momentum,
    exponential_lr,
    lambda_lr,
    linear_lr,
    multi_step_lr,
    multiplicative_lr,
    one_cycle_lr,
    one_cycle_momentum,
    per_epoch,
    polynomial_lr,
    reduce_on_plateau,
    sequential_lr,
    step_lr,
)

__version__ = "0.1.0"

# Submodules that need flax (or other heavy imports) load when first used, so that
# ``import functorch_optim`` costs little more than jax and optax.
_LAZY_SUBMODULES = ("checkpoint", "swa_utils")

if TYPE_CHECKING:
    from . import checkpoint, swa_utils


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    # torch-style facade (functorch_optim.optim) and torch interop
    "Optimizer",
    "CarvedGroups",
    "carve_groups",
    "interop",
    "checkpoint",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    # functional
    "GradientTransformation",
    "apply_updates",
    "chain",
    "clip_by_total_norm",
    "clip_grad_norm",
    "clip_grad_norm_",
    "clip_grad_value",
    "clip_grad_value_",
    "global_norm",
    "LBFGS",
    "lbfgs",
    "PackedState",
    "with_param_groups",
    "set_group_options",
    "ParamGroupsState",
    "packed",
    "SkipNonfiniteState",
    "all_finite",
    "skip_nonfinite",
    # learning-rate schedulers (torch-style) and schedules (functional)
    "lr_scheduler",
    "schedules",
    "swa_utils",
    "chained_lr",
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "cyclic_momentum",
    "exponential_lr",
    "lambda_lr",
    "linear_lr",
    "multi_step_lr",
    "multiplicative_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "polynomial_lr",
    "reduce_on_plateau",
    "sequential_lr",
    "step_lr",
    "per_epoch",
    "Schedule",
]
# every algorithm's facade class, functional and state type: optim/classes.py
__all__ += _registry.__all__

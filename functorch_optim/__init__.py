"""functorch_optim: every torch.optim algorithm for JAX, functional and torch-style.

Functional (optax-style) transformations have lowercase names (``fo.adam``); the
torch-style stateful optimizers have torch's class names (``fo.Adam``).
"""

from .algorithms.adam import adam, adamw
from .algorithms.sgd import sgd
from .clipping import clip_grad_norm, clip_grad_value, global_norm
from .core import GradientTransformation, apply_updates, chain

__version__ = "0.1.0"

__all__ = [
    "GradientTransformation",
    "adam",
    "adamw",
    "apply_updates",
    "chain",
    "clip_grad_norm",
    "clip_grad_value",
    "global_norm",
    "sgd",
]

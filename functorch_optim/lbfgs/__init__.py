"""L-BFGS (``torch.optim.LBFGS``) with one whole ``step()`` compiled by XLA.

torch's ``LBFGS.step(closure)`` runs up to ``max_iter`` quasi-Newton iterations, each
with a two-loop recursion over the last ``history_size`` curvature pairs and either a
fixed step or a strong-Wolfe line search (cubic interpolation, minFunc's scheme).
Here the iterations are one ``lax.while_loop`` and the line search two nested ones, so
a step, line search included, is a single XLA computation that jits, vmaps and scans.

Modules, each importing only those above it:

- :mod:`.line_search`: the strong-Wolfe line search and its cubic interpolation;
- :mod:`.iteration`: flattening, the state, the two-loop recursion, the curvature
  memory and one torch ``step()``;
- :mod:`.torch_layout`: the state as torch keeps it, and back;
- :mod:`.transform`: the options and the pure transformation :func:`lbfgs`;
- :mod:`.facade_step`: the facade's compiled step, shared across optimizers
  (:func:`compile_count` counts its compiles, for tests and debugging);
- :mod:`.facade`: the facade class :class:`LBFGS`, on the facade's
  :class:`~functorch_optim.optim.Optimizer`.
"""

from .facade import LBFGS
from .facade_step import compile_count
from .iteration import flatten, init_state, step_flat
from .torch_layout import TORCH_STATE, from_torch_layout, to_torch_layout
from .transform import lbfgs, lbfgs_options, traced_values

__all__ = [
    "LBFGS",
    "TORCH_STATE",
    "compile_count",
    "flatten",
    "from_torch_layout",
    "init_state",
    "lbfgs",
    "lbfgs_options",
    "step_flat",
    "to_torch_layout",
    "traced_values",
]

"""The torch-style facade: ``fo.Adam(params, lr=...)`` with torch.optim's interface.

Modules, each importing only those above it (and the library's lower layers;
:mod:`.state_dict` names the :class:`Optimizer` type for the type checker only):

- :mod:`.hooks`: ``RemovableHandle``, the per-optimizer and global hooks;
- :mod:`.compiles`: :func:`compile_count`, from JAX's compile events; arrays
  committed alike for every step;
- :mod:`.inputs`: checks on the params and grads users hand in;
- :mod:`.group`: one param group (its structure, per-leaf states, packs, grads);
- :mod:`.compiled_step`: the one jitted step over all groups;
- :mod:`.state_dict`: torch's state-dict format, both ways;
- :mod:`.optimizer`: the :class:`Optimizer` base and its extension points;
- :mod:`.classes`: the registry of algorithms (``fo.SGD``, ``fo.Adam``, ... with
  their functionals and states) and the class factory.
"""

from .classes import optimizer_class
from .compiles import compile_count
from .hooks import (
    RemovableHandle,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from .optimizer import Optimizer, ParamsAsGiven

__all__ = [
    "Optimizer",
    "ParamsAsGiven",
    "RemovableHandle",
    "compile_count",
    "optimizer_class",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
]

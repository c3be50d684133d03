"""The torch-style facade: ``fo.Adam(params, lr=...)`` with torch.optim's interface.

Modules, each importing only those above it and the library's lower layers:

- :mod:`.hooks`: ``RemovableHandle``, the per-optimizer and global hooks;
- :mod:`.compiles`: :func:`compile_count`, from JAX's compile events; arrays
  committed alike for every step;
- :mod:`.inputs`: checks on the params and grads users hand in;
- :mod:`.group`: one param group (its structure, per-leaf states, packs, grads);
- :mod:`.compiled_step`: the one jitted step over all groups;
- :mod:`.state_dict`: the facade's side of torch's state-dict format (the format
  itself is :mod:`functorch_optim.torch_format`, shared with the interop);
- :mod:`.optimizer`: the :class:`Optimizer` base and its extension points;
- :mod:`.classes`: the registry of algorithms (``fo.SGD``, ``fo.Adam``, ... with
  their functionals and states) and the class factory.
"""

from .classes import optimizer_class, registered
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

# The facade classes are here too, as torch's are in torch.optim (fo.optim.Adam is
# fo.Adam), read from the registry so that adding an algorithm adds no line here.
for _facade in registered():
    globals()[_facade.__name__] = _facade
    __all__.append(_facade.__name__)

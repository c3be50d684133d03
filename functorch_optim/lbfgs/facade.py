"""``fo.LBFGS``: torch's ``LBFGS`` class on the facade's :class:`Optimizer`.

The facade's base keeps the param group, its options and the state dict format; this
class implements the base's extension points for an optimizer whose step updates all
params together (``per_leaf = False``): one global step (:mod:`.facade_step`) over
the params as the closure sees them (``closure_params``), one state for all params
(``global_state``, held on the first, as torch does) and torch's layout of it
(``to_torch_state`` / ``from_torch_state``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .. import interop
from ..optim import Optimizer
from ..rule import Algorithm, Array
from .facade_step import compiled_step
from .iteration import flat_struct, init_state
from .torch_layout import from_torch_layout, to_torch_layout
from .transform import (
    check_line_search,
    lbfgs,
    lbfgs_options,
    traced_values,
    validate,
)


def _global_rule(*args):
    raise TypeError(
        "LBFGS has no per-leaf rule: one step updates all parameters together "
        "(functorch_optim.lbfgs)"
    )


# What the facade's base reads of an algorithm (name, defaults from the signature,
# validation); L-BFGS's step is global, so the per-leaf rules refuse, and its state
# is torch's layout on the first param (TORCH_STATE), without a state type.
ALGORITHM = Algorithm(
    name="LBFGS",
    functional=lbfgs,
    init=_global_rule,
    step=_global_rule,
    validate=validate,
    complex_as_real=True,
    reads_params=lambda options: True,
)


# What the constructor's locals() hold besides its options: the `__class__` cell is
# there because the constructor calls super().
_NOT_OPTIONS = frozenset({"self", "params", "__class__"})
# compiled steps an optimizer keeps a reference to, one per closure key
_COMPILED_CLOSURES = 8


class LBFGS(Optimizer):
    """``torch.optim.LBFGS`` over JAX arrays: the stateful form of :func:`lbfgs`.

    ``step(closure)`` with ``closure(params) -> loss`` (``params`` shaped like
    :attr:`params`) runs one torch ``step()``, differentiating the closure inside
    one compiled XLA computation, and returns the loss of its first evaluation.
    Changing ``lr``, ``max_iter``, ``max_eval`` or the tolerances in
    ``param_groups`` does not recompile. Nor does a closure defined anew for each
    step (``opt.step(lambda p: loss_fn(p, x, y))`` in the training loop), nor a new
    optimizer for the same problem: the compiled step is kept for the process per
    closure *code*, params structure, shapes and dtypes, and the static options
    (``line_search_fn``, ``history_size``). The arrays the closure captures (``x``,
    ``y``) are passed in as arguments; numbers, strings and functions it captures
    are part of the key (a new value compiles once). A closure capturing any other
    object (a model, a list) is compiled per closure object, since that object's
    contents may change between steps. One parameter group only, as torch.

    ``state`` / ``state_dict()`` hold torch's entries on the first parameter
    (``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``,
    ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``), with torch's lists of
    curvature pairs; ``load_state_dict`` takes torch's.

    Example:
      >>> opt = fo.LBFGS(params, line_search_fn="strong_wolfe")
      >>> loss = opt.step(loss_fn)      # loss_fn(params) -> scalar
      >>> params = opt.params
    """

    algorithm = ALGORITHM
    per_leaf = False

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        # torch's signature, written out; its defaults are fo.lbfgs's
        # (tests/test_types.py checks them against each other)
        given = {k: v for k, v in locals().items() if k not in _NOT_OPTIONS}
        super().__init__(params, lbfgs_options(**given))
        if len(self.param_groups) != 1:
            raise ValueError(
                "LBFGS doesn't support per-parameter options (parameter groups)"
            )
        # the compiled steps this optimizer has run, by key (shared with other
        # optimizers: see facade_step)
        self._compiled: OrderedDict[Any, Callable] = OrderedDict()

    def step(self, closure):
        """One torch ``LBFGS.step(closure)``; returns the closure's first loss."""
        if len(self.param_groups) != 1:
            raise AssertionError(
                f"Expected exactly one param_group, but got {len(self.param_groups)}"
            )
        if not callable(closure):
            raise TypeError(
                "LBFGS.step needs a closure: closure(params) -> loss, got "
                f"{type(closure).__name__}"
            )
        options = self.group_options(0)
        check_line_search(options)
        leaves = self.param_groups[0]["params"]
        state = self.global_state
        if state is None:
            state = init_state(flat_struct(leaves), options.history_size)
        key, run, captured = compiled_step(
            closure, self.closure_params(), options.line_search_fn, options.history_size
        )
        self._compiled[key] = run
        self._compiled.move_to_end(key)
        if len(self._compiled) > _COMPILED_CLOSURES:
            self._compiled.popitem(last=False)
        new_leaves, state = run(list(leaves), state, traced_values(options), captured)
        leaves[:] = new_leaves
        self.global_state = state
        return state["orig_loss"]

    def to_torch_state(self, state) -> dict:
        """The global state in torch's layout (lists of curvature pairs)."""
        if state is None:
            return {}
        return interop.to_jax(to_torch_layout(state))

    def from_torch_state(self, pid, param, options, saved):
        """The global state from torch's layout, which only the first param has."""
        if saved is None or len(saved) == 0:
            return None
        leaves = self.param_groups[0]["params"]
        if param is not leaves[0]:
            raise ValueError(
                f"loaded state has LBFGS state for parameter {pid}: LBFGS keeps its "
                "state on the first parameter only"
            )
        like = init_state(flat_struct(leaves), options.history_size)
        return from_torch_layout(interop.to_numpy(dict(saved)), like)

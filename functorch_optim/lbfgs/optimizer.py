"""``fo.LBFGS``: torch's ``LBFGS`` class on the facade's :class:`Optimizer`.

The facade's base keeps the param group, its options and the state dict format; this
class replaces its per-leaf step with one global step (:mod:`.compiled_step`) and its
per-leaf state with one state for all parameters, held on the first, as torch does.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .. import interop
from ..algorithms.base import Algorithm
from ..facade import Optimizer
from .compiled_step import compiled_step
from .iteration import flatten, init_state
from .torch_layout import TORCH_STATE, from_torch_layout, to_torch_layout
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
# validation, state names); L-BFGS's step is global, so the per-leaf rules refuse.
ALGORITHM = Algorithm(
    name="LBFGS",
    functional=lbfgs,
    init=_global_rule,
    step=_global_rule,
    validate=validate,
    state_names=TORCH_STATE,
    complex_as_real=True,
    reads_params=lambda options: True,
)


@dataclasses.dataclass(frozen=True)
class _ParamsAsGiven:
    """The closure's argument built from the flat leaves: the one group's params in
    the structure they were given (in a list when given as group dicts).

    Compares by that structure, so optimizers over params given alike share one
    compiled step; it holds no arrays, so a shared step keeps no optimizer alive.
    """

    structure: Any  # the facade's record of how the group's params were given
    in_list: bool

    def __call__(self, leaves: list) -> Any:
        tree = self.structure.unflatten(leaves)
        return [tree] if self.in_list else tree

    def __hash__(self) -> int:
        # the structure's lists of names make it unhashable; equal structures have
        # equal treedefs
        return hash((self.structure.treedef, self.in_list))


_SIGNATURE = inspect.signature(lbfgs)
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

    def __init__(self, params, *args, **kwargs) -> None:
        given = _SIGNATURE.bind(*args, **kwargs)
        given.apply_defaults()
        super().__init__(params, lbfgs_options(**given.arguments))
        if len(self.param_groups) != 1:
            raise ValueError(
                "LBFGS doesn't support per-parameter options (parameter groups)"
            )
        # the compiled steps this optimizer has run, by key (shared with other
        # optimizers: see compiled_step)
        self._compiled: OrderedDict[Any, Callable] = OrderedDict()

    # inspect reads a function's __signature__, which typeshed does not declare
    __init__.__signature__ = _SIGNATURE.replace(  # type: ignore[attr-defined]
        parameters=[
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *_SIGNATURE.parameters.values(),
        ],
        return_annotation=None,
    )

    def _check_initializable(self, group) -> None:
        pass  # the state is created at the first step, for all params together

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
        group = self.param_groups[0]
        options = self._group_options(group)
        check_line_search(options)
        leaves = group["params"]
        state = self._states[0][0]
        if state is None:
            state = init_state(flatten(leaves)[0], options.history_size)
        # with one group, the facade's params as given are that group's, in a list
        # when given as group dicts
        as_given = _ParamsAsGiven(self._structures[0], self._given_as_groups)
        key, run, captured = compiled_step(
            closure, as_given, options.line_search_fn, options.history_size
        )
        self._compiled[key] = run
        self._compiled.move_to_end(key)
        if len(self._compiled) > _COMPILED_CLOSURES:
            self._compiled.popitem(last=False)
        new_leaves, state = run(list(leaves), state, traced_values(options), captured)
        leaves[:] = new_leaves
        self._states[0][0] = state
        return state["orig_loss"]

    def _torch_state(self, state) -> dict:
        if state is None:
            return {}
        return interop.to_jax(to_torch_layout(state))

    def _loaded_state(self, pid, param, options, saved):
        if saved is None or len(saved) == 0:
            return None
        leaves = self.param_groups[0]["params"]
        if param is not leaves[0]:
            raise ValueError(
                f"loaded state has LBFGS state for parameter {pid}: LBFGS keeps its "
                "state on the first parameter only"
            )
        like = init_state(flatten(leaves)[0], options.history_size)
        return from_torch_layout(interop.to_numpy(dict(saved)), like)

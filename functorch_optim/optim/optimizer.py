"""The base of the torch-style optimizers: ``fo.Adam(params, lr=...)`` with
torch.optim's interface.

:class:`Optimizer` keeps parameters, state and hyperparameters the way
``torch.optim.Optimizer`` does (``param_groups``, ``state``, ``state_dict``, hooks,
``zero_grad``) and holds no math: every ``step`` runs the algorithms' per-leaf rules
(:mod:`functorch_optim.algorithms`) through :func:`functorch_optim.runner.step_leaves`
in ONE jitted XLA computation for all groups (:mod:`.compiled_step`), with the state
donated so XLA updates it in place. For elementwise algorithms the state of small
leaves is kept packed in flat buffers between steps (:mod:`functorch_optim.packing`),
with a flat copy of their params, so thousands of leaves cost a few kernels and one
slice each; ``state``, ``state_dict`` and ``load_state_dict`` (:mod:`.state_dict`,
in torch's format: :mod:`functorch_optim.torch_format`) see it per leaf, as torch
keeps it. Each param group's params, structure, states and grads are one
:class:`~.group.Group`.

Differences from torch that JAX imposes:
  * arrays are immutable, so the updated parameters are read from ``opt.params`` (or
    ``opt.param_groups[i]['params']``) after a step. Every array a user can hold
    stays valid after later steps: the arrays given to the constructor, read from
    ``opt.params``, ``opt.grads``, ``opt.state`` or ``state_dict()`` (``opt.state``
    and ``state_dict()`` are copies). A step donates only what no user can reach:
    the per-leaf state and the packs' flat buffers. So a step's peak memory holds
    the old and the new params (and the grads) next to the state, where torch's
    in-place update holds one copy of the params.
  * ``opt.state`` is keyed by the parameter's index (as in ``state_dict``); indexing
    it with one of the current parameter arrays works too.
  * gradients are passed in (``step(grads)``), or computed from ``step(closure)``.
  * params given as a dict are numbered in the dict's insertion order (torch's
    ``model.parameters()`` order), not JAX's sorted-key flattening order, and are
    named by their key paths (``{"fc": {"weight": w}}`` -> ``fc.weight``, a list
    index -> ``0``), which ``state_dict()`` carries as torch's ``param_names``.
  * the facade keeps its state in Python, so it cannot run inside ``jax.jit``,
    ``jax.vmap`` or ``jax.grad``; a traced value reaching it is an error before
    anything changes (the functional transforms are the form for those).

Threads: an optimizer may be used from several threads (a logging or checkpoint
thread beside the training loop). Its public methods that read or write the params,
grads or state run under one reentrant lock per optimizer (``step`` with its hooks
and closure, which may call back into it), because a step donates buffers: a read
racing it could hand out a buffer the step then consumes, and two racing steps would
pass one buffer twice. A handed-out param is referenced by the caller before the
lock is released, so the next step sees it held (:meth:`.Group.params_to_donate`)
and copies it. ``param_groups`` are the live dicts, as torch's: their options may
be edited from any thread (a scheduler), their params are read through ``params``.

Extension points, for an optimizer whose step updates all params together (L-BFGS):
it sets :attr:`Optimizer.per_leaf` to False, overrides ``step``, and uses or
overrides :meth:`~Optimizer.group_options`, :meth:`~Optimizer.closure_params`,
:attr:`~Optimizer.global_state`, :meth:`~Optimizer.to_torch_state` and
:meth:`~Optimizer.from_torch_state`.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ..checks import check_param_dtypes
from ..core import is_bcoo
from ..grouping import CarvedGroups
from ..nonfinite import all_finite
from ..rule import Algorithm, Options, check_scalar_lr
from ..runner import init_leaf
from ..torch_format import check_is_dict
from . import compiled_step
from . import state_dict as state_dict_format
from .compiles import counted, counting
from .group import CarvedTree, Group, Structure, new_state
from .hooks import Hooks, with_step_hooks
from .inputs import (
    check_not_traced,
    check_param,
    checked_grad,
    is_array,
    is_group_list,
    is_named,
    is_torch_tensor,
    matches,
    own_leaves,
    typename,
    zeros_like,
)

_all_finite = jax.jit(all_finite)


def _serialized(method: Callable) -> Callable:
    """``method`` run under its optimizer's lock (see "Threads" above), the
    compiles it makes counted (:func:`.compiles.compile_count`)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock, counting():
            return method(self, *args, **kwargs)

    return locked


@dataclasses.dataclass(frozen=True)
class ParamsAsGiven:
    """``leaves -> params``: each group's leaves (in the optimizer's order) in the
    structure the params were given, as :attr:`Optimizer.params` returns them.

    Holds no arrays and compares by the structures, so it may key a compiled step
    shared across optimizers without keeping any of them alive.
    """

    structures: tuple[Structure, ...]
    per_group: bool  # a list with one entry per group, else the one group's
    carved: CarvedTree | None = None  # groups carved from one tree: that tree

    def __call__(self, leaves: list[list]) -> Any:
        if self.carved is not None:
            return self.carved.join(leaves)
        trees = [s.unflatten(ls) for s, ls in zip(self.structures, leaves, strict=True)]
        return trees if self.per_group else trees[0]

    def __hash__(self) -> int:
        # the structures' lists of names make them unhashable; equal structures
        # have equal treedefs
        return hash(
            (tuple(s.treedef for s in self.structures), self.per_group, self.carved)
        )


class Optimizer(Hooks):
    """Base of the torch-style optimizers (``torch.optim.Optimizer`` for JAX arrays).

    A subclass names its :class:`~functorch_optim.rule.Algorithm` in the
    class attribute ``algorithm`` (its record also holds torch's facts: state at
    construction, ``step`` as a tensor, constructor checks on the params); the
    classes of :mod:`functorch_optim.optim.classes` are written out, and
    :func:`~functorch_optim.optim.classes.optimizer_class` makes one for an
    algorithm of your own.
    ``step`` may be overridden (L-BFGS, see the extension points); the step hooks
    wrap every subclass's ``step`` automatically, as torch patches them.

    Args:
      params: a pytree of arrays (dict/list/tuple/registered dataclass), a list of
        ``(name, array)`` pairs, a list of group dicts ``{'params': <pytree or
        pairs>, <option>: value, ...}``, or groups carved from one tree
        (:func:`~functorch_optim.carve_groups`), whose params, grads and
        closures are then that one tree.
      defaults: the validated constructor options, filled into every group.
    """

    algorithm: ClassVar[Algorithm]
    # Extension point: False for an optimizer whose step updates all params
    # together (L-BFGS): it has no per-leaf rule, so the constructor does not
    # check that the rule can initialize each param, and it keeps one state
    # (global_state).
    per_leaf: ClassVar[bool] = True
    # Steps skipped for non-finite gradients (see skip_nonfinite); not part of
    # torch's state_dict, as torch's GradScaler keeps its own count apart.
    skipped_steps: int = 0
    _skip_nonfinite: bool = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "hooked", False):
            # step hooks wrap step, as torch patches it, and the lock wraps both
            # (functools.wraps carries the `hooked` mark out)
            cls.step = _serialized(with_step_hooks(step))  # type: ignore[method-assign]

    @counted
    def __init__(self, params: Any, defaults: Mapping[str, Any]) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self.defaults = dict(defaults)
        # torch's `if x != 0` branches are on options that are off (0) by default:
        # weight decay, momentum, dampening. Only their zeros are static; a zero lr
        # (a schedule's end) is traced like any float and does not recompile.
        self._static_zero = frozenset(
            name
            for name, default in self.algorithm.defaults.items()
            if isinstance(default, (int, float))
            and not isinstance(default, bool)
            and default == 0
        )
        if is_torch_tensor(params):
            check_param(params, "params")
        if is_array(params):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of "
                "Tensors or dicts, but got " + typename(params)
            )
        self._groups: list[Group] = []
        # groups carved from one tree: the tree's layout, set once they are added
        self._carved: CarvedTree | None = None
        if isinstance(params, Iterator):
            params = list(params)
        carved = isinstance(params, CarvedGroups)
        self._given_as_groups = carved or is_group_list(params)
        if carved:
            self._add_carved_groups(params)
        elif self._given_as_groups:
            for group in params:
                self.add_param_group(group)
        else:
            if not jax.tree.leaves(params):
                raise ValueError("optimizer got an empty parameter list")
            self.add_param_group({"params": params})
        check_params = self.algorithm.check_params
        if check_params is not None:
            check_params([group.params for group in self._groups])
        if self.algorithm.state_at_construction:
            for g, group in enumerate(self._groups):
                options = self.group_options(g)
                group.states = [
                    new_state(self.algorithm, p, options) for p in group.params
                ]

    def __getstate__(self) -> dict[str, Any]:
        # a lock cannot be copied or pickled: a copy (copy.deepcopy) gets its own
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Each group's dict: its ``params`` (the current arrays, in the
        optimizer's order) and options, as torch's ``param_groups``; edit the
        options in place (``opt.param_groups[0]['lr'] = 0.01``)."""
        return [group.param_group for group in self._groups]

    # -- groups ------------------------------------------------------------------

    @_serialized
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, filling missing options from ``defaults`` (torch's checks).

        Raises:
          ValueError: the groups were carved from one tree
            (:func:`~functorch_optim.carve_groups`): the params are that tree,
            and an added group's params would not be in it.
        """
        if self._carved is not None:
            # torch adds groups to train frozen layers later; here those are
            # carved at construction and given no grads (None) until then: a
            # param without a grad is not stepped and gets no state, as in torch
            raise ValueError(
                "add_param_group: this optimizer's groups were carved from one "
                "params tree (fo.carve_groups), which its params, grads and "
                "closures are, and an added group would not be in it. Carve every "
                "group from the tree at construction; a param whose grad is None "
                "is not stepped and gets no state, as a frozen param in torch"
            )
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        given = param_group["params"]
        if isinstance(given, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, "
                "but the ordering of tensors in sets will change between runs. "
                "Please use a list instead."
            )
        if isinstance(given, Iterator):
            given = list(given)
        pair_names = None
        if isinstance(given, (list, tuple)) and any(is_named(p) for p in given):
            if not all(is_named(p) for p in given):
                raise ValueError(
                    "all optimizer params should be with/without names. Some param "
                    "names are missing"
                )
            pair_names = [name for name, _ in given]
            given = [p for _, p in given]
            for name, p in zip(pair_names, given):
                check_param(p, f"the param {name!r}")
        self._add_group(param_group, *Structure.of(given, pair_names))

    def _add_carved_groups(self, carved: CarvedGroups) -> None:
        """The constructor's groups, carved from one tree (:attr:`params` is that
        tree from now on)."""
        names = [[name for name, _ in group["params"]] for group in carved.groups]
        for param_group, group_names in zip(carved.groups, names, strict=True):
            # named even when empty (torch names no empty group), so that every
            # carved group has param_names
            leaves = [p for _, p in param_group["params"]]
            self._add_group(param_group, *Structure.of(leaves, group_names))
        self._carved = CarvedTree.of(carved.params, names)

    def _add_group(
        self, param_group: dict[str, Any], structure: Structure, originals: list
    ) -> None:
        """:meth:`add_param_group` for params read as ``structure`` and
        ``originals`` (its leaves, in the optimizer's order)."""
        what = (
            f"param_groups[{len(self._groups)}]['params']"
            if self._given_as_groups or self._groups
            else "params"
        )
        for i, p in enumerate(originals):
            check_param(p, what + structure.describe(i))
        sparse = next((p for p in originals if is_bcoo(p)), None)
        if sparse is not None:
            check_params = self.algorithm.check_params
            if check_params is not None:  # torch's constructor message (SparseAdam)
                check_params([[] for _ in self._groups] + [originals])
            raise TypeError(
                "optimizer can only optimize dense arrays, but one of the params is "
                + typename(sparse)
            )
        for i, p in enumerate(originals):
            check_param_dtypes(p, what + structure.describe(i))
        group = dict(param_group)
        group["params"] = own_leaves(originals)
        if structure.names is not None:
            group["param_names"] = structure.names
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._validate_options(group)
        if self.per_leaf:
            self._check_initializable(group)

        # torch's rule for names given as (name, array) pairs; a dict's key paths
        # name its params without constraining how other groups are given.
        for other in self._groups:
            if ("param_names" in group) != ("param_names" in other.param_group) and (
                structure.pairs or other.structure.pairs
            ):
                current = "with names" if "param_names" in group else "without names"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {current} to the optimizer"
                )
        taken = {id(p) for other in self._groups for p in other.params}
        if any(id(p) in taken for p in originals):
            raise ValueError("some parameters appear in more than one parameter group")
        self._groups.append(Group(self.algorithm, group, structure))

    def _check_initializable(self, group: Mapping[str, Any]) -> None:
        """Raise now the error the algorithm's state initialization would raise for
        a param (torch's Muon rejects non-2-D params in its constructor), tracing
        it abstractly once per shape and dtype."""
        options = Options({name: group[name] for name in self.defaults})
        for shape, dtype in {(p.shape, p.dtype) for p in group["params"]}:
            jax.eval_shape(
                lambda p: init_leaf(self.algorithm, p, options),
                jax.ShapeDtypeStruct(shape, dtype),
            )

    def _validate_options(self, group: Mapping[str, Any]) -> None:
        options = Options({name: group[name] for name in self.defaults})
        check_scalar_lr(options.get("lr"))
        # The functional validation skips callables (schedules); torch compares a
        # callable hyperparameter and raises that comparison's TypeError.
        defaults = self.algorithm.defaults
        self.algorithm.validate(
            Options(
                {
                    name: _as_compared(value)
                    if isinstance(defaults.get(name), (int, float, tuple))
                    and not isinstance(defaults.get(name), bool)
                    else value
                    for name, value in options.items()
                }
            )
        )

    # -- extension points --------------------------------------------------------

    def group_options(self, g: int) -> Options:
        """Group ``g``'s hyperparameters as the algorithm reads them (the
        constructor's keywords, with their current values in ``param_groups``)."""
        return self._groups[g].options(self.defaults)

    def closure_params(self) -> ParamsAsGiven:
        """How a closure sees the params: ``closure_params()(leaves)`` (each
        group's leaves) is shaped like :attr:`params`. Hashable and array-free, so
        it may key a compiled step shared across optimizers."""
        return ParamsAsGiven(
            tuple(group.structure for group in self._groups),
            self._given_as_groups or len(self._groups) > 1,
            self._carved,
        )

    @property
    def global_state(self) -> Any:
        """The one state of an optimizer whose step updates all params together
        (:attr:`per_leaf` False), kept on the first param as torch keeps it; None
        before its first step. Its step reads and sets it."""
        return self._global_states()[0]

    @global_state.setter
    def global_state(self, state: Any) -> None:
        self._global_states()[0] = state

    def _global_states(self) -> list:
        if self.per_leaf:
            raise TypeError(
                f"{type(self).__name__} keeps a state per parameter: see state"
            )
        return self._groups[0].states

    def to_torch_state(self, state: Any) -> dict:
        """One param's internal state (None: none yet) as torch keeps it, for
        :attr:`state` and :meth:`state_dict`: torch's names, 'step' as torch keeps
        it. Overridden for a state torch lays out otherwise (L-BFGS)."""
        return state_dict_format.torch_leaf_state(self.algorithm, state)

    def from_torch_state(
        self, pid: Any, param: jax.Array, options: Options, saved: Any
    ) -> Any:
        """The internal state of param ``param`` (id ``pid``) from its saved
        torch-format state ``saved`` (None: none saved), checked and cast as torch
        loads it, for :meth:`load_state_dict`; the inverse of
        :meth:`to_torch_state`."""
        return state_dict_format.loaded_leaf_state(
            self.algorithm, pid, param, options, saved
        )

    # -- params and grads as given -------------------------------------------------

    @property
    @_serialized
    def params(self) -> Any:
        """The current parameters, in the structure they were given.

        One pytree (or list of ``(name, array)`` pairs) when constructed from one;
        a list with one entry per group for group dicts or after
        :meth:`add_param_group`; the whole tree for groups carved from one
        (:func:`~functorch_optim.carve_groups`).
        """
        return self.closure_params()([list(group.params) for group in self._groups])

    @params.setter
    @_serialized
    def params(self, params: Any) -> None:
        """Replace the parameters, as torch's ``model.load_state_dict`` does (to
        restore a checkpoint into an optimizer built as the run built it).

        ``params`` has the structure of :attr:`params` and each array its
        parameter's shape and dtype; the state and options are kept. Everything is
        checked before anything changes.
        """
        new = []
        for g, leaves in enumerate(self._split(params, "params")):
            for i, (old, leaf) in enumerate(
                zip(self._groups[g].params, leaves, strict=True)
            ):
                where = self._where(g, i, "params")
                check_param(leaf, where)
                if is_bcoo(leaf) or (leaf.shape, leaf.dtype) != (old.shape, old.dtype):
                    raise ValueError(
                        f"{where} is {typename(leaf)} {leaf.dtype}{list(leaf.shape)}; "
                        f"the parameter is {old.dtype}{list(old.shape)}"
                    )
            new.append(own_leaves(leaves))
        for group, leaves in zip(self._groups, new, strict=True):
            group.param_group["params"] = leaves

    @property
    @_serialized
    def grads(self) -> Any:
        """The stored gradients, shaped like :attr:`params`; ``None`` = no gradient."""
        return self.closure_params()([list(group.grads) for group in self._groups])

    @grads.setter
    @_serialized
    def grads(self, grads: Any) -> None:
        self._set_grads(self._flatten_grads(grads))

    def _set_grads(self, per_group: list[list]) -> None:
        for group, grads in zip(self._groups, per_group, strict=True):
            group.grads = grads

    @_serialized
    def accumulate_grad(self, grads: Any) -> None:
        """Add ``grads`` to the stored gradients, as torch's ``backward`` accumulates
        into ``.grad``; a ``None`` stored gradient takes the new one as it is."""
        new = self._flatten_grads(grads)
        for group, add in zip(self._groups, new):
            group.grads = [
                b if a is None else a if b is None else a + b
                for a, b in zip(group.grads, add)
            ]

    @_serialized
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the stored gradients, as torch's ``zero_grad``.

        With ``set_to_none`` (the default) every gradient becomes ``None`` and the
        next step skips all parameters; otherwise existing gradients become zeros and
        their parameters are still stepped (weight decay, momentum, ... still act).
        """
        for group in self._groups:
            group.grads = [
                None if g is None or set_to_none else zeros_like(g) for g in group.grads
            ]

    def _split(self, tree: Any, what: str) -> list[list]:
        """``tree`` (shaped like :attr:`params`) as each group's leaves, in the
        optimizer's order; ValueError where its structure differs."""
        if self._carved is not None:
            sizes = [len(group.params) for group in self._groups]
            return self._carved.split(tree, what, sizes)
        return [
            group.leaves_of(group_tree, what, g)
            for g, (group, group_tree) in enumerate(
                zip(self._groups, self._per_group(tree, what), strict=True)
            )
        ]

    def _per_group(self, tree: Any, what: str) -> list:
        """``tree`` (shaped like :attr:`params`) as one entry per group."""
        if not (self._given_as_groups or len(self._groups) > 1):
            return [tree]
        if not isinstance(tree, (list, tuple)) or len(tree) != len(self._groups):
            given = (
                f"a list of {len(tree)} trees"
                if isinstance(tree, (list, tuple))
                else f"a {typename(tree)}"
            )
            # the usual cause: a model's whole grads for groups split from it
            raise ValueError(
                f"{what} is {given}, the optimizer has {len(self._groups)} groups: "
                f"{what} are shaped like opt.params, a list with one tree per group "
                "(for groups over one model tree, build the optimizer from "
                "fo.carve_groups)"
            )
        return list(tree)

    def _where(self, g: int, i: int, what: str) -> str:
        """Param ``i`` of group ``g`` in a tree shaped like :attr:`params`."""
        if self._carved is not None:
            return what + self._carved.describe(g, i)
        prefix = f"{what}[{g}]" if len(self._groups) > 1 else what
        return prefix + self._groups[g].structure.describe(i)

    def _flatten_grads(self, grads: Any) -> list[list]:
        if grads is None:
            return [[None] * len(group.params) for group in self._groups]
        return [
            self._checked_grads(g, leaves)
            for g, leaves in enumerate(self._split(grads, "grads"))
        ]

    def _checked_grads(self, g: int, leaves: list) -> list:
        """Group ``g``'s grads ``leaves``, checked (and cast) as torch assigns
        ``.grad``."""
        params = self._groups[g].params
        return [
            grad
            if grad is None or matches(grad, p)  # the common case, checked fast
            else checked_grad(
                p,
                grad,
                f"the grad of parameter {i} of group {g}",
                self._where(g, i, "grads"),
            )
            for i, (p, grad) in enumerate(zip(params, leaves))
        ]

    # -- step --------------------------------------------------------------------

    def step(self, grads_or_closure: Any = None, *, closure=None, grads=None):
        """One optimization step for every parameter that has a gradient.

        Args:
          grads_or_closure: new gradients shaped like :attr:`params` (stored, as
            torch keeps ``.grad``; a ``None`` leaf skips its parameter: no state is
            created or advanced), or a closure ``closure(params) -> loss`` that the
            facade differentiates with ``jax.value_and_grad`` (its gradients replace
            the stored ones). Without an argument the stored gradients are used.
          closure, grads: the same by keyword.

        Returns:
          The closure's loss, else None.
        """
        loss = self._take_grads(grads_or_closure, closure, grads)
        self._apply_grads()
        return loss

    def _take_grads(self, grads_or_closure: Any, closure: Any, grads: Any) -> Any:
        """Store the gradients :meth:`step` was given (or computes); the loss."""
        given = [x for x in (grads_or_closure, closure, grads) if x is not None]
        if len(given) > 1:
            raise TypeError("step takes one of grads or closure")
        loss = None
        if given and callable(given[0]):
            loss, computed = self._value_and_grad(given[0])
            check_not_traced(loss, "the closure's loss")
            self._set_grads(
                [
                    [
                        checked_grad(p, grad, where=f"the closure's gradient {i}")
                        for i, (p, grad) in enumerate(zip(group.params, gs))
                    ]
                    for group, gs in zip(self._groups, computed)
                ]
            )
        elif given:
            self.grads = given[0]
        return loss

    def _value_and_grad(self, closure: Callable) -> tuple[Any, list[list]]:
        """Loss and torch-convention gradients of ``closure(params)``.

        JAX's gradient of a real function of a complex input is the conjugate of
        torch's, so complex leaves are conjugated.
        """
        as_given = self.closure_params()
        leaves = [list(group.params) for group in self._groups]
        loss, grads = jax.value_and_grad(lambda ls: closure(as_given(ls)))(leaves)
        grads = jax.tree.map(lambda g: jnp.conj(g) if jnp.iscomplexobj(g) else g, grads)
        return loss, grads

    @property
    def skip_nonfinite(self) -> bool:
        """Opt-in: skip a step whose stored gradients hold an inf or a NaN.

        Off by default (non-finite gradients then propagate exactly as in torch).
        Set ``opt.skip_nonfinite = True`` for the behaviour of
        ``torch.amp.GradScaler.step``: such a step leaves the parameters and the
        state (step counts included) unchanged and adds one to
        ``opt.skipped_steps``. The step hooks still run; the check costs one small
        compiled reduction and a host synchronization per step, as GradScaler's.
        Not available for optimizers that override ``step`` (LBFGS), where torch's
        GradScaler does not apply either.
        """
        return self._skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value: bool) -> None:
        if value and type(self).step is not Optimizer.step:
            raise NotImplementedError(
                f"{type(self).__name__} overrides step(); skip_nonfinite applies to "
                "the optimizers that step on stored gradients"
            )
        self._skip_nonfinite = bool(value)

    def _check_options_not_traced(self) -> None:
        # a hyperparameter set by hand under a jit (params are checked where they
        # are given, grads as they are stored)
        for g, group in enumerate(self.param_groups):
            for name in self.defaults:
                for leaf in jax.tree.leaves(group[name]):
                    check_not_traced(leaf, f"param_groups[{g}][{name!r}]")

    def _apply_grads(self) -> None:
        """Step the stored gradients' params through the one compiled step."""
        self._check_options_not_traced()
        if self._skip_nonfinite and not bool(
            _all_finite([group.grads for group in self._groups])
        ):
            self.skipped_steps += 1
            return
        compiled_step.step(
            self.algorithm, self._groups, list(self.defaults), self._static_zero
        )

    @_serialized
    def lowered_step(self, grads: Any = None) -> jax.stages.Lowered:
        """The compiled program ``step(grads)`` would run now, lowered, for its
        cost and memory analysis (``opt.lowered_step(grads).compile()
        .memory_analysis()``).

        Stores ``grads`` (shaped like :attr:`params`; None: the stored ones) and
        prepares the state as ``step`` does (creating it at a first step), but
        steps nothing: params and step counts are unchanged.
        """
        if grads is not None:
            self.grads = grads
        self._check_options_not_traced()
        return compiled_step.lowered(
            self.algorithm, self._groups, list(self.defaults), self._static_zero
        )

    # -- state -----------------------------------------------------------------------

    @property
    @_serialized
    def state(self) -> dict:
        """Per-parameter state under torch's names, for the params torch has state
        for, keyed by the parameter's index (or the parameter array itself).

        A snapshot: its arrays are copies, which later steps leave valid (the next
        step donates the optimizer's own buffers) and do not update.
        """
        return state_dict_format.state(self._groups, self.to_torch_state)

    @_serialized
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in torch's format.

        ``{'state': {index: {name: array}}, 'param_groups': [{<options>,
        'param_names': [...] (when named), 'params': [indices]}]}``. The arrays are
        copies: later steps donate the optimizer's own buffers.
        """
        return self._state_dict_hooked(
            lambda: state_dict_format.state_dict(self._groups, self.to_torch_state)
        )

    @_serialized
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict of :meth:`state_dict`'s format.

        Accepts this optimizer's own state dicts, a ``torch.optim`` state dict of the
        same algorithm (torch tensors), or either with NumPy arrays. Group count and
        sizes are checked with torch's messages; options are validated; every state
        entry is checked (names, shape, dtype) and cast like torch (floating state to
        the parameter's dtype, ``step`` to a count). Everything is checked before
        anything changes: on an error the optimizer is left exactly as it was.
        """
        check_is_dict(state_dict)
        self._load_state_dict_hooked(
            state_dict,
            lambda loaded: state_dict_format.load_state_dict(
                self._groups,
                loaded,
                algorithm=self.algorithm,
                defaults=self.defaults,
                validate=self._validate_options,
                from_torch=self.from_torch_state,
                kind=type(self).__name__,
            ),
        )

    @_serialized
    def debug_layout(self) -> list[list[tuple[int, ...]]]:
        """For tests and debugging: how the state is laid out now. Per group, one
        tuple per pack (:mod:`functorch_optim.packing`) holding the positions in
        the group of the params whose state it keeps flat; a param in no pack
        keeps its state on its own. ``[[]]``: nothing packed."""
        return [[pack.indices for pack in group.packs] for group in self._groups]

    def __repr__(self) -> str:
        text = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            text += f"\nParameter Group {i}\n"
            for key in sorted(group):
                if key != "params":
                    text += f"    {key}: {group[key]}\n"
        return text + ")"


# step hooks wrap step, as torch patches it, and the lock wraps both
Optimizer.step = _serialized(with_step_hooks(Optimizer.step))  # type: ignore[method-assign]


def _as_compared(value: Any) -> Any:
    """``value`` with each callable replaced by a stand-in of the same type name
    that supports no comparison, so validation's ``0.0 <= lr`` raises the
    ``TypeError`` torch raises (``'<=' not supported between instances of 'float'
    and 'function'``)."""
    if isinstance(value, (tuple, list)):
        return type(value)(_as_compared(v) for v in value)
    if callable(value) and not hasattr(value, "shape"):
        return type(type(value).__name__, (), {})()
    return value

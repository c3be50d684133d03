"""The torch-style facade: ``fo.Adam(params, lr=...)`` with torch.optim's interface.

:class:`Optimizer` keeps parameters, state and hyperparameters the way
``torch.optim.Optimizer`` does (``param_groups``, ``state``, ``state_dict``, hooks,
``zero_grad``) and holds no math: every ``step`` runs the algorithms' per-leaf rules
(:mod:`functorch_optim.algorithms`) through :func:`functorch_optim.fused.step_leaves`
in ONE jitted XLA computation for all groups, with the state donated so XLA
updates it in place. For elementwise algorithms the state of small
leaves is kept packed in flat buffers between steps (:mod:`functorch_optim.packing`),
with a flat copy of their params, so thousands of leaves cost a few kernels and one
slice each; ``state``, ``state_dict`` and ``load_state_dict`` see it per leaf, as
torch keeps it.

What decides the compiled program (and so triggers a compile when it changes): the
tree of arrays passed (which leaves have a gradient, their shapes and dtypes, which
state entries exist) and each group's *static* options: flags, integers, strings,
``None``, and zeros of the options that are 0 by default (weight decay, momentum:
torch branches on ``x != 0`` there). Every other float hyperparameter is passed as a
weakly typed traced scalar, so editing ``param_groups[i]['lr']`` (or betas, momentum,
a nonzero weight decay) between steps reuses the compiled step; :func:`compile_count`
shows it.

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
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import sys
import warnings
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from . import interop, packing
from .algorithms import (
    adadelta,
    adafactor,
    adagrad,
    adam,
    adamax,
    asgd,
    muon,
    nadam,
    radam,
    rmsprop,
    rprop,
    sgd,
    sparse_adam,
)
from .algorithms.base import Algorithm, Options, check_scalar_lr
from .checks import check_param_dtypes, is_optimizable
from .core import is_bcoo
from .fused import STEP, init_leaf, step_leaf, step_leaves
from .nonfinite import all_finite
from .sharding import constrain, place_like, static_sharding

# --- hooks ----------------------------------------------------------------------


class RemovableHandle:
    """Removes a registered hook: ``handle.remove()`` (or leave its ``with`` block).

    The same contract as ``torch.utils.hooks.RemovableHandle``, without torch.
    """

    _next_id: ClassVar[int] = 0

    def __init__(self, hooks: OrderedDict) -> None:
        self._hooks = weakref.ref(hooks)
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self) -> None:
        hooks = self._hooks()
        if hooks is not None:
            hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


def _register(hooks: OrderedDict, hook: Callable, prepend: bool = False):
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    if prepend:
        hooks.move_to_end(handle.id, last=False)
    return handle


_global_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
_global_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()


def register_optimizer_step_pre_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(optimizer, args, kwargs) -> None | (args, kwargs)`` for every
    optimizer's ``step``; it runs before the optimizers' own pre hooks, as in torch."""
    return _register(_global_step_pre_hooks, hook)


def register_optimizer_step_post_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(optimizer, args, kwargs) -> None`` after every optimizer's
    ``step``; it runs after the optimizers' own post hooks, as in torch."""
    return _register(_global_step_post_hooks, hook)


def _with_step_hooks(step: Callable) -> Callable:
    """Wrap a ``step`` method with the global and per-optimizer step hooks.

    As torch's ``profile_hook_step``: pre hooks see ``args`` including the optimizer
    itself and may return ``(new_args, new_kwargs)``. A ``step`` called from inside
    another hooked ``step`` (a subclass calling ``super().step``) runs no hooks.
    """

    @functools.wraps(step)
    def hooked_step(*args, **kwargs):
        self = args[0]
        if self._in_step:
            return step(*args, **kwargs)
        pre_hooks = (
            *_global_step_pre_hooks.values(),
            *self._optimizer_step_pre_hooks.values(),
        )
        for pre_hook in pre_hooks:
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(
                        f"{step} must return None or a tuple of (new_args, "
                        f"new_kwargs), but got {result}."
                    )
        self._in_step = True
        try:
            out = step(*args, **kwargs)
        finally:
            self._in_step = False
        post_hooks = (
            *self._optimizer_step_post_hooks.values(),
            *_global_step_post_hooks.values(),
        )
        for post_hook in post_hooks:
            post_hook(self, args, kwargs)
        return out

    hooked_step.hooked = True  # type: ignore[attr-defined]  # a function attribute
    return hooked_step


# --- the one jitted step ----------------------------------------------------------

_compiles = 0


def compile_count() -> int:
    """How many times the facade's fused step has been traced (= compiled)."""
    return _compiles


class _Traced:
    """Marks an option passed as a traced scalar in a compiled step's static key."""

    def __repr__(self) -> str:
        return "<traced>"


_TRACED = _Traced()


def _split_option(value: Any, traced: list, static_zero: bool = False) -> Any:
    """The static part of an option; its traced scalars are appended to ``traced``.

    Python floats (and arrays) travel as traced scalars: a Python float passed to
    jit is weakly typed, so it does not promote float32/bfloat16 params. With
    ``static_zero`` a float equal to 0 stays static, so the rules' ``nonzero``
    skips the term (and the state) as torch's ``if x != 0`` does. Integers, flags,
    strings and None are static.
    """
    if value is None or isinstance(value, (bool, np.bool_, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if static_zero and value == 0:
            return float(value)
        traced.append(float(value))
        return _TRACED
    if isinstance(value, (tuple, list)):
        return tuple(_split_option(v, traced) for v in value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        array = jnp.asarray(value)
        traced.append(array.reshape(()) if array.size == 1 else array)
        return _TRACED
    return value  # schedules and other hashable values: part of the key


def _join_option(static: Any, traced: Iterator) -> Any:
    if static is _TRACED:
        return next(traced)
    if isinstance(static, tuple):
        return tuple(_join_option(v, traced) for v in static)
    return static


def _step_groups(spec, params, grads, states, packs, pack_inputs, traced):
    """All groups' steps in one program.

    ``spec`` = ((algorithm, static options, the shardings of the leaves stepped
    alone, the shapes of each pack's leaves),): every result stays on its
    parameter's shards. Per group, ``packs`` holds the (flat params, state) of each
    :class:`~functorch_optim.packing.Pack`, ``pack_inputs`` its (grads, offsets).
    """
    global _compiles
    _compiles += 1
    new_params, new_states, new_packs = [], [], []
    for group_spec, p, g, s, group_packs, inputs, t in zip(
        spec, params, grads, states, packs, pack_inputs, traced, strict=True
    ):
        algorithm, static, shardings, pack_shapes = group_spec
        values = iter(t)
        options = Options({k: _join_option(v, values) for k, v in static})
        group_new_packs = []
        for shapes, (flat_params, pack_state), (pack_grads, offsets) in zip(
            pack_shapes, group_packs, inputs, strict=True
        ):
            flat_params, pack_state = packing.step_pack(
                functools.partial(step_leaf, algorithm),
                flat_params,
                pack_grads,
                pack_state,
                options,
            )
            leaves = packing.split(flat_params, shapes, offsets)
            group_new_packs.append((flat_params, leaves, pack_state))
        new_packs.append(group_new_packs)
        group_params, group_states = step_leaves(algorithm, p, g, s, options)
        group_params = [
            constrain(new, sharding, old.shape)
            for new, old, sharding in zip(group_params, p, shardings, strict=True)
        ]
        group_states = [
            constrain(state, sharding, old.shape)
            for state, old, sharding in zip(group_states, p, shardings, strict=True)
        ]
        new_params.append(group_params)
        new_states.append(group_states)
    return new_params, new_states, new_packs


def _pack_operands(pack: packing.Pack, leaves: list) -> tuple:
    """A pack's (flat params, state) for :func:`_step_groups`."""
    return pack.flat_params([leaves[i] for i in pack.indices]), pack.state


# Donated: the per-leaf states (3) and the packs' flat params and states (4), which
# only the optimizer holds (``state`` and ``state_dict`` hand out copies). Never the
# params (1) or the grads (2): a user may hold them (``opt.params``, ``opt.grads``,
# the constructor's arrays), and they must stay valid.
_fused_step = jax.jit(_step_groups, static_argnums=0, donate_argnums=(3, 4))
_all_finite = jax.jit(all_finite)


# --- params as given --------------------------------------------------------------


def _children(node: Any) -> list:
    """One level of a pytree: ``[((key entry,), child), ...]`` in JAX's order;
    ``[((), node)]`` for a leaf, ``[]`` for ``None`` or an empty container."""
    return jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[
        0
    ]


def _walk(node: Any, path: tuple, paths: list) -> Any:
    """Append each leaf's key path to ``paths``, dicts in insertion order (torch's
    ``model.parameters()`` order), other nodes in JAX's order. Returns how to put
    the dicts of a JAX-unflattened copy back in insertion order (see
    :func:`_rebuilt`): None where JAX's order is already theirs."""
    items = _children(node)
    if is_bcoo(node) or (len(items) == 1 and items[0][0] == ()):
        paths.append(path)
        return None
    is_dict = isinstance(node, dict)
    if is_dict:
        position = {key: i for i, key in enumerate(node)}
        ordered = sorted(items, key=lambda item: position[item[0][0].key])
    else:
        ordered = items
    subs = {}
    for i, ((key,), child) in enumerate(ordered):
        sub = _walk(child, (*path, key), paths)
        if sub is not None:
            subs[key.key if is_dict else i] = sub
    reordered = is_dict and ordered != items
    if not subs and not reordered:
        return None
    return is_dict, [key.key for (key,), _ in ordered] if is_dict else None, subs


def _rebuilt(node: Any, spec: Any) -> Any:
    """``node`` (unflattened by JAX: every dict in sorted key order) with its dicts
    in the insertion order ``spec`` (from :func:`_walk`) records."""
    if spec is None:
        return node
    is_dict, keys, subs = spec
    if is_dict:
        out = copy.copy(node)  # keeps a defaultdict's factory
        out.clear()
        out.update((key, _rebuilt(node[key], subs.get(key))) for key in keys)
        return out
    children, treedef = jax.tree.flatten(node, is_leaf=lambda x: x is not node)
    return jax.tree.unflatten(
        treedef, [_rebuilt(child, subs.get(i)) for i, child in enumerate(children)]
    )


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


@dataclasses.dataclass(frozen=True)
class _Structure:
    """How one group's params were given: their tree, order and names.

    The optimizer's order of the params (their ids in ``state_dict``) is torch's
    ``model.parameters()`` order: dicts in insertion order, other nodes in JAX's.
    JAX flattens dicts in sorted key order, so ``order`` maps between the two.

    Attributes:
      treedef: JAX's treedef of the params.
      order: each param's position in JAX's leaf order, in the optimizer's order;
        None when the two agree.
      paths: each param's key path, in the optimizer's order (for messages).
      names: torch's ``param_names``: the names of ``(name, array)`` pairs, or the
        key paths joined by ``.`` (``fc.weight``, a list index ``0``) when the tree
        has dict keys or attributes; None for a list or a single array, as torch
        has no names for ``model.parameters()``.
      pairs: given as ``(name, array)`` pairs (``params`` returns pairs).
      dicts: how to put unflattened dicts back in insertion order (:func:`_walk`).
    """

    treedef: Any
    order: tuple[int, ...] | None
    paths: tuple[tuple, ...]
    names: list[str] | None
    pairs: bool
    dicts: Any

    @classmethod
    def of(cls, tree: Any, pair_names: list[str] | None) -> tuple[_Structure, list]:
        """The structure of ``tree`` and its leaves in the optimizer's order."""
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_bcoo)
        paths: list[tuple] = []
        dicts = _walk(tree, (), paths)
        position = {path: i for i, (path, _) in enumerate(flat)}
        order = tuple(position[path] for path in paths)
        leaves = [flat[i][1] for i in order]
        names = pair_names
        if names is None and any(
            isinstance(key, (jax.tree_util.DictKey, jax.tree_util.GetAttrKey))
            for path in paths
            for key in path
        ):
            names = [".".join(map(_key_name, path)) for path in paths]
        identity = order == tuple(range(len(order)))
        structure = cls(
            treedef,
            None if identity else order,
            tuple(paths),
            names,
            pair_names is not None,
            dicts,
        )
        return structure, leaves

    def flatten(self, tree: Any) -> list:
        """The leaves of ``tree`` (the params' structure, down to the params'
        leaves) in the optimizer's order; ValueError if the structure differs."""
        leaves = self.treedef.flatten_up_to(tree)
        return leaves if self.order is None else [leaves[i] for i in self.order]

    def unflatten(self, leaves: list) -> Any:
        """The params' tree (or pairs) holding ``leaves`` (in the optimizer's order),
        its dicts in the order they were given."""
        if self.order is not None:
            by_position = [None] * len(leaves)
            for leaf, i in zip(leaves, self.order, strict=True):
                by_position[i] = leaf
            leaves = by_position
        tree = _rebuilt(jax.tree.unflatten(self.treedef, leaves), self.dicts)
        if self.pairs and self.names is not None:
            return list(zip(self.names, tree, strict=True))
        return tree

    def describe(self, i: int) -> str:
        """Param ``i``'s place, as indexing reads it (``['fc']['w']``; a pair's
        ``['name']``)."""
        if self.pairs and self.names is not None:
            return f"[{self.names[i]!r}]"
        return jax.tree_util.keystr(self.paths[i])


def _matches(grad: Any, param: jax.Array) -> bool:
    """``grad`` is an array of ``param``'s type, shape and dtype."""
    return (
        type(grad) is type(param)
        and grad.shape == param.shape
        and grad.dtype == param.dtype
    )


def _typename(x: Any) -> str:
    cls = type(x)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray)) or _is_torch_tensor(x)


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _check_not_traced(x: Any, where: str) -> None:
    """A traced value means the facade runs inside ``jax.jit``, ``vmap`` or
    ``grad``: its Python-held state would keep the tracers and be lost."""
    if isinstance(x, jax.core.Tracer):
        raise RuntimeError(
            f"{where} is a traced value: the torch-style optimizer was called inside "
            "jax.jit, jax.vmap or jax.grad. It keeps its params and state in Python "
            "and steps outside JAX's transformations (nothing was changed); inside "
            "them use the functional form (fo.adam, ...), whose state is a value."
        )


def _check_param(p: Any, where: str) -> None:
    """A parameter must be a JAX (or NumPy) array; a torch tensor would be copied,
    and training the copy would leave the torch model unchanged."""
    _check_not_traced(p, where)
    if _is_torch_tensor(p):
        raise TypeError(
            f"{where} is a torch tensor ({_typename(p)}): the optimizer steps JAX "
            "arrays, and would train copies while the torch model stays unchanged. "
            "Convert the params once with fo.interop.to_jax (e.g. params = "
            "fo.interop.to_jax(dict(model.named_parameters()))), train those, and "
            "read the results from opt.params (fo.interop.to_torch converts back)."
        )
    if not (isinstance(p, (jax.Array, np.ndarray)) or is_bcoo(p)):
        raise TypeError(
            "optimizer can only optimize Tensors, but one of the params is "
            + _typename(p)
        )


def _is_named(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)


def _is_group_list(params: Any) -> bool:
    return (
        isinstance(params, (list, tuple))
        and len(params) > 0
        and isinstance(params[0], dict)
        and "params" in params[0]
    )


class _StateView(dict):
    """``opt.state``: index -> torch's state dict; an array key is found by identity."""

    def __init__(self, items, leaves: list) -> None:
        super().__init__(items)
        self._index = {id(leaf): i for i, leaf in enumerate(leaves)}

    def _key(self, key):
        return key if isinstance(key, int) else self._index.get(id(key), -1)

    def __getitem__(self, key):
        return super().__getitem__(self._key(key))

    def __contains__(self, key):
        return super().__contains__(self._key(key))

    def get(self, key, default=None):
        return super().get(self._key(key), default)


# --- the optimizer --------------------------------------------------------------


def _copy(x: Any) -> Any:
    return jnp.array(x, copy=True) if isinstance(x, jax.Array) else x


def _copied(view: dict) -> dict:
    """A leaf's torch-format state with its arrays copied (later steps donate the
    optimizer's own buffers), per entry so torch's key order is kept."""
    return {k: jax.tree.map(_copy, v) for k, v in view.items()}


class Optimizer:
    """Base of the torch-style optimizers (``torch.optim.Optimizer`` for JAX arrays).

    A subclass names its :class:`~functorch_optim.algorithms.base.Algorithm` in the
    class attribute ``algorithm``; :func:`optimizer_class` makes one per algorithm.
    ``step`` may be overridden (L-BFGS); the step hooks wrap every subclass's
    ``step`` automatically, as torch patches them.

    Args:
      params: a pytree of arrays (dict/list/tuple/registered dataclass), a list of
        ``(name, array)`` pairs, or a list of group dicts ``{'params': <pytree or
        pairs>, <option>: value, ...}``.
      defaults: the validated constructor options, filled into every group.
    """

    algorithm: ClassVar[Algorithm]
    # torch's Adagrad creates its state in the constructor, not at the first step.
    state_at_construction: ClassVar[bool] = False
    # torch keeps 'step' as a float32 tensor, except SparseAdam (a Python int).
    step_is_tensor: ClassVar[bool] = True
    # check_params(list of each group's param leaves): the algorithm's constructor
    # checks on the params themselves (SparseAdam: dense, real params only).
    check_params: ClassVar[Callable[[list], None] | None] = None
    # Steps skipped for non-finite gradients (see skip_nonfinite); not part of
    # torch's state_dict, as torch's GradScaler keeps its own count apart.
    skipped_steps: int = 0
    _skip_nonfinite: bool = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "hooked", False):
            # step hooks wrap step, as torch patches it
            cls.step = _with_step_hooks(step)  # type: ignore[method-assign]

    def __init__(self, params: Any, defaults: Mapping[str, Any]) -> None:
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
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._in_step = False
        if _is_torch_tensor(params):
            _check_param(params, "params")
        if _is_array(params):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of "
                "Tensors or dicts, but got " + _typename(params)
            )
        self.param_groups: list[dict[str, Any]] = []
        # Per group, parallel to param_groups: how its params were given,
        # each leaf's state (None until torch would create it; a Pack while packed,
        # see `_states`), stored grads, and the static options its states were last
        # completed for.
        self._structures: list[_Structure] = []
        self._leaf_states: list[list[Any]] = []
        self._packs: list[list[packing.Pack]] = []
        # leaves looked at for packing and left alone, until the packs change
        self._unpackable: list[set[int]] = []
        # the last step's arrangement: (static options, stepped leaves, those alone)
        self._arranged: list[tuple | None] = []
        self._grads: list[list[Any]] = []
        self._static_seen: list[Any] = []
        if isinstance(params, Iterator):
            params = list(params)
        self._given_as_groups = _is_group_list(params)
        if self._given_as_groups:
            for group in params:
                self.add_param_group(group)
        else:
            if not jax.tree.leaves(params):
                raise ValueError("optimizer got an empty parameter list")
            self.add_param_group({"params": params})
        # a staticmethod: read from the class, where it is a plain function
        check_params = type(self).check_params
        if check_params is not None:
            check_params([group["params"] for group in self.param_groups])
        if self.state_at_construction:
            for g, group in enumerate(self.param_groups):
                options = self._group_options(group)
                self._states[g] = [self._new_state(p, options) for p in group["params"]]

    # -- groups ------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, filling missing options from ``defaults`` (torch's checks)."""
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
        if isinstance(given, (list, tuple)) and any(_is_named(p) for p in given):
            if not all(_is_named(p) for p in given):
                raise ValueError(
                    "all optimizer params should be with/without names. Some param "
                    "names are missing"
                )
            pair_names = [name for name, _ in given]
            given = [p for _, p in given]
            for name, p in zip(pair_names, given):
                _check_param(p, f"the param {name!r}")
        structure, originals = _Structure.of(given, pair_names)
        what = (
            f"param_groups[{len(self.param_groups)}]['params']"
            if self._given_as_groups or self.param_groups
            else "params"
        )
        for i, p in enumerate(originals):
            _check_param(p, what + structure.describe(i))
        sparse = next((p for p in originals if is_bcoo(p)), None)
        if sparse is not None:
            check_params = type(self).check_params
            if check_params is not None:  # torch's constructor message (SparseAdam)
                check_params([[] for _ in self.param_groups] + [originals])
            raise TypeError(
                "optimizer can only optimize dense arrays, but one of the params is "
                + _typename(sparse)
            )
        for i, p in enumerate(originals):
            check_param_dtypes(p, what + structure.describe(i))
        group = dict(param_group)
        group["params"] = self._own_leaves(originals)
        if structure.names is not None:
            group["param_names"] = structure.names
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._validate_options(group)
        self._check_initializable(group)

        # torch's rule for names given as (name, array) pairs; a dict's key paths
        # name its params without constraining how other groups are given.
        for other, other_structure in zip(self.param_groups, self._structures):
            if ("param_names" in group) != ("param_names" in other) and (
                structure.pairs or other_structure.pairs
            ):
                current = "with names" if "param_names" in group else "without names"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {current} to the optimizer"
                )
        taken = {id(p) for other in self.param_groups for p in other["params"]}
        if any(id(p) in taken for p in originals):
            raise ValueError("some parameters appear in more than one parameter group")

        self.param_groups.append(group)
        self._structures.append(structure)
        self._leaf_states.append([None] * len(originals))
        self._packs.append([])
        self._unpackable.append(set())
        self._arranged.append(None)
        self._grads.append([None] * len(originals))
        self._static_seen.append(None)

    # -- state, per leaf or packed ------------------------------------------------

    @property
    def _states(self) -> list[list[dict | None]]:
        """Each group's per-leaf states (None: no state yet), unpacking any packs,
        for code that changes them per leaf.

        Steps keep the state of many small leaves packed (:mod:`.packing`);
        ``state`` and ``state_dict`` read it per leaf through
        :meth:`_state_snapshot`, leaving the packs in place.
        """
        for g in range(len(self._packs)):
            self._unpack(g)
        return self._leaf_states

    @_states.setter
    def _states(self, states: list[list[dict | None]]) -> None:
        self._leaf_states = states
        self._packs = [[] for _ in states]
        self._unpackable = [set() for _ in states]
        self._arranged = [None for _ in states]

    def _state_snapshot(self) -> list[list[dict | None]]:
        """Each group's per-leaf states to read: packed ones are sliced out of their
        packs (copies), which stay packed for the next step."""
        snapshot = []
        for states, packs in zip(self._leaf_states, self._packs, strict=True):
            states = list(states)
            for pack in packs:
                for i, state in zip(pack.indices, packing.unpack(pack), strict=True):
                    states[i] = state
            snapshot.append(states)
        return snapshot

    def _unpack(self, g: int, packs: list | None = None) -> None:
        """Per-leaf states again for ``packs`` of group ``g`` (default: all)."""
        packs = list(self._packs[g]) if packs is None else packs
        for pack in packs:
            for i, state in zip(pack.indices, packing.unpack(pack), strict=True):
                self._leaf_states[g][i] = state
            self._packs[g].remove(pack)
        if packs:
            self._unpackable[g].clear()
            self._arranged[g] = None

    def _arrange(self, g: int, stepped: list, options: Options, static) -> list:
        """Prepare group ``g``'s states for a step of the ``stepped`` leaves; returns
        the leaves stepped alone (the others are in ``self._packs[g]``)."""
        grads = self._grads[g]
        arranged = self._arranged[g]
        if (
            arranged is not None
            and arranged[0] == static
            and arranged[1] == tuple(stepped)
            and all(isinstance(grads[i], jax.Array) for i in stepped)
        ):
            return arranged[2]  # as the last step: nothing to create or repack
        alone = self._arranged_anew(g, stepped, options, static)
        self._arranged[g] = (static, tuple(stepped), alone)
        return alone

    def _arranged_anew(self, g: int, stepped: list, options: Options, static) -> list:
        if self._static_seen[g] != static:
            self._unpack(g)  # entries may be added: complete them per leaf
        grads = self._grads[g]
        stepped_set = set(stepped)
        self._unpack(
            g,
            [
                pack
                for pack in self._packs[g]
                if not stepped_set.issuperset(pack.indices)
                or not all(isinstance(grads[i], jax.Array) for i in pack.indices)
            ],
        )
        if self.algorithm.elementwise:
            # new states: created packed; then existing per-leaf ones
            self._pack_leaves(g, stepped, options, fresh=True)
            self._prepare_states(g, self._alone(g, stepped), options, static)
            self._pack_leaves(g, stepped, options, fresh=False)
        else:
            self._prepare_states(g, stepped, options, static)
        return self._alone(g, stepped)

    def _alone(self, g: int, indices: list) -> list:
        states = self._leaf_states[g]
        return [i for i in indices if not isinstance(states[i], packing.Pack)]

    def _pack_leaves(self, g: int, stepped: list, options: Options, fresh: bool):
        """Pack the stepped leaves of group ``g`` that are alone and have (or, with
        ``fresh``, have not yet) a state, where :func:`packing.plan` finds packs."""
        leaves, grads = self.param_groups[g]["params"], self._grads[g]
        states, unpackable = self._leaf_states[g], self._unpackable[g]
        candidates = [
            i
            for i in self._alone(g, stepped)
            if (states[i] is None) == fresh and i not in unpackable
        ]
        if len(candidates) < packing.MIN_PACKED_LEAVES:
            return
        init = functools.partial(self._new_state, options=options)
        if fresh:
            known = packing.state_templates(init, [leaves[i] for i in candidates])
        else:
            known = [states[i] for i in candidates]
        for positions in packing.plan(
            [leaves[i] for i in candidates], [grads[i] for i in candidates], known
        ):
            indices = [candidates[k] for k in positions]
            params = [leaves[i] for i in indices]
            pack = (
                packing.pack_fresh(indices, params, init)
                if fresh
                else packing.pack(indices, params, [states[i] for i in indices])
            )
            self._packs[g].append(pack)
            for i in indices:
                states[i] = pack
        if not fresh:
            unpackable.update(self._alone(g, candidates))

    @staticmethod
    def _own_leaves(originals: list) -> list:
        """JAX arrays for the given leaves; a repeated array is copied, so that each
        parameter is an array of its own (``opt.state[param]`` finds it by
        identity), as torch keeps each listed tensor apart."""
        seen: set[int] = set()
        leaves = []
        for p in originals:
            if id(p) in seen:
                warnings.warn(
                    "optimizer contains a parameter group with duplicate parameters; "
                    "in future, this will cause an error; see "
                    "github.com/pytorch/pytorch/issues/40967 for more information",
                    stacklevel=4,
                )
                leaves.append(jnp.array(p, copy=True))
            else:
                leaves.append(interop.to_jax(p))
            seen.add(id(p))
        return leaves

    def _check_initializable(self, group: Mapping[str, Any]) -> None:
        """Raise now the error the algorithm's state initialization would raise for
        a param (torch's Muon rejects non-2-D params in its constructor), tracing
        it abstractly once per shape and dtype."""
        options = self._group_options(group)
        for shape, dtype in {(p.shape, p.dtype) for p in group["params"]}:
            jax.eval_shape(
                lambda p: init_leaf(self.algorithm, p, options),
                jax.ShapeDtypeStruct(shape, dtype),
            )

    def _group_options(self, group: Mapping[str, Any]) -> Options:
        return Options({name: group[name] for name in self.defaults})

    def _validate_options(self, group: Mapping[str, Any]) -> None:
        options = self._group_options(group)
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

    # -- params and grads as given -------------------------------------------------

    def _assemble(self, g: int, leaves: list) -> Any:
        return self._structures[g].unflatten(leaves)

    def _as_given(self, per_group: list) -> Any:
        if self._given_as_groups or len(self.param_groups) > 1:
            return per_group
        return per_group[0]

    @property
    def params(self) -> Any:
        """The current parameters, in the structure they were given.

        One pytree (or list of ``(name, array)`` pairs) when constructed from one;
        a list with one entry per group for group dicts or after
        :meth:`add_param_group`.
        """
        return self._as_given(
            [
                self._assemble(g, list(group["params"]))
                for g, group in enumerate(self.param_groups)
            ]
        )

    @params.setter
    def params(self, params: Any) -> None:
        """Replace the parameters, as torch's ``model.load_state_dict`` does (to
        restore a checkpoint into an optimizer built as the run built it).

        ``params`` has the structure of :attr:`params` and each array its
        parameter's shape and dtype; the state and options are kept. Everything is
        checked before anything changes.
        """
        new = []
        for g, tree in enumerate(self._per_group(params, "params")):
            leaves = self._group_leaves(g, tree, "params")
            for i, (old, leaf) in enumerate(
                zip(self.param_groups[g]["params"], leaves, strict=True)
            ):
                where = self._where(g, i, "params")
                _check_param(leaf, where)
                if is_bcoo(leaf) or (leaf.shape, leaf.dtype) != (old.shape, old.dtype):
                    raise ValueError(
                        f"{where} is {_typename(leaf)} {leaf.dtype}{list(leaf.shape)}; "
                        f"the parameter is {old.dtype}{list(old.shape)}"
                    )
            new.append(self._own_leaves(leaves))
        for group, leaves in zip(self.param_groups, new, strict=True):
            group["params"] = leaves

    @property
    def grads(self) -> Any:
        """The stored gradients, shaped like :attr:`params`; ``None`` = no gradient."""
        return self._as_given(
            [self._assemble(g, list(grads)) for g, grads in enumerate(self._grads)]
        )

    @grads.setter
    def grads(self, grads: Any) -> None:
        self._grads = self._flatten_grads(grads)

    def accumulate_grad(self, grads: Any) -> None:
        """Add ``grads`` to the stored gradients, as torch's ``backward`` accumulates
        into ``.grad``; a ``None`` stored gradient takes the new one as it is."""
        new = self._flatten_grads(grads)
        self._grads = [
            [b if a is None else a if b is None else a + b for a, b in zip(old, add)]
            for old, add in zip(self._grads, new)
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the stored gradients, as torch's ``zero_grad``.

        With ``set_to_none`` (the default) every gradient becomes ``None`` and the
        next step skips all parameters; otherwise existing gradients become zeros and
        their parameters are still stepped (weight decay, momentum, ... still act).
        """
        self._grads = [
            [None if g is None or set_to_none else _zeros_like(g) for g in grads]
            for grads in self._grads
        ]

    def _per_group(self, tree: Any, what: str) -> list:
        """``tree`` (shaped like :attr:`params`) as one entry per group."""
        per_group = (
            [tree]
            if not (self._given_as_groups or len(self.param_groups) > 1)
            else list(tree)
        )
        if len(per_group) != len(self.param_groups):
            raise ValueError(
                f"{what} has {len(per_group)} groups, the optimizer has "
                f"{len(self.param_groups)}"
            )
        return per_group

    def _group_leaves(self, g: int, tree: Any, what: str) -> list:
        """The leaves of ``tree``, shaped like group ``g``'s params, in the
        optimizer's order; ValueError where the structure (or a name) differs."""
        structure = self._structures[g]
        if (
            structure.pairs
            and isinstance(tree, (list, tuple))
            and all(_is_named(item) for item in tree)
        ):
            if [name for name, _ in tree] != structure.names:
                raise ValueError(
                    f"{what} of group {g} are named {[n for n, _ in tree]}, the "
                    f"params {structure.names}"
                )
            tree = [leaf for _, leaf in tree]
        try:
            return structure.flatten(tree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{what} of group {g} must have the structure of its params "
                f"{structure.treedef}: {e}"
            ) from e

    def _where(self, g: int, i: int, what: str) -> str:
        """Param ``i`` of group ``g`` in a tree shaped like :attr:`params`."""
        prefix = f"{what}[{g}]" if len(self.param_groups) > 1 else what
        return prefix + self._structures[g].describe(i)

    def _flatten_grads(self, grads: Any) -> list[list]:
        if grads is None:
            return [[None] * len(g["params"]) for g in self.param_groups]
        return [
            self._flatten_group_grads(g, group_grads)
            for g, group_grads in enumerate(self._per_group(grads, "grads"))
        ]

    def _flatten_group_grads(self, g: int, grads: Any) -> list:
        params = self.param_groups[g]["params"]
        if grads is None:
            return [None] * len(params)
        leaves = self._group_leaves(g, grads, "grads")
        return [
            grad
            if grad is None or _matches(grad, p)  # the common case, checked fast
            else self._checked_grad(
                p,
                grad,
                f"the grad of parameter {i} of group {g}",
                self._where(g, i, "grads"),
            )
            for i, (p, grad) in enumerate(zip(params, leaves))
        ]

    @staticmethod
    def _checked_grad(
        param: jax.Array, grad: Any, name: str = "the grad", where: str = "grads"
    ) -> Any:
        """torch's checks on assigning ``.grad`` (its messages, then the detail);
        a gradient of another floating dtype is cast to the parameter's. ``where``
        names the leaf in the grads tree given."""
        if grad is None:
            return None
        _check_not_traced(grad, where)
        if not (_is_array(grad) or is_bcoo(grad)):
            raise TypeError(
                f"{name} ({where}) is a {_typename(grad)}, not an array: grads must "
                "mirror the params, with an array (or None) for each parameter"
            )
        if not isinstance(grad, jax.Array):
            grad = interop.to_jax(grad)
        if grad.shape != param.shape:
            raise RuntimeError(
                f"assigned grad has data of a different size: {name} has shape "
                f"{grad.shape}, the parameter {param.shape}"
            )
        if grad.dtype != param.dtype:
            if not is_optimizable(grad.dtype) or (
                jnp.iscomplexobj(grad) and not jnp.iscomplexobj(param)
            ):
                raise RuntimeError(
                    f"assigned grad has data of a different type: {name} has dtype "
                    f"{grad.dtype}, the parameter {param.dtype}"
                )
            grad = grad.astype(param.dtype)
        return grad

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
        given = [x for x in (grads_or_closure, closure, grads) if x is not None]
        if len(given) > 1:
            raise TypeError("step takes one of grads or closure")
        loss = None
        if given and callable(given[0]):
            loss, computed = self._value_and_grad(given[0])
            _check_not_traced(loss, "the closure's loss")
            self._grads = [
                [
                    self._checked_grad(p, grad, where=f"the closure's gradient {i}")
                    for i, (p, grad) in enumerate(zip(group["params"], gs))
                ]
                for group, gs in zip(self.param_groups, computed)
            ]
        elif given:
            self.grads = given[0]
        self._apply_grads()
        return loss

    def _value_and_grad(self, closure: Callable) -> tuple[Any, list[list]]:
        """Loss and torch-convention gradients of ``closure(params)``.

        JAX's gradient of a real function of a complex input is the conjugate of
        torch's, so complex leaves are conjugated.
        """

        def loss_of(leaves):
            return closure(
                self._as_given([self._assemble(g, ls) for g, ls in enumerate(leaves)])
            )

        leaves = [list(group["params"]) for group in self.param_groups]
        loss, grads = jax.value_and_grad(loss_of)(leaves)
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

    def _apply_grads(self) -> None:
        """Step the stored gradients' params through the one compiled step."""
        # a hyperparameter set by hand under a jit (params are checked where they
        # are given, grads as they are stored)
        for g, group in enumerate(self.param_groups):
            for name in self.defaults:
                for leaf in jax.tree.leaves(group[name]):
                    _check_not_traced(leaf, f"param_groups[{g}][{name!r}]")
        if self._skip_nonfinite and not bool(_all_finite(self._grads)):
            self.skipped_steps += 1
            return
        algorithm = self.algorithm
        spec, params, grads, states, traced, where = [], [], [], [], [], []
        packs, pack_inputs = [], []
        for g, group in enumerate(self.param_groups):
            stepped = [i for i, grad in enumerate(self._grads[g]) if grad is not None]
            if not stepped:
                continue
            options = self._group_options(group)
            values: list = []
            static = tuple(
                (name, _split_option(value, values, name in self._static_zero))
                for name, value in options.items()
            )
            alone = self._arrange(g, stepped, options, static)
            leaves, leaf_states = group["params"], self._leaf_states[g]
            leaf_grads = self._grads[g]
            shardings = tuple(static_sharding(leaves[i]) for i in alone)
            group_packs = self._packs[g]
            spec.append(
                (algorithm, static, shardings, tuple(p.shapes for p in group_packs))
            )
            params.append([leaves[i] for i in alone])
            grads.append([leaf_grads[i] for i in alone])
            states.append([leaf_states[i] for i in alone])
            packs.append([_pack_operands(p, leaves) for p in group_packs])
            pack_inputs.append(
                [([leaf_grads[i] for i in p.indices], p.offsets) for p in group_packs]
            )
            traced.append(values)
            where.append((g, alone))
        if not spec:
            return
        new_params, new_states, new_packs = _fused_step(
            tuple(spec), params, grads, states, packs, pack_inputs, traced
        )
        for (g, alone), group_params, group_states, group_packs in zip(
            where, new_params, new_states, new_packs, strict=True
        ):
            leaves, leaf_states = self.param_groups[g]["params"], self._leaf_states[g]
            for k, i in enumerate(alone):
                leaves[i] = group_params[k]
                leaf_states[i] = group_states[k]
            for pack, (flat_params, pack_params, pack_state) in zip(
                self._packs[g], group_packs, strict=True
            ):
                pack.stepped(flat_params, pack_params, pack_state)
                for i, param in zip(pack.indices, pack_params, strict=True):
                    leaves[i] = param

    def _prepare_states(self, g: int, stepped: list, options: Options, static) -> None:
        """Create state torch would create now; complete states whose options changed.

        When a group's static options change (momentum from 0 to nonzero, amsgrad
        switched on), entries the rule now needs are created as at initialization.
        """
        leaves, states = self.param_groups[g]["params"], self._leaf_states[g]
        changed = self._static_seen[g] != static
        for i in stepped:
            if states[i] is None:
                states[i] = self._new_state(leaves[i], options)
            elif changed and any(v is None for v in states[i].values()):
                fresh = self._new_state(leaves[i], options)
                states[i] = {
                    k: fresh.get(k) if v is None else v for k, v in states[i].items()
                }
        self._static_seen[g] = static

    def _new_state(self, param: jax.Array, options: Options) -> dict:
        state = init_leaf(self.algorithm, param, options)
        # Every state buffer is donated: none may alias the param or another entry.
        seen = {id(param)}
        for k, v in state.items():
            if v is not None:
                if id(v) in seen:
                    state[k] = jnp.array(v, copy=True)
                seen.add(id(state[k]))
        return state

    # -- state -----------------------------------------------------------------------

    def _torch_state(self, state: dict | None) -> dict:
        """One leaf's state as torch keeps it: its names, 'step' as float32."""
        if state is None:
            return {}
        out: dict[str, Any] = {}
        for name in self.algorithm.state_names:
            if name == STEP and self.step_is_tensor:
                out[STEP] = jnp.asarray(state[STEP], jnp.float32)
            elif name == STEP:
                out[STEP] = int(state[STEP])
            elif state.get(name) is not None:
                out[name] = state[name]
        return out

    @property
    def state(self) -> dict:
        """Per-parameter state under torch's names, for the params torch has state
        for, keyed by the parameter's index (or the parameter array itself).

        A snapshot: its arrays are copies, which later steps leave valid (the next
        step donates the optimizer's own buffers) and do not update.
        """
        items: dict[int, dict] = {}
        leaves: list[Any] = []
        snapshot = self._state_snapshot()
        for g, group in enumerate(self.param_groups):
            for i, state in enumerate(snapshot[g]):
                view = self._torch_state(state)
                if view:
                    items[len(leaves) + i] = _copied(view)
            leaves.extend(group["params"])
        return _StateView(items, leaves)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in torch's format.

        ``{'state': {index: {name: array}}, 'param_groups': [{<options>,
        'param_names': [...] (when named), 'params': [indices]}]}``. The arrays are
        copies: later steps donate the optimizer's own buffers.
        """
        for pre_hook in tuple(self._optimizer_state_dict_pre_hooks.values()):
            pre_hook(self)
        groups, state, start = [], {}, 0
        snapshot = self._state_snapshot()
        for g, group in enumerate(self.param_groups):
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            groups.append(packed)
            for i, leaf_state in enumerate(snapshot[g]):
                view = self._torch_state(leaf_state)
                if view:
                    state[start + i] = _copied(view)
            start += len(group["params"])
        state_dict = {"state": state, "param_groups": groups}
        for post_hook in tuple(self._optimizer_state_dict_post_hooks.values()):
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict of :meth:`state_dict`'s format.

        Accepts this optimizer's own state dicts, a ``torch.optim`` state dict of the
        same algorithm (torch tensors), or either with NumPy arrays. Group count and
        sizes are checked with torch's messages; options are validated; every state
        entry is checked (names, shape, dtype) and cast like torch (floating state to
        the parameter's dtype, ``step`` to a count). Everything is checked before
        anything changes: on an error the optimizer is left exactly as it was.
        """
        _check_is_dict(state_dict)
        state_dict = dict(state_dict)
        for pre_hook in tuple(self._optimizer_load_state_dict_pre_hooks.values()):
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_groups, saved_state = _checked_layout(state_dict)
        groups = self.param_groups
        if len(groups) != len(saved_groups):
            raise ValueError(
                "loaded state dict has a different number of parameter groups"
            )
        if any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)
        ):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the "
                "size of optimizer's group"
            )
        saved_groups = [
            self._matched_by_name(g, saved) for g, saved in enumerate(saved_groups)
        ]
        new_groups = [
            self._loaded_group(g, group, saved)
            for g, (group, saved) in enumerate(zip(groups, saved_groups))
        ]
        saved_state = _with_int_ids(saved_groups, saved_state)
        known = {pid for saved in saved_groups for pid in saved["params"]}
        for pid in saved_state:
            if pid not in known:
                raise ValueError(
                    f"loaded state dict has state for parameter id {pid!r}, which no "
                    "parameter group lists"
                )
        new_states = []
        for group, saved in zip(new_groups, saved_groups):
            options = self._group_options(group)
            new_states.append(
                [
                    self._loaded_state(pid, p, options, saved_state.get(pid))
                    for pid, p in zip(saved["params"], group["params"])
                ]
            )
        self.param_groups = new_groups
        self._states = new_states
        self._static_seen = [None] * len(new_groups)
        for post_hook in tuple(self._optimizer_load_state_dict_post_hooks.values()):
            post_hook(self)

    def _matched_by_name(self, g: int, saved: Mapping) -> Mapping:
        """Saved group ``g`` with its ids in the order of this group's params, by
        name, when both have ``param_names``: the same names in another order are
        matched; other names are an error naming both (torch loads by position and
        would give one param another's state)."""
        ours, theirs = self._structures[g].names, saved.get("param_names")
        if ours is None or theirs is None or list(theirs) == ours:
            return saved
        theirs = list(theirs)
        if sorted(theirs) != sorted(ours) or len(set(ours)) != len(ours):
            raise ValueError(
                f"loaded state dict's parameter group {g} has param_names {theirs}, "
                f"the optimizer's group {g} has {ours}: the state belongs to other "
                "parameters"
            )
        ids = dict(zip(theirs, saved["params"], strict=True))
        return {**saved, "param_names": ours, "params": [ids[n] for n in ours]}

    def _loaded_group(self, g: int, group: dict, saved: Mapping) -> dict:
        new = {k: interop.to_jax(v) for k, v in saved.items() if k != "params"}
        new["params"] = group["params"]
        if "param_names" in group and "param_names" not in new:
            new["param_names"] = group["param_names"]
        # Flags added to torch after a state dict was saved default as in torch's
        # __setstate__; a missing numeric hyperparameter is another optimizer's group.
        missing = [k for k in self.defaults if k not in new]
        for name in missing:
            default = self.defaults[name]
            if isinstance(default, bool) or default is None:
                new[name] = default
        missing = [k for k in self.defaults if k not in new]
        if missing:
            raise ValueError(
                f"loaded state dict's parameter group {g} has no {missing}: it is not "
                f"a {type(self).__name__} state dict"
            )
        for name, default in self.algorithm.defaults.items():
            expected = _option_kind(default)
            if expected is not None and not _is_option_kind(new[name], default):
                raise ValueError(
                    f"loaded state dict's parameter group {g} has {name}="
                    f"{new[name]!r}, which is not {expected} (torch's default is "
                    f"{default!r})"
                )
        self._validate_options(new)
        return new

    def _loaded_state(
        self, pid: Any, param: jax.Array, options: Options, saved: Any
    ) -> dict | None:
        """The internal state of one leaf from its saved torch-format state."""
        if saved is None:
            return None
        if not isinstance(saved, Mapping):
            raise ValueError(
                f"loaded state of parameter {pid} must be a dict, got "
                + _typename(saved)
            )
        if len(saved) == 0:
            return None
        algorithm, names = self.algorithm, self.algorithm.state_names
        unknown = [k for k in saved if k not in names]
        if unknown:
            raise ValueError(
                f"loaded state of parameter {pid} has {unknown}, which "
                f"{algorithm.name} does not keep (its state: {list(names)})"
            )
        template = jax.eval_shape(lambda p: init_leaf(algorithm, p, options), param)
        state: dict[str, Any] = {}
        fresh = None
        for name in dict.fromkeys([*template, *names]):
            expected = template.get(name)
            if name == STEP and STEP in saved:
                state[STEP] = _loaded_step(pid, saved[STEP])
            elif name == STEP and STEP not in names:
                # torch keeps no count here; the state exists, so it is not step 1.
                state[STEP] = jnp.ones((), jnp.int32)
            elif name in saved:
                shape = param.shape if expected is None else expected.shape
                dtype = param.dtype if expected is None else expected.dtype
                state[name] = _loaded_array(pid, name, saved[name], shape, dtype)
            elif expected is None:
                state[name] = None
            elif name in names:
                _missing(pid, name, names)
            else:  # internal entry torch does not keep: as at initialization
                fresh = fresh or self._new_state(param, options)
                state[name] = fresh[name]
        return place_like(state, param)

    # -- hooks -------------------------------------------------------------------

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs) -> None | (new_args, new_kwargs)`` before
        ``step``; ``args`` starts with the optimizer, as in torch."""
        return _register(self._optimizer_step_pre_hooks, hook)

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs) -> None`` after ``step``."""
        return _register(self._optimizer_step_post_hooks, hook)

    def register_state_dict_pre_hook(
        self, hook: Callable, prepend: bool = False
    ) -> RemovableHandle:
        """``hook(optimizer) -> None`` before :meth:`state_dict` builds the dict."""
        return _register(self._optimizer_state_dict_pre_hooks, hook, prepend)

    def register_state_dict_post_hook(
        self, hook: Callable, prepend: bool = False
    ) -> RemovableHandle:
        """``hook(optimizer, state_dict) -> None | new state_dict`` after it."""
        return _register(self._optimizer_state_dict_post_hooks, hook, prepend)

    def register_load_state_dict_pre_hook(
        self, hook: Callable, prepend: bool = False
    ) -> RemovableHandle:
        """``hook(optimizer, state_dict) -> None | new state_dict`` before loading;
        it gets a shallow copy of the dict passed to :meth:`load_state_dict`."""
        return _register(self._optimizer_load_state_dict_pre_hooks, hook, prepend)

    def register_load_state_dict_post_hook(
        self, hook: Callable, prepend: bool = False
    ) -> RemovableHandle:
        """``hook(optimizer) -> None`` after :meth:`load_state_dict`."""
        return _register(self._optimizer_load_state_dict_post_hooks, hook, prepend)

    def __repr__(self) -> str:
        text = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            text += f"\nParameter Group {i}\n"
            for key in sorted(group):
                if key != "params":
                    text += f"    {key}: {group[key]}\n"
        return text + ")"


# step hooks wrap step, as torch patches it
Optimizer.step = _with_step_hooks(Optimizer.step)  # type: ignore[method-assign]


def _zeros_like(grad: Any) -> Any:
    # A sparse (BCOO) gradient keeps its pattern with zero values.
    return jnp.zeros_like(grad) if isinstance(grad, jax.Array) else grad * 0


def _check_is_dict(state_dict: Any) -> None:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a dict with 'state' and 'param_groups', got "
            f"{_typename(state_dict)}"
        )


def _checked_layout(state_dict: Mapping) -> tuple[list, Mapping]:
    """The state dict's groups and state, after checking torch's layout: a list of
    group dicts with lists of parameter ids (each id once), and a dict of states."""
    _check_is_dict(state_dict)
    missing = [k for k in ("state", "param_groups") if k not in state_dict]
    if missing:
        raise ValueError(
            f"loaded state dict has no {missing} (its keys: {list(state_dict)})"
        )
    groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(groups, (list, tuple)):
        raise ValueError(
            "loaded state dict's 'param_groups' must be a list of dicts, got "
            + _typename(groups)
        )
    for g, group in enumerate(groups):
        if not isinstance(group, Mapping) or not isinstance(
            group.get("params"), (list, tuple)
        ):
            raise ValueError(
                f"loaded state dict's parameter group {g} must be a dict with a "
                f"'params' list of parameter ids, got {_typename(group)}"
                + (
                    f" with params={group.get('params')!r}"
                    if isinstance(group, Mapping)
                    else ""
                )
            )
    if not isinstance(state, Mapping):
        raise ValueError(
            "loaded state dict's 'state' must be a dict from parameter id to state, "
            "got " + _typename(state)
        )
    try:
        counts = Counter(pid for group in groups for pid in group["params"])
    except TypeError as e:
        raise ValueError(
            f"loaded state dict has an unhashable parameter id: {e}"
        ) from None
    repeated = [pid for pid, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(
            f"loaded state dict lists parameter ids {repeated} more than once"
        )
    return list(groups), state


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


def _option_kind(default: Any) -> str | None:
    """What a loaded hyperparameter must be, judged by torch's default for it
    (None: anything that validation accepts)."""
    if isinstance(default, bool):
        return "a bool"
    if isinstance(default, (int, float)):
        return "a real number"
    if isinstance(default, tuple):
        return f"a sequence of {len(default)}"
    if isinstance(default, str):
        return "a string"
    return None


def _is_real_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        dtype is not None
        and getattr(value, "size", 0) == 1
        and jnp.issubdtype(dtype, jnp.number)
        and not jnp.issubdtype(dtype, jnp.complexfloating)
    )


def _is_option_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if isinstance(default, (int, float)):
        return _is_real_number(value)
    if isinstance(default, tuple):
        return (
            isinstance(value, (tuple, list))
            and len(value) == len(default)
            and all(_is_option_kind(v, d) for v, d in zip(value, default))
        )
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _missing(pid: Any, name: str, names: tuple) -> None:
    raise ValueError(
        f"loaded state of parameter {pid} has no {name!r} (expected {list(names)})"
    )


def _with_int_ids(groups: list, state: Mapping) -> Mapping:
    """``state`` keyed by the groups' integer ids where it has them as strings
    (orbax's own checkpointer and JSON turn integer dict keys into strings)."""
    known = {pid for group in groups for pid in group["params"]}
    as_text = {str(pid): pid for pid in known if isinstance(pid, int)}
    out = dict(state)
    for key in state:
        pid = as_text.get(key) if isinstance(key, str) and key not in known else None
        if pid is not None and pid not in out:
            out[pid] = out.pop(key)
    return out


def _dtype_kind(dtype: Any) -> str:
    for kind in (jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating):
        if jnp.issubdtype(dtype, kind):
            return kind.__name__
    return jnp.dtype(dtype).name


def _loaded_array(pid: Any, name: str, value: Any, shape, dtype) -> jax.Array:
    """A saved state entry as a fresh array of ``dtype`` (torch's cast, between
    floating dtypes), checked: an entry of another kind (integer, complex for a
    real state) is an error, where a cast would change the trajectory silently."""
    where = f"loaded state {name!r} of parameter {pid}"
    _check_not_traced(value, where)
    if not _is_array(value) and not isinstance(value, (int, float, complex, np.number)):
        raise ValueError(f"{where} must be an array, got {_typename(value)}")
    # A JAX array stays where it lives: it may be sharded over other processes.
    array: jax.Array | np.ndarray
    if isinstance(value, jax.Array):
        array = value
    else:
        array = np.asarray(interop.to_numpy(value))
    if not jnp.issubdtype(array.dtype, jnp.number):
        raise ValueError(f"{where} has dtype {array.dtype}, not a number")
    if _dtype_kind(array.dtype) != _dtype_kind(dtype):
        raise ValueError(
            f"{where} has dtype {array.dtype}, the state is {jnp.dtype(dtype).name}: "
            f"a {_dtype_kind(array.dtype)} entry for a {_dtype_kind(dtype)} state "
            "is not cast"
        )
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{where} has shape {array.shape}, expected {tuple(shape)}")
    return jnp.array(array, dtype=dtype, copy=True)


def _loaded_step(pid: Any, value: Any) -> jax.Array:
    """torch keeps 'step' as a float tensor; the facade counts in int32."""
    where = f"loaded state 'step' of parameter {pid}"
    _check_not_traced(value, where)
    if not _is_array(value) and not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{where} must be a number, got {_typename(value)}")
    array = np.asarray(interop.to_numpy(value))
    if (
        array.size != 1
        or not jnp.issubdtype(array.dtype, jnp.number)
        or (jnp.iscomplexobj(array))
    ):
        raise ValueError(f"{where} must be one real number, got {array!r}")
    count = float(array.reshape(()))
    if not (np.isfinite(count) and count >= 0 and count == int(count) < 2**31):
        raise ValueError(f"{where} must be a count (a whole number >= 0), got {count}")
    return jnp.asarray(int(count), jnp.int32)


# --- one class per algorithm ----------------------------------------------------


def optimizer_class(
    algorithm: Algorithm,
    *,
    state_at_construction: bool = False,
    check_params: Callable[[list], None] | None = None,
    step_is_tensor: bool = True,
):
    """The torch-named :class:`Optimizer` subclass running ``algorithm``.

    Its constructor is ``(params, <the functional's signature>)``: torch's keyword
    names, order, keyword-only markers and defaults, taken from
    ``algorithm.functional`` so they are written once. ``state_at_construction``,
    ``check_params`` and ``step_is_tensor`` are described on :class:`Optimizer`.
    """
    signature = inspect.signature(algorithm.functional)

    def __init__(self, params, *args, **kwargs):
        given = signature.bind(*args, **kwargs).arguments
        Optimizer.__init__(self, params, algorithm.options(given))

    params = inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    # inspect reads a function's __signature__, which typeshed does not declare
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_, params, *signature.parameters.values()],
        return_annotation=None,
    )
    functional = algorithm.functional.__name__
    functional_doc = inspect.getdoc(algorithm.functional)
    assert functional_doc is not None, f"{functional} has no docstring"
    doc = (
        f"``torch.optim.{algorithm.name}`` over JAX arrays: the stateful form of "
        f":func:`functorch_optim.{functional}` (see :class:`Optimizer`).\n\n"
        f"    Example:\n"
        f"      >>> opt = fo.{algorithm.name}(params)\n"
        f"      >>> opt.step(jax.grad(loss)(opt.params))\n\n"
        f"    The algorithm, as ``fo.{functional}`` documents it:\n\n    "
        + functional_doc.replace("\n", "\n    ")
    )
    return type(
        algorithm.name,
        (Optimizer,),
        {
            "__init__": __init__,
            "__doc__": doc,
            "__module__": "functorch_optim",
            "algorithm": algorithm,
            "state_at_construction": state_at_construction,
            "check_params": staticmethod(check_params) if check_params else None,
            "step_is_tensor": step_is_tensor,
        },
    )


ASGD = optimizer_class(asgd.ASGD)
Adadelta = optimizer_class(adadelta.ADADELTA)
Adafactor = optimizer_class(adafactor.ADAFACTOR)
Adagrad = optimizer_class(adagrad.ADAGRAD, state_at_construction=True)
Adam = optimizer_class(adam.ADAM)
AdamW = optimizer_class(adam.ADAMW)
Adamax = optimizer_class(adamax.ADAMAX)
Muon = optimizer_class(muon.MUON)
NAdam = optimizer_class(nadam.NADAM)
RAdam = optimizer_class(radam.RADAM)
RMSprop = optimizer_class(rmsprop.RMSPROP)
Rprop = optimizer_class(rprop.RPROP)
SGD = optimizer_class(sgd.SGD)
SparseAdam = optimizer_class(
    sparse_adam.SPARSE_ADAM, check_params=sparse_adam.check_params, step_is_tensor=False
)

__all__ = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Muon",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "RemovableHandle",
    "Rprop",
    "SGD",
    "SparseAdam",
    "compile_count",
    "optimizer_class",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
]

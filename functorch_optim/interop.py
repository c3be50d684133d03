"""Move arrays and optimizer state dicts between torch and JAX.

torch is imported lazily, inside the functions that create torch tensors, and is
never needed to run the library. Every converter walks nested dicts, lists and
tuples (a state dict, a pytree of params) and converts the arrays it finds, leaving
Python numbers, strings and ``None`` as they are, so hyperparameters such as
``lr=0.1`` stay Python floats as torch keeps them. torch's optimizer state-dict
format itself (building, reading back, its checks) is
:mod:`functorch_optim.torch_format`, which the facade shares.

Example (a facade state dict continues in torch, and back)::

    >>> torch_params = fo.interop.to_torch(opt.params)   # a dict, as opt.params
    >>> torch_opt = torch.optim.Adam(torch_params.values(), lr=1e-3)
    >>> torch_opt.load_state_dict(fo.interop.to_torch_state_dict(opt.state_dict()))
    >>> opt.load_state_dict(torch_opt.state_dict())   # torch tensors are accepted
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import torch_format
from .names import given_order, path_name
from .param_groups import ParamGroupsState, ParamGroupsUpdate, set_group_options
from .rule import Algorithm, Options
from .runner import array_names, evaluate_schedules
from .torch_format import as_numpy, is_torch_tensor

__all__ = [
    "is_torch_tensor",
    "to_numpy",
    "to_jax",
    "to_torch",
    "to_torch_state_dict",
    "load_into_torch",
    "tied_names",
    "with_tied",
    "torch_scheduler_state_dict",
    "renumbered",
    "torch_state_dict",
    "load_torch_state",
]


def _map_arrays(
    convert: Callable[[Any], Any], tree: Any, plain_dicts: bool = False
) -> Any:
    """``tree`` with ``convert`` applied to its arrays. ``plain_dicts``: every
    mapping (torch's ``OrderedDict`` state dicts) becomes a ``dict`` in the same
    order, the one dict type JAX code labels and matches trees with."""
    if isinstance(tree, (jax.Array, np.ndarray, np.generic)) or is_torch_tensor(tree):
        return convert(tree)
    if isinstance(tree, dict):
        mapping = dict if plain_dicts else type(tree)
        return mapping(
            (k, _map_arrays(convert, v, plain_dicts)) for k, v in tree.items()
        )
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple
        return type(tree)(*(_map_arrays(convert, v, plain_dicts) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_arrays(convert, v, plain_dicts) for v in tree)
    return tree


def to_numpy(tree: Any) -> Any:
    """Every array in ``tree`` (torch, JAX or NumPy) as a NumPy array.

    bfloat16 stays bfloat16 (``ml_dtypes``); a torch tensor is detached and moved to
    the CPU first.
    """
    return _map_arrays(as_numpy, tree)


def to_jax(tree: Any) -> Any:
    """Every array in ``tree`` as a JAX array (JAX arrays are returned as they are;
    a torch tensor is copied, so the two no longer share memory).

    Every mapping comes back a plain ``dict`` in the same order: torch's
    ``model.state_dict()`` is an ``OrderedDict``, a different pytree node type
    from ``dict``, which ``optax.partition``'s dict labels and ``jax.tree.map``
    with a dict tree would not match.

    An iterator (``model.parameters()``, ``model.named_parameters()``) becomes a
    list, so a torch model's params convert in torch's order::

        >>> params = fo.interop.to_jax(dict(model.named_parameters()))
        >>> pairs = fo.interop.to_jax(model.named_parameters())  # [(name, array)]
    """

    def convert(x):
        if isinstance(x, jax.Array):
            return x
        return jnp.array(as_numpy(x), copy=True)

    if isinstance(tree, Iterator):
        tree = list(tree)
    return _map_arrays(convert, tree, plain_dicts=True)


def to_torch(tree: Any) -> Any:
    """Every array in ``tree`` as a torch tensor of the same dtype and values."""
    import torch

    def convert(x):
        if isinstance(x, torch.Tensor):
            return x
        array = np.array(as_numpy(x), copy=True)  # writable, owned by torch
        if array.dtype == jnp.bfloat16:
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)

    return _map_arrays(convert, tree)


def to_torch_state_dict(state_dict: dict, order: Any = None) -> dict:
    """A facade ``state_dict()`` as ``torch.optim``'s ``load_state_dict`` takes it.

    The format is already torch's (integer ids, torch's state names, ``step`` as a
    float32 scalar); this converts the arrays to tensors. torch loads by position:
    the facade's ids follow the order its params were given, so where that may not
    be torch's (a dict returned by a jax function has sorted keys), give
    ``order`` and the ids are renumbered by name (see :func:`torch_state_dict`).
    """
    if order is not None:
        state_dict = renumbered(state_dict, order)
    return to_torch(state_dict)


def load_into_torch(torch_optimizer: Any, state_dict: dict) -> None:
    """Load a state dict of this library into a torch optimizer by parameter name.

    torch's own ``load_state_dict`` matches params by position only, so state can
    land on the wrong param of the same shape without an error. This renumbers
    ``state_dict`` (a facade's ``state_dict()`` or :func:`torch_state_dict`'s,
    both carry ``param_names``) to the torch optimizer's own ``param_names``,
    group by group, then loads it.

    Args:
      torch_optimizer: built from named params
        (``torch.optim.AdamW(model.named_parameters())``, or groups with
        ``param_names``), so that its params have names to match.
      state_dict: torch's format with ``param_names`` in every group.

    Raises:
      ValueError: the torch optimizer or the dict has no names, or a group's names
        differ (naming the missing and extra params).

    Example:
      >>> torch_opt = torch.optim.AdamW(model.named_parameters(), lr=3e-4)
      >>> fo.interop.load_into_torch(torch_opt, opt.state_dict())
    """
    torch_optimizer.load_state_dict(to_torch(renumbered(state_dict, torch_optimizer)))


# --- tied weights ---------------------------------------------------------------------


def tied_names(model: Any) -> dict[str, str]:
    """The tied weights of a torch module: each further name under which it
    reaches a param, mapped to the name ``model.named_parameters()`` lists it by.

    torch lists a tied param once in ``named_parameters()`` (nanoGPT's
    ``lm_head.weight``, tied to ``transformer.wte.weight``, is not there), which
    is how an optimizer sees it; ``model.state_dict()`` has a key for every name,
    and its strict ``load_state_dict`` wants them all. Pass the result to
    :func:`with_tied` to write params for it.

    Args:
      model: a ``torch.nn.Module`` (read through ``named_parameters``; torch is
        not imported here).

    Returns:
      ``{alias: listed name}``, in ``model.state_dict()``'s order; ``{}`` for a
      model without tied weights.

    Example:
      >>> fo.interop.tied_names(model)       # w and b are not tied
      {}
    """
    listed: dict[int, str] = {}
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in listed:
            tied[name] = listed[id(param)]
        else:
            listed[id(param)] = name
    return tied


def with_tied(params: Mapping[str, Any], tied: Mapping[str, str]) -> dict[str, Any]:
    """``params`` (by torch's names, each param once, as
    ``model.named_parameters()`` lists them) with a key for each tied alias too,
    holding its param's array: what torch's strict ``model.load_state_dict``
    takes (with the model's buffers, if it has any).

    Args:
      params: name -> array, such as a facade's ``opt.params`` built from
        ``fo.interop.to_jax(dict(model.named_parameters()))``.
      tied: alias -> listed name, from :func:`tied_names` (or written out, such as
        ``{"lm_head.weight": "transformer.wte.weight"}``).

    Returns:
      A new dict: ``params``, then the aliases.

    Raises:
      ValueError: an alias already in ``params``, or one tied to a name it lacks.

    Example:
      >>> w = params["w"]
      >>> tied = {"lm_head.weight": "wte.weight"}
      >>> state = fo.interop.with_tied({"wte.weight": w}, tied)
      >>> state["lm_head.weight"] is w
      True
      >>> state = fo.interop.with_tied(opt.params, fo.interop.tied_names(model))
      >>> model.load_state_dict(fo.interop.to_torch(state))
      <All keys matched successfully>
    """
    clashing = [alias for alias in tied if alias in params]
    missing = sorted({name for name in tied.values() if name not in params})
    if clashing or missing:
        raise ValueError(
            f"tied aliases already in the params: {clashing}; tied to params not in "
            f"them: {missing} (params: {list(params)})"
        )
    return {**params, **{alias: params[name] for alias, name in tied.items()}}


# --- schedules ---------------------------------------------------------------------


def torch_scheduler_state_dict(schedules: Any, count: Any) -> dict:
    """The ``state_dict()`` of the torch scheduler that matches functional
    schedules, after ``count`` optimizer steps: one schedule, or one per param
    group of a :func:`~functorch_optim.with_param_groups` transform (in the
    groups' order; the same scheduler and options, each from its group's lr).

    torch keeps one entry per group in ``base_lrs``, ``_last_lr`` (and LambdaLR's
    ``lr_lambdas``), so a scheduler over several groups needs them all: it would
    fail at its next ``step()`` on the state of one.

    Args:
      schedules: a :class:`~functorch_optim.schedules.Schedule`, or a list of them.
      count: the optimizer's step count (``state.count``).

    Returns:
      The dict torch's scheduler loads to continue the run.

    Raises:
      ValueError: schedules of different schedulers or options.

    Example:
      >>> sched = fo.step_lr(0.1, step_size=30)
      >>> fo.interop.torch_scheduler_state_dict(sched, 45)["last_epoch"]
      45
    """
    if callable(schedules):
        schedules = [schedules]
    states = [schedule.torch_state_dict(count) for schedule in schedules]
    return _joined_scheduler_states(states)


# torch's scheduler state entries kept per param group
_PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas")


def _joined_scheduler_states(states: list[dict]) -> dict:
    shared = [{k: v for k, v in s.items() if k not in _PER_GROUP} for s in states]
    shared = [{k: v for k, v in s.items() if k != "_schedulers"} for s in shared]
    differing = [g for g, s in enumerate(shared) if s != shared[0]]
    if differing:
        raise ValueError(
            f"the schedules of groups {differing} are not the scheduler of group 0 "
            f"with the same options: {[shared[g] for g in differing]} against "
            f"{shared[0]}"
        )
    joined = dict(states[0])
    for key in _PER_GROUP:
        if key in joined:
            joined[key] = [value for state in states for value in state[key]]
    if "_schedulers" in joined:
        joined["_schedulers"] = [
            _joined_scheduler_states(list(children))
            for children in zip(*(state["_schedulers"] for state in states))
        ]
    return joined


# --- torch's parameter order, given by name -------------------------------------------

_HOW_TO_ORDER = (
    "give torch's parameter order by name: order=model (a torch.nn.Module), "
    "order=torch_optimizer (built from model.named_parameters()), or "
    "order=[n for n, _ in model.named_parameters()]"
)


def _names_of_order(order: Any) -> tuple[list[str], list[list[str]] | None]:
    """``order`` as the names of torch's params in id order, and (for an
    optimizer) the names of each of its groups."""
    if hasattr(order, "named_parameters"):  # a torch.nn.Module
        return [n for n, _ in order.named_parameters()], None
    if hasattr(order, "param_groups"):  # a torch optimizer (or a facade)
        groups = order.param_groups
        unnamed = [g for g, group in enumerate(groups) if "param_names" not in group]
        if unnamed:
            raise ValueError(
                f"the optimizer's param groups {unnamed} have no param_names: build "
                "it from model.named_parameters() (or groups with named params) so "
                "that its params can be matched by name"
            )
        names = [list(group["param_names"]) for group in groups]
        return [n for group in names for n in group], names
    if isinstance(order, (str, bytes)) or not all(isinstance(n, str) for n in order):
        raise TypeError(
            "order must be a torch.nn.Module, a torch optimizer or a list of "
            f"parameter names, got {order!r}"
        )
    return list(order), None


def _differences(wanted: list[str], given: list[str]) -> tuple[list[str], list[str]]:
    """The names of ``wanted`` that ``given`` lacks, and those ``given`` has beyond
    it, each in its list's order."""
    return [n for n in wanted if n not in given], [n for n in given if n not in wanted]


def renumbered(state_dict: dict, order: Any) -> dict:
    """``state_dict`` (torch's format, ``param_names`` in every group) with torch's
    ids renumbered so that id ``i`` is the param torch's ``order`` puts ``i``-th.

    ``order`` (see :func:`torch_state_dict`) is a module, an optimizer or a list of
    names. An optimizer gives each group's order exactly; a module or a list orders
    the params within each group as it lists them. Groups keep their options and
    their members; only the numbering changes.
    """
    groups, states = torch_format.read(state_dict)
    unnamed = [g for g, group in enumerate(groups) if "param_names" not in group]
    if unnamed:
        raise ValueError(
            f"the state dict's param groups {unnamed} have no param_names, so its "
            "params cannot be matched to torch's by name"
        )
    names, group_names = _names_of_order(order)
    ours = [list(group["param_names"]) for group in groups]
    if group_names is not None:
        if len(group_names) != len(ours):
            raise ValueError(
                f"the state dict has {len(ours)} param groups, the torch optimizer "
                f"{len(group_names)}"
            )
    else:
        rank = {name: i for i, name in enumerate(names)}
        group_names = [
            sorted(group, key=lambda n: rank.get(n, len(rank))) for group in ours
        ]
    for g, (mine, theirs) in enumerate(zip(ours, group_names, strict=True)):
        missing, extra = _differences(theirs, mine)
        if missing or extra:
            raise ValueError(
                f"param group {g}: torch's order names {theirs}; missing from the "
                f"state dict: {missing}, in it but not in torch's: {extra}"
            )
    old_id = {
        name: pid
        for group in groups
        for name, pid in zip(group["param_names"], group["params"], strict=True)
    }
    new = torch_format.state_dict(
        (
            {**group, "param_names": names_in_order},
            [states.get(old_id[name]) for name in names_in_order],
        )
        for group, names_in_order in zip(groups, group_names, strict=True)
    )
    return {**state_dict, **new}


def _in_torch_id_order(
    ranked: list[str], members: list[list[int]], names: list[str]
) -> list[str]:
    """The leaves' names in the order of torch's ids: torch numbers its params
    group by group, each group's as the model (``ranked``, its order by name)
    lists them, as recipes build groups from ``model.named_parameters()``."""
    unknown, unnamed = _differences(ranked, names)
    if unknown or unnamed:
        raise ValueError(
            f"order names {unknown}, which params does not have, and not "
            f"{unnamed}, which it has"
        )
    rank = {name: i for i, name in enumerate(ranked)}
    return [
        name
        for leaves in members
        for name in sorted((names[i] for i in leaves), key=rank.__getitem__)
    ]


def _order_is_ambiguous(params: Any) -> bool:
    """Some dict of ``params`` has two or more keys holding leaves: its order may
    not be torch's (jax functions return dicts with sorted keys)."""
    keys_of: dict[tuple, set] = {}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        for depth, key in enumerate(path):
            if isinstance(key, jax.tree_util.DictKey):
                keys_of.setdefault(path[:depth], set()).add(key.key)
    return any(len(keys) > 1 for keys in keys_of.values())


# --- functional states <-> torch's optimizer state dict ------------------------------


def _named_params(params: Any) -> tuple[list[str], list[int]]:
    """The leaves' names in ``jax.tree`` order, and for each torch id (the params
    in the order given) the position of its leaf in that order."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [path_name(path) for path, _ in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"params have repeated leaf names: {names}")
    position = {name: i for i, name in enumerate(names)}
    return names, [position[path_name(path)] for path in given_order(params)[0]]


def _algorithm_of(tx: Any) -> tuple[Algorithm, Any]:
    update: Any = getattr(tx, "update", None)
    algorithm = getattr(update, "algorithm", None)
    if algorithm is None or algorithm.state_type is None:
        raise TypeError(
            "expected a transform of one of this library's first-order algorithms "
            f"(fo.adam(...), fo.sgd(...), fo.with_param_groups(...), ...), got {tx!r}"
        )
    return algorithm, update


# (options, leaves: positions in jax.tree order, scalar entries, the group's other
# keys) of one torch group
_TorchGroup = tuple[Options, list[int], dict[str, Any], dict[str, Any]]


def _torch_groups(tx: Any, state: Any, params: Any) -> tuple[Any, list[_TorchGroup]]:
    """The algorithm's state over the whole tree, and the param groups torch keeps
    for ``tx``: one for a single transform, one per group of
    :func:`~functorch_optim.with_param_groups`, whose options are the group's
    current hyperparameters."""
    algorithm, update = _algorithm_of(tx)
    if isinstance(update, ParamGroupsUpdate):
        inner = state.inner
        return inner, [
            (
                update.options(state.hyperparams, g),
                leaves,
                {name: getattr(inner, name)[g] for name in algorithm.scalar_names},
                update.extras[g],
            )
            for g, leaves in enumerate(update.members(params))
        ]
    leaves = list(range(len(jax.tree.leaves(params))))
    scalars = {name: getattr(state, name) for name in algorithm.scalar_names}
    return state, [(update.options, leaves, scalars, {})]


def _torch_option(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_torch_option(v) for v in value)
    if hasattr(value, "shape"):
        return float(as_numpy(value).reshape(()))
    return value


def torch_state_dict(tx: Any, state: Any, params: Any, order: Any = None) -> dict:
    """A functional state in the format of torch's ``Optimizer.state_dict()``.

    One param group holding every leaf, or for
    :func:`~functorch_optim.with_param_groups` one per group, each with its leaves,
    ``param_names`` their key paths joined by ``.`` (``{"fc1": {"weight": w}}`` ->
    ``fc1.weight``), and its options: ``tx``'s (a schedule at its value for the
    next step), a group's current hyperparameters (``lr``, ...) included. Each
    leaf's state holds torch's entries: ``step`` from the count (a float32 tensor
    where torch keeps one), the scalar entries, its slice of each array entry.
    Before the first step the state is empty, as torch's (Adagrad's, created by
    its constructor, excepted).

    torch's ``load_state_dict`` matches params by position, not by name, so torch's
    id ``i`` must be the param torch numbers ``i``: group by group, each group's
    params in the order ``order`` gives by name. Without ``order`` the params' own
    order is used where it is certain (lists and tuples); a dict's order is not
    (``jax.tree.map`` and a jitted step return dicts with sorted keys), so params
    with a dict of two or more entries need ``order``: a wrong order would load
    each state onto another param of the same shape without an error.
    :func:`load_into_torch` loads by name.

    Args:
      tx: the transform of this library that made ``state`` (``fo.adam(...)``,
        ``fo.with_param_groups(...)``).
      state: its state (``fo.AdamState``, ``fo.ParamGroupsState``, ...).
      params: the params the state belongs to (only their names, structure and
        order are read, and what the groups' selectors read).
      order: torch's parameter order by name: the torch ``nn.Module`` (its
        ``named_parameters()`` order), the torch optimizer (built from named
        params), or a list of names.

    Returns:
      A dict that ``torch.optim.<Algorithm>.load_state_dict`` loads, with torch
      tensors: into an optimizer built with the same groups, in the same order.

    Raises:
      ValueError: ``order`` is needed and not given, or names params that are not
        the leaves of ``params``.

    Example:
      >>> sd = fo.interop.torch_state_dict(tx, state, params, order=model)
      >>> torch_opt = torch.optim.Adam(model.named_parameters(), lr=1e-3)
      >>> torch_opt.load_state_dict(sd)
    """
    algorithm, _ = _algorithm_of(tx)
    if order is None and _order_is_ambiguous(params):
        raise ValueError(
            "torch loads optimizer state by position, and the order of the params' "
            f"dicts may not be torch's; {_HOW_TO_ORDER}"
        )
    inner, groups = _torch_groups(tx, state, params)
    names, given = _named_params(params)
    treedef: Any = jax.tree.structure(params)
    count = int(inner.count)
    columns = {
        name: [None] * treedef.num_leaves
        if getattr(inner, name) is None
        else treedef.flatten_up_to(getattr(inner, name))
        for name in array_names(algorithm)
    }
    created = count > 0 or algorithm.state_at_construction
    built = []
    names_of_groups = []
    for options, leaves, scalars, extras in groups:
        taken = set(leaves)
        members = [leaf for leaf in given if leaf in taken]
        values = evaluate_schedules(options, inner.count)
        group = {k: _torch_option(values[k]) for k in algorithm.defaults}
        group.update(extras)
        states = [
            to_torch(
                torch_format.torch_entries(
                    algorithm,
                    count,
                    {**{n: column[leaf] for n, column in columns.items()}, **scalars},
                )
            )
            if created
            else None
            for leaf in members
        ]
        built.append((group, states))
        names_of_groups.append([names[leaf] for leaf in members])
    state_dict = torch_format.state_dict(built)
    for group, group_names in zip(
        state_dict["param_groups"], names_of_groups, strict=True
    ):
        group["param_names"] = group_names
    return state_dict if order is None else renumbered(state_dict, order)


# torch's implementation flags: accepted and checked, with no effect on a step here
_IMPLEMENTATION_FLAGS = ("foreach", "fused", "differentiable")


def load_torch_state(
    tx: Any, torch_state_dict: dict, params: Any, order: Any = None
) -> Any:
    """The functional state of ``tx`` for ``params`` from a torch optimizer's
    ``state_dict()``.

    Every group's params are matched to the leaves of ``params`` by name: torch's
    ``param_names`` where the groups carry them (torch's optimizers built from
    ``model.named_parameters()``; names are key paths joined by ``.``), else the
    names ``order`` gives torch's ids in id order (``order=model`` for an
    optimizer built from ``model.parameters()``). Without either, torch's ids are
    the leaves in the params' order only where it is certain (lists and tuples,
    no dict of two or more entries); otherwise it is an error. Each entry is
    checked as the facade's ``load_state_dict`` checks it (torch's names of this
    algorithm, the leaf's shape, a floating or complex dtype as the state's: an
    integer entry is not cast; ``step`` a count) and cast to the dtype
    ``tx.init`` gives it. The functional state has one count, so every param with
    state must have taken the same number of steps, and the scalar entries
    (ASGD's ``eta``, NAdam's ``mu_product``) must agree within a group.

    For a single transform the options are ``tx``'s; the group's options in the
    dict are not read. For :func:`~functorch_optim.with_param_groups`, torch's
    groups must be the transform's, in order, each holding the params the group
    takes; each group's hyperparameters (``lr``, ...: those in
    ``state.hyperparams``) are torch's, as a scheduler left them, and its fixed
    options (flags, tuples, zeros) must equal torch's (the implementation flags
    ``foreach``, ``fused`` and ``differentiable`` excepted).

    Args:
      tx: a transform of this library (``fo.adam(...)``,
        ``fo.with_param_groups(...)``).
      torch_state_dict: ``torch_optimizer.state_dict()`` (torch tensors, or
        NumPy/JAX arrays).
      params: the params, as ``tx.update`` will get them.
      order: for a dict without ``param_names``, the names of torch's params in
        id order: the torch ``nn.Module`` or a list of names.

    Returns:
      The state (``fo.AdamState``, ``fo.ParamGroupsState``, ...), as
      ``tx.init(params)`` shapes it.

    Raises:
      ValueError: naming the param and entry, for a param missing from the dict or
        in it but not in ``params``, an entry of another shape, an unknown entry,
        or steps / scalar entries that differ between params; naming the group,
        for torch groups other than the transform's or a fixed option that
        differs.

    Example:
      >>> params = fo.interop.to_jax(dict(model.named_parameters()))
      >>> state = fo.interop.load_torch_state(fo.adam(1e-3), opt.state_dict(), params)
    """
    algorithm, update = _algorithm_of(tx)
    grouped = isinstance(update, ParamGroupsUpdate)
    names, given = _named_params(params)
    treedef: Any = jax.tree.structure(params)
    template = jax.eval_shape(tx.init, params)
    inner_template = template.inner if grouped else template
    groups, saved_states = torch_format.read(torch_state_dict)
    torch_ids = [pid for group in groups for pid in group["params"]]
    # our groups (one for a single transform), as positions in jax.tree order
    members = update.members(params) if grouped else [list(range(treedef.num_leaves))]
    if all("param_names" in group for group in groups):
        torch_names = [n for group in groups for n in group["param_names"]]
        missing, extra = _differences(names, torch_names)
        if missing or extra:
            raise ValueError(
                f"torch's state dict names params {torch_names}; params missing "
                f"from it: {missing}, params in it but not in params: {extra}"
            )
        id_of = dict(zip(torch_names, torch_ids, strict=True))
    elif order is None and _order_is_ambiguous(params):
        raise ValueError(
            "torch's state dict has no param_names, so its params are known only by "
            "position, and the order of the params' dicts may not be torch's: give "
            "the names of torch's params in id order, order=model (the torch "
            "nn.Module) or order=[n for n, _ in model.named_parameters()]"
        )
    else:
        in_id_order = (
            [names[leaf] for leaf in given]
            if order is None
            else _in_torch_id_order(_names_of_order(order)[0], members, names)
        )
        if len(torch_ids) != len(in_id_order):
            raise ValueError(
                f"torch's state dict has {len(torch_ids)} params and no "
                f"param_names, params has {len(in_id_order)} leaves ({in_id_order})"
            )
        id_of = dict(zip(in_id_order, torch_ids, strict=True))
    if grouped:
        _check_torch_groups(groups, members, names, id_of)

    # messages name "torch's state of param 'w'", "torch's 'exp_avg' of param 'w'"
    named = {
        name: torch_format.Named(f"param {name!r}", "torch's state", "torch's")
        for name in names
    }
    per_leaf = [
        torch_format.saved_entries(
            algorithm, named[name], saved_states.get(id_of[name])
        )
        or {}
        for name in names
    ]

    # A param keeps no state in torch where its group's options create none (SGD
    # without momentum); every other param has state once a step is taken.
    entries = [
        treedef.flatten_up_to(getattr(inner_template, field))
        for field in array_names(algorithm)
        if getattr(inner_template, field) is not None
    ]
    keeps_state = [
        "step" in algorithm.state_names or any(e[i] is not None for e in entries)
        for i in range(len(names))
    ]
    with_state = [n for n, s, k in zip(names, per_leaf, keeps_state) if s and k]
    without = [n for n, s, k in zip(names, per_leaf, keeps_state) if k and not s]
    if with_state and without:
        raise ValueError(
            "the functional state has one count: torch has state for params "
            f"{with_state} but none for {without}"
        )
    if not with_state:
        initial = jax.tree.map(jnp.asarray, tx.init(params))
        if not grouped:
            return initial
        return _with_torch_options(update, initial, groups)

    counts = {
        name: torch_format.saved_count(algorithm, named[name], s)
        for name, s in zip(names, per_leaf, strict=True)
        if name in with_state
    }
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"the functional state has one count; torch's steps differ: {counts}"
        )

    def loaded(name: str, entry: str, value: Any, expected: Any) -> jax.Array:
        where = named[name].entry(entry)
        return torch_format.loaded_array(where, value, expected.shape, expected.dtype)

    def scalar_of(field: str, g: int, expected: Any) -> jax.Array:
        """Group ``g``'s scalar entry: its params' one value."""
        if not members[g]:  # torch keeps no state for an empty group
            return getattr(update.transforms[g].init([]), field)
        values = [
            loaded(names[i], field, per_leaf[i][field], expected) for i in members[g]
        ]
        if any(not bool(jnp.all(v == values[0])) for v in values):
            raise ValueError(
                f"the functional state keeps one {field!r} per param group; torch's "
                f"differ between params: {[float(v) for v in values]}"
            )
        return values[0]

    fields: dict[str, Any] = {
        "count": jnp.asarray(next(iter(counts.values())), jnp.int32)
    }
    for field in inner_template._fields[1:]:
        expected = getattr(inner_template, field)
        if field in algorithm.scalar_names:
            fields[field] = (
                tuple(scalar_of(field, g, e) for g, e in enumerate(expected))
                if grouped
                else scalar_of(field, 0, expected)
            )
            continue
        if expected is None:
            fields[field] = None
            continue
        column: list[Any] = []
        for name, saved, want in zip(
            names, per_leaf, treedef.flatten_up_to(expected), strict=True
        ):
            if want is None:
                column.append(None)
            elif field not in saved:
                torch_format.missing(named[name], field, algorithm.state_names)
            else:
                column.append(loaded(name, field, saved[field], want))
        fields[field] = jax.tree.unflatten(treedef, column)
    inner = algorithm.state_type(**fields)
    if not grouped:
        return inner
    return _with_torch_options(
        update, ParamGroupsState(update.initial_hyperparams(), inner), groups
    )


def _check_torch_groups(
    torch_groups: list, members: list[list[int]], names: list[str], id_of: dict
) -> None:
    """torch's param groups are the transform's: as many, each with the params
    the transform's group of the same index takes (by name)."""
    if len(torch_groups) != len(members):
        raise ValueError(
            f"torch's state dict has {len(torch_groups)} param groups, the "
            f"transform {len(members)}"
        )
    name_of = {pid: name for name, pid in id_of.items()}
    for g, (group, leaves) in enumerate(zip(torch_groups, members, strict=True)):
        theirs = list(group.get("param_names") or [name_of[p] for p in group["params"]])
        ours = [names[i] for i in leaves]
        missing, extra = _differences(ours, theirs)
        if missing or extra:
            raise ValueError(
                f"torch's param group {g} has params {theirs}, the transform's group "
                f"{g} takes {ours}: not in torch's group: {missing}, in torch's but "
                f"not in the transform's: {extra}"
            )


def _with_torch_options(
    update: ParamGroupsUpdate, state: ParamGroupsState, torch_groups: list
) -> ParamGroupsState:
    """``state`` with each group's hyperparameters set to torch's group's values,
    after checking that torch's group has the transform's fixed options."""
    for g, torch_group in enumerate(torch_groups):
        fixed = update.static_options(g)
        differ = {
            name: (_torch_option(torch_group[name]), value)
            for name, value in fixed.items()
            if name in torch_group
            and name not in _IMPLEMENTATION_FLAGS
            and not callable(value)  # a schedule: torch's group has its value
            and _torch_option(torch_group[name]) != _torch_option(value)
        }
        if differ:
            raise ValueError(
                f"torch's param group {g} has options {differ} as (torch's, the "
                f"transform's): these are fixed when the transform is built "
                "(flags, integers, tuples, zeros torch branches on); build it "
                "with torch's"
            )
        other = {
            name: (torch_group[name], value)
            for name, value in update.extras[g].items()
            if name in torch_group and torch_group[name] != value
        }
        if other:
            raise ValueError(
                f"torch's param group {g} has {other} as (torch's, the transform's)"
            )
        values = {
            name: _torch_option(torch_group[name])
            for name in state.hyperparams[g]
            if name in torch_group
        }
        state = set_group_options(state, g, **values)
    return state

"""torch's param groups in one functional transform: :func:`with_param_groups`.

A torch recipe gives one model's params several groups, each with its own options
(nanoGPT decays only the matrices; Hugging Face exempts ``bias`` and
``LayerNorm.weight``). :func:`with_param_groups` is that optimizer as one
optax-style transform over the whole params tree: the groups are selected from the
tree by predicate or by name (:mod:`functorch_optim.grouping`), and each leaf is
stepped by the algorithm with its group's options.

Design
------
* One definition of the math. Group ``g``'s options are validated by building the
  algorithm's own transform, ``functional(**{**defaults, **group_g})``, so the
  errors are torch's constructor's; its step is that algorithm's update
  (:class:`~functorch_optim.functional.AlgorithmUpdate`) on the group's leaves.
* Hyperparameters in the state, as ``optax.inject_hyperparams`` keeps them. Each
  group's float options are scalar arrays in ``state.hyperparams[g]``: a jitted
  step reads them as inputs, so a new value (:func:`set_group_options`, an lr
  warmup) reuses the compiled step. The other options are fixed when the
  transform is built: flags, integers, ``None``, strings, schedules (evaluated on
  the count, as in the single transform), tuples such as ``betas`` (traced tuple
  elements would make every leaf trace its rule anew instead of once per shape:
  2.0x the compile time on 150 leaves), and, as in the facade, the zeros of the
  options that are 0 by default (Adam's ``weight_decay``, SGD's ``momentum``),
  on which torch branches: no term, no buffer.
* One algorithm state over the whole tree (``state.inner``, the algorithm's own
  NamedTuple): one ``count``, so ``optax.tree_utils.tree_get(state, "count")``
  reads it, and every per-parameter entry a tree shaped like the params, so
  ``optax.tree_utils.tree_map_params(tx, f, state)`` maps it as for the single
  transform. An entry a group keeps none of (SGD's ``momentum_buffer`` where its
  momentum is 0) is ``None`` at that group's leaves. The scalar entries torch
  keeps per parameter but equal for a group's (ASGD's ``eta`` and ``mu``, NAdam's
  ``mu_product``) are kept once per group: a tuple with one per group.
* Compile cost: a leaf's rule is traced once per shape and static options
  (:func:`functorch_optim.runner.run_rule`), and groups differing only in traced
  options share those traces, so the program is the single transform's plus one
  scalar part (bias corrections) per group.

:func:`functorch_optim.interop.torch_state_dict` and
:func:`~functorch_optim.interop.load_torch_state` move this state to and from a
torch optimizer built with the same groups, one torch param group per group.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from .checks import check_param_dtypes
from .core import GradientTransformation
from .functional import AlgorithmUpdate
from .grouping import assign_groups, checked_group
from .rule import Algorithm, Options
from .runner import array_names, checked_leaves


class ParamGroupsState(NamedTuple):
    """The state of :func:`with_param_groups`.

    Attributes:
      hyperparams: one dict per param group, its traced options (``lr``, a
        nonzero ``weight_decay``, ...) as scalar arrays; set them with
        :func:`set_group_options`.
      inner: the algorithm's state (``fo.AdamState``, ...) over the whole params
        tree: ``count`` once, each per-parameter entry a tree shaped like the
        params; its scalar entries (ASGD, NAdam) a tuple with one per group.
    """

    hyperparams: tuple[dict[str, Any], ...]
    inner: Any

    @property
    def count(self) -> Any:  # type: ignore[override]  # tuple.count, a method
        """The steps taken: the algorithm state's ``count`` (torch's ``step``),
        as every other transform's state has it."""
        return self.inner.count


def _zero_is_static(algorithm: Algorithm) -> frozenset[str]:
    """The options whose zero torch branches on (``if x != 0``): those whose
    default is the number 0."""
    return frozenset(
        name
        for name, default in algorithm.defaults.items()
        if isinstance(default, (int, float))
        and not isinstance(default, bool)
        and default == 0
    )


def _traced(value: Any, zero_is_static: bool) -> Any:
    """``value`` as a traced hyperparameter (a scalar array), or None where it is
    fixed when the transform is built (see the module docstring)."""
    if isinstance(value, (float, np.floating)) and not isinstance(value, bool):
        if zero_is_static and value == 0:
            return None
        return jnp.asarray(float(value))  # weakly typed, as a Python float in jit
    if isinstance(value, jax.Array | np.ndarray) and value.size == 1:
        return jnp.asarray(value).reshape(())
    return None


class ParamGroupsUpdate:
    """The ``update`` of :func:`with_param_groups`, and the groups it steps
    (read by :mod:`functorch_optim.interop`).

    Attributes:
      algorithm: the algorithm every group runs.
      groups: the group dicts as given (their ``"params"`` selectors).
      transforms: each group's own transform, built from the defaults and its
        options (validated as torch's constructor validates them).
      extras: each group's keys that are not the algorithm's options (MAE's
        ``lr_scale``), kept as torch keeps them in its group dicts and written
        to torch's state dict.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        groups: tuple[Mapping[str, Any], ...],
        transforms: tuple[GradientTransformation, ...],
        extras: tuple[dict[str, Any], ...],
    ) -> None:
        self.algorithm = algorithm
        self.groups = groups
        self.transforms = transforms
        self.extras = extras
        zero_is_static = _zero_is_static(algorithm)
        # each update is an AlgorithmUpdate (with_param_groups checks)
        self._options = tuple(
            cast(AlgorithmUpdate, t.update).options for t in transforms
        )
        initial = []
        for options in self._options:
            traced = {
                name: _traced(value, name in zero_is_static)
                for name, value in options.items()
            }
            initial.append({k: v for k, v in traced.items() if v is not None})
        self._initial = tuple(initial)

    def initial_hyperparams(self) -> tuple[dict[str, Any], ...]:
        """Each group's traced options at their given values (fresh dicts)."""
        return tuple(dict(h) for h in self._initial)

    def static_options(self, g: int) -> Options:
        """Group ``g``'s options fixed when the transform was built."""
        return Options(
            {k: v for k, v in self._options[g].items() if k not in self._initial[g]}
        )

    def options(self, hyperparams: Sequence[Mapping[str, Any]], g: int) -> Options:
        """Group ``g``'s options: the fixed ones and its ``hyperparams``."""
        return Options({**self._options[g], **hyperparams[g]})

    def members(self, params: Any) -> list[list[int]]:
        """Each group's leaves: their positions in ``jax.tree`` order."""
        members: list[list[int]] = [[] for _ in self.groups]
        for i, g in enumerate(assign_groups(params, self.groups)):
            members[g].append(i)
        return members

    def init(self, params: Any) -> ParamGroupsState:
        """The state before the first step: each group's own transform's state of
        its leaves, gathered into one."""
        check_param_dtypes(params)
        leaves, treedef = jax.tree.flatten(params)
        members = self.members(params)
        states = [
            t.init([leaves[i] for i in idx])
            for t, idx in zip(self.transforms, members, strict=True)
        ]
        inner = self._gathered(jnp.zeros((), jnp.int32), treedef, members, states)
        return ParamGroupsState(self.initial_hyperparams(), inner)

    def __call__(
        self, grads: Any, state: ParamGroupsState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, ParamGroupsState]:
        del extra_args  # the first-order algorithms read only grads and params
        tree = grads if params is None else params
        leaves, grad_leaves, treedef = checked_leaves(tree, grads)
        members = self.members(tree)
        columns = {
            name: [None] * len(leaves)
            if getattr(state.inner, name) is None
            else treedef.flatten_up_to(getattr(state.inner, name))
            for name in array_names(self.algorithm)
        }
        updates: list[Any] = [None] * len(leaves)
        new_states = []
        for g, idx in enumerate(members):
            group_state = self.algorithm.state_type(
                count=state.inner.count,
                **{s: getattr(state.inner, s)[g] for s in self.algorithm.scalar_names},
                **{name: [column[i] for i in idx] for name, column in columns.items()},
            )
            step = AlgorithmUpdate(self.algorithm, self.options(state.hyperparams, g))
            group_updates, new_state = step(
                [grad_leaves[i] for i in idx],
                group_state,
                None if params is None else [leaves[i] for i in idx],
            )
            for i, u in zip(idx, group_updates, strict=True):
                updates[i] = u
            new_states.append(new_state)
        inner = self._gathered(state.inner.count + 1, treedef, members, new_states)
        new = ParamGroupsState(state.hyperparams, inner)
        return jax.tree.unflatten(treedef, updates), new

    def _gathered(
        self, count: Any, treedef: Any, members: list[list[int]], states: list[Any]
    ) -> Any:
        """The groups' states (each over a list of its leaves) as one state over
        the whole tree; an entry no leaf has is None, as the runner keeps it."""
        fields: dict[str, Any] = {}
        for name in array_names(self.algorithm):
            column: list[Any] = [None] * treedef.num_leaves
            for idx, group_state in zip(members, states, strict=True):
                entry = getattr(group_state, name)
                for i, value in zip(idx, entry or [None] * len(idx), strict=True):
                    column[i] = value
            missing = column and all(v is None for v in column)
            fields[name] = None if missing else jax.tree.unflatten(treedef, column)
        for name in self.algorithm.scalar_names:
            fields[name] = tuple(getattr(s, name) for s in states)
        return self.algorithm.state_type(count=count, **fields)


def with_param_groups(
    functional: Callable[..., GradientTransformation],
    groups: Sequence[Mapping[str, Any]],
    **defaults: Any,
) -> GradientTransformation:
    r"""One algorithm with torch's per-group options over one params tree.

    The transform of ``torch.optim.<Algorithm>(param_groups, **defaults)``: each
    leaf is stepped with the options of the first group whose ``"params"``
    selector takes it, exactly as ``functional(**{**defaults, **group})`` steps
    it alone. A selector is a predicate ``(name, leaf) -> bool`` or a list of
    names, ``name`` the leaf's key path joined by ``.`` (torch's
    ``named_parameters()`` name, see :mod:`functorch_optim.grouping`). For leaf
    :math:`\theta` of group :math:`g`,

    .. math::
        (\theta_{t+1}, s_{t+1}) = \mathrm{step}(\theta_t, g_t, s_t;
            \mathrm{defaults} \cup \mathrm{options}_g)

    with :math:`\mathrm{step}` the algorithm's own (``fo.adamw``'s, ...).

    Each group's float options are scalar arrays in ``state.hyperparams[g]``:
    change one with :func:`set_group_options` (as torch's
    ``param_groups[g]["lr"] = ...``) and a jitted step runs without
    recompiling. Flags, integers, tuples (``betas``), schedules and the zeros
    torch branches on (options whose default is 0, such as Adam's
    ``weight_decay``) are fixed here. ``update`` is jittable; ``params=None``
    selects the groups on the grads (the algorithm must not read params).

    Args:
      functional: one of this library's first-order transforms (``fo.adamw``,
        ``fo.sgd``, ...), not called yet.
      groups: torch's param groups, each a dict with a ``"params"`` selector and
        that group's options under torch's names. A group may take no leaf (torch
        keeps empty groups); a leaf no group takes is an error naming it. Other
        keys (MAE's ``lr_scale``) are kept, as torch keeps them in its group
        dicts, and written to torch's state dict.
      **defaults: options for every group, as torch's constructor keywords.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` whose state is a
      :class:`ParamGroupsState`.

    Raises:
      ValueError: no groups, or an option torch rejects (torch's message, e.g.
        ``Invalid learning rate: -1.0``); a leaf no group takes (at ``init``).
      TypeError: a group without a ``"params"`` selector, a default the algorithm
        does not have, or ``functional`` not one of this library's.

    Example:
      >>> tx = fo.with_param_groups(
      ...     fo.adamw,
      ...     [{"params": ["b"], "weight_decay": 0.0},
      ...      {"params": lambda name, p: p.ndim >= 2, "weight_decay": 0.1}],
      ...     lr=6e-4, betas=(0.9, 0.95))
      >>> state = tx.init(params)
      >>> step = jax.jit(tx.update)
      >>> updates, state = step(grads, state, params)
      >>> params = fo.apply_updates(params, updates)
      >>> state = fo.set_group_options(state, 1, lr=2.5e-4)   # no recompilation
      >>> updates, state = step(grads, state, params)
      >>> step._cache_size(), int(state.inner.count)
      (1, 2)
    """
    if not groups:
        raise ValueError("optimizer got an empty parameter list")
    groups = tuple(checked_group(group, g) for g, group in enumerate(groups))
    accepted = inspect.signature(functional).parameters
    transforms = tuple(
        functional(**{**defaults, **{k: v for k, v in g.items() if k in accepted}})
        for g in groups
    )
    extras = tuple(
        {k: v for k, v in g.items() if k != "params" and k not in accepted}
        for g in groups
    )
    for tx in transforms:
        update = getattr(tx, "update", None)
        if (
            not isinstance(update, AlgorithmUpdate)
            or update.algorithm.state_type is None
        ):
            raise TypeError(
                "with_param_groups takes one of this library's first-order "
                f"algorithms (fo.adamw, fo.sgd, ...), got {functional!r}"
            )
    algorithm = cast(AlgorithmUpdate, transforms[0].update).algorithm
    update = ParamGroupsUpdate(algorithm, groups, transforms, extras)
    return GradientTransformation(update.init, update)


def set_group_options(
    state: ParamGroupsState, group: int, **options: Any
) -> ParamGroupsState:
    """``state`` with new values of param group ``group``'s traced options.

    The functional form of torch's ``optimizer.param_groups[group]["lr"] = lr``:
    a value keeps its array's dtype, so a jitted step given the new state runs
    the program it compiled. Like torch's assignment it is not validated (the
    value may be traced); it takes effect at the next step.

    Args:
      state: a :class:`ParamGroupsState`.
      group: the group's index, in the order the groups were given.
      **options: new values (Python numbers or scalar arrays) of options in
        ``state.hyperparams[group]``.

    Returns:
      The state with those values; the algorithm's state is unchanged.

    Raises:
      IndexError: no such group.
      ValueError: an option that is not traced (fixed when the transform was
        built, or not the algorithm's), naming the traced ones.

    Example:
      >>> tx = fo.with_param_groups(fo.sgd, [{"params": lambda n, p: True}], lr=0.1)
      >>> state = fo.set_group_options(tx.init(params), 0, lr=0.25)
      >>> float(state.hyperparams[0]["lr"])
      0.25
    """
    if not 0 <= group < len(state.hyperparams):
        raise IndexError(
            f"param group {group} out of range: the state has "
            f"{len(state.hyperparams)} param groups"
        )
    current = state.hyperparams[group]
    fixed = [name for name in options if name not in current]
    if fixed:
        raise ValueError(
            f"param group {group} has no traced options {fixed}: its traced options "
            f"are {sorted(current)}; flags, integers, tuples, schedules and zeros "
            "torch branches on are fixed when the transform is built"
        )
    hyperparams = list(state.hyperparams)
    hyperparams[group] = {
        **current,
        **{k: jax.lax.full_like(current[k], v) for k, v in options.items()},
    }
    return state._replace(hyperparams=tuple(hyperparams))

"""The optimizers' hooks, as torch's: step, state-dict and load-state-dict hooks per
optimizer (:class:`Hooks`, which also runs the state-dict ones around what the
optimizer builds and loads), and the global step hooks every optimizer runs."""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar


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


def with_step_hooks(step: Callable) -> Callable:
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


class Hooks:
    """An optimizer's own hooks and their six registrations, as torch's."""

    def __init__(self) -> None:
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        # inside a hooked step: a nested step (super().step) runs no hooks
        self._in_step = False

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

    # -- running the state-dict hooks, for the optimizer -------------------------

    def _state_dict_hooked(self, build: Callable[[], dict]) -> dict:
        """``build()`` (the state dict) between the state-dict hooks, as torch
        runs them: the pre hooks, then each post hook, whose result (if not
        None) replaces the dict."""
        for pre_hook in tuple(self._optimizer_state_dict_pre_hooks.values()):
            pre_hook(self)
        result = build()
        for post_hook in tuple(self._optimizer_state_dict_post_hooks.values()):
            returned = post_hook(self, result)
            if returned is not None:
                result = returned
        return result

    def _load_state_dict_hooked(
        self, state_dict: Mapping[str, Any], load: Callable[[Any], None]
    ) -> None:
        """``load(state_dict)`` between the load hooks, as torch runs them: the
        pre hooks get a shallow copy of ``state_dict`` and each may return a
        new one; the post hooks run after a load that succeeded."""
        state_dict = dict(state_dict)
        for pre_hook in tuple(self._optimizer_load_state_dict_pre_hooks.values()):
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        load(state_dict)
        for post_hook in tuple(self._optimizer_load_state_dict_post_hooks.values()):
            post_hook(self)

"""The closed registry of state classes: this library's NamedTuple states by name,
the only classes a checkpoint can name."""

from __future__ import annotations

import functools
import importlib
import sys
import types
from typing import Any


@functools.cache
def _state_registry() -> dict[str, type]:
    """This library's NamedTuple state classes by name: the public ``*State``
    classes of the modules that define the names the package exports.

    Derived from the exports, so a new algorithm's state joins without a list to
    update; a file can name nothing outside it. Read at first use, when the package
    (which loads this module lazily) is initialized.

    Returns:
      ``{"AdamState": fo.AdamState, ...}``.
    """
    package = importlib.import_module(__name__.split(".")[0])
    exported = [getattr(package, name) for name in package.__all__]
    namespaces = [package] + [m for m in exported if isinstance(m, types.ModuleType)]
    modules = {
        sys.modules[obj.__module__]
        for namespace in namespaces
        for obj in map(vars(namespace).get, _public_names(namespace))
        if str(getattr(obj, "__module__", "")).startswith(package.__name__ + ".")
    }
    registry: dict[str, type] = {}
    for module in modules:
        for cls in vars(module).values():
            if _is_state_class(cls, module.__name__):
                if registry.setdefault(cls.__name__, cls) is not cls:
                    raise RuntimeError(f"two state classes named {cls.__name__}")
    return registry


def _public_names(module: types.ModuleType) -> list[str]:
    """``module.__all__``, or its names without a leading underscore."""
    names = getattr(module, "__all__", None)
    return names or [name for name in vars(module) if not name.startswith("_")]


def _is_state_class(cls: Any, module: str) -> bool:
    """A public NamedTuple class named ``*State`` defined in ``module``."""
    return (
        isinstance(cls, type)
        and issubclass(cls, tuple)
        and hasattr(cls, "_fields")
        and cls.__module__ == module
        and cls.__name__.endswith("State")
        and not cls.__name__.startswith("_")
    )


def _is_own_state(x: Any) -> bool:
    """A state of this library (``fo.AdamState``, ...): recorded by its registry
    name and rebuilt without ``like``."""
    cls = type(x)
    return _state_registry().get(cls.__name__) is cls

"""Move arrays and optimizer state dicts between torch and JAX.

torch is imported lazily, inside the functions that create torch tensors, and is
never needed to run the library. Every converter walks nested dicts, lists and
tuples (a state dict, a pytree of params) and converts the arrays it finds, leaving
Python numbers, strings and ``None`` as they are, so hyperparameters such as
``lr=0.1`` stay Python floats as torch keeps them.

Example (a facade state dict continues in torch, and back)::

    >>> torch_opt = torch.optim.Adam(fo.interop.to_torch(opt.params), lr=1e-3)
    >>> torch_opt.load_state_dict(fo.interop.to_torch_state_dict(opt.state_dict()))
    >>> opt.load_state_dict(torch_opt.state_dict())   # torch tensors are accepted
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_BFLOAT16 = np.dtype(jnp.bfloat16)


def _is_torch_tensor(x: Any) -> bool:
    # A torch tensor can only exist when torch is already imported.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _map_arrays(convert: Callable[[Any], Any], tree: Any) -> Any:
    if isinstance(tree, (jax.Array, np.ndarray, np.generic)) or _is_torch_tensor(tree):
        return convert(tree)
    if isinstance(tree, dict):
        return type(tree)((k, _map_arrays(convert, v)) for k, v in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple
        return type(tree)(*(_map_arrays(convert, v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_arrays(convert, v) for v in tree)
    return tree


def _tensor_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16; ml_dtypes' has its bits
        return t.view(torch.int16).numpy().view(_BFLOAT16)
    return t.numpy()


def _array_to_numpy(x: Any) -> np.ndarray:
    if _is_torch_tensor(x):
        return _tensor_to_numpy(x)
    return np.asarray(x)


def to_numpy(tree: Any) -> Any:
    """Every array in ``tree`` (torch, JAX or NumPy) as a NumPy array.

    bfloat16 stays bfloat16 (``ml_dtypes``); a torch tensor is detached and moved to
    the CPU first.
    """
    return _map_arrays(_array_to_numpy, tree)


def to_jax(tree: Any) -> Any:
    """Every array in ``tree`` as a JAX array (JAX arrays are returned as they are;
    a torch tensor is copied, so the two no longer share memory).

    An iterator (``model.parameters()``, ``model.named_parameters()``) becomes a
    list, so a torch model's params convert in torch's order::

        >>> params = fo.interop.to_jax(dict(model.named_parameters()))
        >>> pairs = fo.interop.to_jax(model.named_parameters())  # [(name, array)]
    """

    def convert(x):
        if isinstance(x, jax.Array):
            return x
        return jnp.array(_array_to_numpy(x), copy=True)

    if isinstance(tree, Iterator):
        tree = list(tree)
    return _map_arrays(convert, tree)


def to_torch(tree: Any) -> Any:
    """Every array in ``tree`` as a torch tensor of the same dtype and values."""
    import torch

    def convert(x):
        if isinstance(x, torch.Tensor):
            return x
        array = np.array(_array_to_numpy(x), copy=True)  # writable, owned by torch
        if array.dtype == _BFLOAT16:
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)

    return _map_arrays(convert, tree)


def to_torch_state_dict(state_dict: dict) -> dict:
    """A facade ``state_dict()`` as ``torch.optim``'s ``load_state_dict`` takes it.

    The format is already torch's (integer ids, torch's state names, ``step`` as a
    float32 scalar); this converts the arrays to tensors.
    """
    return to_torch(state_dict)


def from_torch_state_dict(state_dict: dict) -> dict:
    """A ``torch.optim`` state dict with JAX arrays, as the facade's ``state_dict()``
    returns it (``load_state_dict`` also takes the torch one directly)."""
    return to_jax(state_dict)

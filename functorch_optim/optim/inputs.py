"""Checks on what users hand the facade (params, grads, closures' results), with
torch's messages, before anything changes."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import interop
from ..checks import is_optimizable
from ..core import is_bcoo
from ..torch_format import is_array, is_torch_tensor, typename


def matches(grad: Any, param: jax.Array) -> bool:
    """``grad`` is an array of ``param``'s type, shape and dtype."""
    return (
        type(grad) is type(param)
        and grad.shape == param.shape
        and grad.dtype == param.dtype
    )


def check_not_traced(x: Any, where: str) -> None:
    """A traced value means the facade runs inside ``jax.jit``, ``vmap`` or
    ``grad``: its Python-held state would keep the tracers and be lost."""
    if isinstance(x, jax.core.Tracer):
        raise RuntimeError(
            f"{where} is a traced value: the torch-style optimizer was called inside "
            "jax.jit, jax.vmap or jax.grad. It keeps its params and state in Python "
            "and steps outside JAX's transformations (nothing was changed); inside "
            "them use the functional form (fo.adam, ...), whose state is a value."
        )


def check_param(p: Any, where: str) -> None:
    """A parameter must be a JAX (or NumPy) array; a torch tensor would be copied,
    and training the copy would leave the torch model unchanged."""
    check_not_traced(p, where)
    if is_torch_tensor(p):
        raise TypeError(
            f"{where} is a torch tensor ({typename(p)}): the optimizer steps JAX "
            "arrays, and would train copies while the torch model stays unchanged. "
            "Convert the params once with fo.interop.to_jax (e.g. params = "
            "fo.interop.to_jax(dict(model.named_parameters()))), train those, and "
            "read the results from opt.params (fo.interop.to_torch converts back)."
        )
    if not (isinstance(p, (jax.Array, np.ndarray)) or is_bcoo(p)):
        raise TypeError(
            "optimizer can only optimize Tensors, but one of the params is "
            + typename(p)
        )


def is_named(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)


def is_group_list(params: Any) -> bool:
    return (
        isinstance(params, (list, tuple))
        and len(params) > 0
        and isinstance(params[0], dict)
        and "params" in params[0]
    )


def checked_grad(
    param: jax.Array, grad: Any, name: str = "the grad", where: str = "grads"
) -> Any:
    """torch's checks on assigning ``.grad`` (its messages, then the detail);
    a gradient of another floating dtype is cast to the parameter's. ``where``
    names the leaf in the grads tree given."""
    if grad is None:
        return None
    check_not_traced(grad, where)
    if not (is_array(grad) or is_bcoo(grad)):
        raise TypeError(
            f"{name} ({where}) is a {typename(grad)}, not an array: grads must "
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


def zeros_like(grad: Any) -> Any:
    # A sparse (BCOO) gradient keeps its pattern with zero values.
    return jnp.zeros_like(grad) if isinstance(grad, jax.Array) else grad * 0


def own_leaves(originals: list) -> list:
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

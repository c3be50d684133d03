"""Save and restore optimizer state exactly: functional states and facade state dicts.

Two on-disk formats, one encoding of the structure:

* ``format="msgpack"`` (default): one file; arrays are packed with
  ``flax.serialization``'s msgpack codec (dtype, shape, bytes), inside a small
  envelope (magic, format version, payload length, SHA-256) so a missing, truncated
  or foreign file is reported as such instead of decoded into garbage.
* ``format="orbax"``: a directory; the arrays go through orbax's
  ``StandardCheckpointer`` (tensorstore, sharded arrays) into a subdirectory of
  their own per save, ``arrays-<random hex>``, and the structure into
  ``structure.fockpt``, an envelope of the same kind that names that subdirectory.

The structure is recorded exactly, which neither backend does alone: dict keys keep
their type (a facade ``state_dict()`` is keyed by ``int``), tuples stay tuples
(``betas``), lists stay lists, ``None``, ``bool``, ``int``, ``float`` (``nan`` and
``inf`` included), ``str`` and ``complex`` come back as themselves, and arrays come
back with their dtype (``bfloat16`` and ``complex64`` included), shape and kind
(JAX array or NumPy array), and this library's own NamedTuple states
(``fo.AdamState``, ...) as themselves. Other pytree nodes (flax ``nnx.State``,
optax's namedtuple states, dataclasses) are stored as their leaves and need
``like=`` to be rebuilt, as with orbax.

A checkpoint file is data. :func:`restore` never imports or resolves anything a
file names: a state type is looked up by its name in a closed registry of this
library's state classes. Every size a file declares (a string, an array's shape, a
container's entry count, the arrays of an orbax directory) is checked against the
bytes that hold it before anything is allocated, nesting is bounded, array dtypes
must be numeric, and anything else raises :class:`CheckpointError`.

Saves are atomic: a crash (``SIGKILL``, a full disk) leaves the old checkpoint or
the new one, never neither and never a mix. The msgpack file is written to a temp
file next to the target (the target of a symlink) and renamed onto it; an orbax
save writes a fresh arrays subdirectory and then renames a new ``structure.fockpt``
naming it into place. What an interrupted save left behind is removed by the next
save of the same checkpoint.

Example::

    >>> fo.checkpoint.save("opt.ckpt", opt.state_dict())          # facade
    >>> opt.load_state_dict(fo.checkpoint.restore("opt.ckpt"))
    >>> fo.checkpoint.save("run.ckpt", {"params": params, "opt_state": state})
    >>> restored = fo.checkpoint.restore("run.ckpt", like={"params": params,
    ...                                                    "opt_state": state})
"""

from __future__ import annotations

import os
from typing import Any

from .constants import _FORMATS, _STRUCTURE_FILE, _VERSION, CheckpointError
from .decoding import _Decoder
from .decoding import _numeric_dtypes as _numeric_dtypes  # for the tests
from .encoding import _encode
from .files import _pack, _read_envelope, _write_atomically
from .fitting import _fit, _no_nodes
from .orbax_dirs import _Layout, _save_directory
from .registry import _state_registry as _state_registry  # for the tests

__all__ = ["CheckpointError", "model_state_dict", "restore", "save", "save_torch"]

# documented, raised and pickled under the package's name, as before the split
CheckpointError.__module__ = __name__


def save(path: str | os.PathLike, tree: Any, *, format: str = "msgpack") -> None:
    """Write ``tree`` to ``path`` so that :func:`restore` returns it exactly.

    The save is atomic: interrupted at any moment (a crash, ``SIGKILL``, a full
    disk), ``path`` holds the previous checkpoint or this one, never neither and
    never a mix; the temp files an interrupted save leaves are removed by the next
    save to the same ``path``. A file keeps its mode (a new one gets ``0o666`` less
    the umask), and a symlink's target is written.

    Args:
      path: a file (``format="msgpack"``) or a directory (``format="orbax"``) to
        create or overwrite.
      tree: a functional optimizer state, ``(params, state)``, a facade
        ``state_dict()``, or any pytree of arrays and Python scalars. Dicts (any
        hashable scalar keys), lists, tuples, ``None``, numbers and strings are
        recorded as themselves; other pytree nodes as their leaves. At most 100
        containers deep.
      format: ``"msgpack"`` (``flax.serialization``) or ``"orbax"``.

    Example:
      >>> fo.checkpoint.save("step_100.ckpt", {"params": params, "state": state})
    """
    path = os.fspath(path)
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if format == "msgpack":
        _write_atomically(path, _pack([_VERSION, _encode(tree, None, "")]))
    else:
        _save_directory(path, tree)


def restore(path: str | os.PathLike, like: Any = None) -> Any:
    """Read a checkpoint written by :func:`save` (either format, detected).

    A checkpoint is data: nothing it names is imported or resolved (a state class is
    looked up in this library's registry of them), and every size it declares is
    checked against the file before anything is allocated.

    Args:
      path: the file or directory given to :func:`save`.
      like: optional tree of the expected structure (arrays or
        ``jax.ShapeDtypeStruct``): every array must have its shape and dtype, and is
        placed with its sharding; pytree nodes other than dicts, lists and tuples
        (``nnx.State``, optax states) are rebuilt from it.

    Returns:
      The saved tree, with the same containers, key types, Python scalars, dtypes
      and array kinds.

    Raises:
      FileNotFoundError: nothing at ``path``.
      CheckpointError: (a ``ValueError``) the file is not a checkpoint, is
        truncated, corrupted or malformed (an unknown state class, a non-numeric
        dtype, a size larger than the file, nesting deeper than 100), or does not
        match ``like``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    tree = _restore_directory(path) if os.path.isdir(path) else _restore_file(path)
    return _no_nodes(tree, "") if like is None else _fit(tree, like, "")


def _restore_file(path: str) -> Any:
    version, payload = _read_envelope(path)
    decoder = _Decoder(payload, version)
    try:
        reader = decoder.reader
        if (
            reader.expect("array", "the payload") != 2
            or reader.scalar((int,), "the version") != version
        ):
            raise CheckpointError("the payload's layout does not match its version")
        tree = decoder.value("", 0)
        reader.finish("the payload")
    except CheckpointError as e:
        raise CheckpointError(f"{path} could not be decoded: {e}") from None
    return tree


def _restore_directory(path: str) -> Any:
    structure_path = os.path.join(path, _STRUCTURE_FILE)
    if not os.path.exists(structure_path):
        raise CheckpointError(
            f"{path} is not a complete functorch_optim checkpoint: "
            f"{_STRUCTURE_FILE} is missing"
        )
    version, payload = _read_envelope(structure_path)
    try:
        return _Layout(payload, version, os.path.realpath(path)).tree()
    except CheckpointError as e:
        raise CheckpointError(f"{path} could not be decoded: {e}") from None


def model_state_dict(optimizer: Any, tied: Any = None) -> dict[str, Any]:
    """A facade's params as torch's ``model.state_dict()`` holds them:
    ``{param_name: array}``, in the optimizer's order.

    The names are the groups' ``param_names`` (a facade built from a dict or
    ``(name, array)`` pairs has them, such as the names of
    ``model.named_parameters()``).

    Args:
      optimizer: a facade optimizer.
      tied: tied weights to write under each of their names, as torch's
        ``model.state_dict()`` does (nanoGPT's ``lm_head.weight``, the array of
        ``transformer.wte.weight``): the torch module, or ``{alias: name}``
        (:func:`functorch_optim.interop.tied_names`).

    Raises:
      ValueError: a param group has no ``param_names`` (params given as a list).

    Example:
      >>> fo.checkpoint.model_state_dict(opt)["w"].shape
      (3, 2)
    """
    from .. import interop

    model: dict[str, Any] = {}
    for g, group in enumerate(optimizer.param_groups):
        names = group.get("param_names")
        if names is None:
            raise ValueError(
                f"param group {g} has no param_names: build the optimizer from a "
                "dict or (name, array) pairs to name the params in torch's file"
            )
        model.update(zip(names, group["params"], strict=True))
    if tied is None:
        return model
    if hasattr(tied, "named_parameters"):
        tied = interop.tied_names(tied)
    return interop.with_tied(model, tied)


def _as_torch_objects(value: Any) -> Any:
    """``value`` with every object that has a ``state_dict()`` (a facade optimizer,
    a scheduler, an ``AveragedModel``) replaced by it, inside dicts, lists and
    tuples; arrays become tensors afterwards."""
    if callable(getattr(value, "state_dict", None)):
        return value.state_dict()
    if isinstance(value, dict):
        return type(value)((k, _as_torch_objects(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_as_torch_objects(v) for v in value)
    return value


def save_torch(path: str | os.PathLike, contents: Any, scheduler: Any = None) -> None:
    """Write a facade run as a file ``torch.load`` reads (``weights_only``), for
    torch's model, optimizer and scheduler to load and continue.

    Two forms:

    * ``save_torch(path, {"model": ..., "optimizer": opt, "lr_scheduler": sched,
      "iter_num": 1000, "config": {...}})``: any dict layout the recipe's torch
      code reads. Every object with a ``state_dict()`` (a facade optimizer, a
      scheduler, an ``AveragedModel``) is written as its ``state_dict()``, every
      array as a tensor, the rest (numbers, strings, dicts of config) as it is.
      :func:`model_state_dict` gives a facade's params under their torch names.
    * ``save_torch(path, opt, sched=None)``: the layout ``{"model":
      model_state_dict(opt), "optimizer": opt.state_dict(), "scheduler":
      sched.state_dict()}`` (no ``"scheduler"`` without one).

    Example::

        >>> fo.checkpoint.save_torch("ckpt.pt", {
        ...     "model": fo.checkpoint.model_state_dict(opt), "optimizer": opt,
        ...     "lr_scheduler": sched, "iter_num": 1000})
        >>> saved = torch.load("ckpt.pt")
        >>> model.load_state_dict(saved["model"])  # strict=False to keep buffers
        <All keys matched successfully>
        >>> torch_opt.load_state_dict(saved["optimizer"])
        >>> torch_sched.load_state_dict(saved["lr_scheduler"])

    Raises:
      ValueError: the second form, with a param group without ``param_names``.
      TypeError: a scheduler with the dict form (put it in the dict).
    """
    import torch

    from .. import interop

    if isinstance(contents, dict):
        if scheduler is not None:
            raise TypeError(
                "save_torch(path, {...}) writes the dict as it is: put the "
                "scheduler in it (e.g. 'lr_scheduler': sched)"
            )
        tree = contents
    else:
        tree = {"model": model_state_dict(contents), "optimizer": contents}
        if scheduler is not None:
            tree["scheduler"] = scheduler
    torch.save(interop.to_torch(_as_torch_objects(tree)), os.fspath(path))

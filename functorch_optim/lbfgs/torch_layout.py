"""L-BFGS's state as torch keeps it, and back.

torch's ``LBFGS`` keeps Python counts, flat vectors and Python lists of the
curvature pairs, which grow to ``history_size`` entries; here the pairs live in
fixed-shape ring buffers (:mod:`.iteration`). This module converts between the two,
for ``state_dict`` and for loading torch's state.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from .iteration import HISTORY_LEN, HISTORY_START

# torch's LBFGS state entries, in the order torch creates them.
TORCH_STATE = (
    "func_evals",
    "n_iter",
    "d",
    "t",
    "old_dirs",
    "old_stps",
    "ro",
    "H_diag",
    "prev_flat_grad",
    "prev_loss",
    "al",
)


def to_torch_layout(state: dict) -> dict:
    """The state as torch keeps it: Python counts, flat vectors, lists of pairs.

    Entries torch has not created yet are left out (everything but the counts
    before the first iteration, ``al`` before the second); ``old_dirs``,
    ``old_stps`` and ``ro`` are lists from oldest to newest, ``al`` a list of
    ``history_size`` entries, ``None`` past the pairs in use. Arrays are NumPy.
    """
    n_iter = int(state["n_iter"])
    out: dict[str, Any] = {"func_evals": int(state["func_evals"]), "n_iter": n_iter}
    if n_iter == 0:
        return out
    history_size = state["ro"].shape[0]
    start, num_old = int(state[HISTORY_START]), int(state[HISTORY_LEN])
    rows = [(start + i) % history_size for i in range(num_old)]
    out.update(
        d=np.asarray(state["d"]),
        t=np.asarray(state["t"]),
        old_dirs=[np.asarray(state["old_dirs"][r]) for r in rows],
        old_stps=[np.asarray(state["old_stps"][r]) for r in rows],
        ro=[np.asarray(state["ro"][r]) for r in rows],
        H_diag=np.asarray(state["H_diag"]),
        prev_flat_grad=np.asarray(state["prev_flat_grad"]),
        prev_loss=float(state["prev_loss"]),
    )
    if n_iter >= 2:
        al = np.asarray(state["al"])
        out["al"] = [al[i] if i < num_old else None for i in range(history_size)]
    return out


def from_torch_layout(entry: dict, like: dict) -> dict:
    """Inverse of :func:`to_torch_layout`; ``like`` is a state of the right shapes.

    Accepts torch's own state entry (tensors, Python numbers, lists): the pairs fill
    the ring buffers from row 0.
    """
    history_size = like["ro"].shape[0]
    dtype = like["d"].dtype
    unknown = set(entry) - set(TORCH_STATE)
    if unknown:
        raise ValueError(
            f"loaded LBFGS state has {sorted(unknown)}, which LBFGS does not keep "
            f"(its state: {list(TORCH_STATE)})"
        )
    n = like["d"].shape[0]

    def vector(x):
        # a copy: a torch state's tensors keep changing in place (prev_flat_grad)
        array = jnp.array(np.asarray(x), dtype, copy=True)
        if array.shape not in ((), (n,)):
            raise ValueError(
                f"loaded LBFGS state has an entry of shape {array.shape}; the "
                f"parameters flatten to ({n},)"
            )
        return array

    state = dict(like)
    state["func_evals"] = jnp.asarray(int(entry.get("func_evals", 0)), jnp.int32)
    state["n_iter"] = jnp.asarray(int(entry.get("n_iter", 0)), jnp.int32)
    if "d" not in entry:
        return state
    old_dirs = list(entry["old_dirs"])
    if len(old_dirs) > history_size:
        raise ValueError(
            f"the state holds {len(old_dirs)} curvature pairs, more than "
            f"history_size={history_size}"
        )

    def rows(pairs, buffer):
        for i, pair in enumerate(pairs):
            buffer = buffer.at[i].set(vector(pair))
        return buffer

    al = entry.get("al") or []
    state.update(
        d=vector(entry["d"]),
        t=vector(entry["t"]),
        old_dirs=rows(old_dirs, jnp.zeros_like(like["old_dirs"])),
        old_stps=rows(entry["old_stps"], jnp.zeros_like(like["old_stps"])),
        ro=rows(entry["ro"], jnp.zeros_like(like["ro"])),
        H_diag=vector(entry["H_diag"]),
        prev_flat_grad=vector(entry["prev_flat_grad"]),
        prev_loss=vector(entry["prev_loss"]),
        al=rows([0.0 if a is None else a for a in al], jnp.zeros_like(like["al"])),
    )
    state[HISTORY_START] = jnp.zeros((), jnp.int32)
    state[HISTORY_LEN] = jnp.asarray(len(old_dirs), jnp.int32)
    return state

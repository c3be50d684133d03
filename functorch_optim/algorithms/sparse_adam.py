"""Lazy Adam for sparse gradients (torch.optim.SparseAdam).

Gradients are :class:`jax.experimental.sparse.BCOO` arrays, the analogue of torch's
sparse COO gradients (``nn.Embedding(sparse=True)``): only the entries a gradient
holds move the moments and the parameters.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from ..checks import holds_state
from ..core import GradientTransformation, is_bcoo
from ..doubled import Doubled, rounded_values
from ..doubled import sqrt as doubled_sqrt
from ..functional import make_transform
from ..kernels import add, bias_corrections, mul
from ..rule import Algorithm, Array, Hyperparameter, Options, require

if TYPE_CHECKING:
    from jax.experimental import sparse


def _validate(o: Options) -> None:
    beta1, beta2 = o.betas
    require(lambda v: 0.0 < v, o.lr, f"Invalid learning rate: {o.lr}")
    require(lambda v: 0.0 < v, o.eps, f"Invalid epsilon value: {o.eps}")
    require(
        lambda v: 0.0 <= v < 1.0, beta1, f"Invalid beta parameter at index 0: {beta1}"
    )
    require(
        lambda v: 0.0 <= v < 1.0, beta2, f"Invalid beta parameter at index 1: {beta2}"
    )


def check_params(groups) -> None:
    """torch's constructor check: dense, real parameters only.

    Args:
      groups: one list of parameter leaves per param group; the indices in the
        message are ``[group, position in group]``, as torch prints them.
    """
    sparse_at, complex_at = [], []
    for g, leaves in enumerate(groups):
        for i, leaf in enumerate(leaves):
            if is_bcoo(leaf):
                sparse_at.append([g, i])
            if jnp.iscomplexobj(leaf):
                complex_at.append([g, i])
    if sparse_at:
        raise ValueError(
            f"Sparse params at indices {sparse_at}: SparseAdam requires dense "
            "parameter tensors"
        )
    if complex_at:
        raise ValueError(
            f"Complex params at indices {complex_at}: SparseAdam does not support "
            "complex parameters"
        )


def _coalesce(grad: sparse.BCOO, n_rows: int):
    """torch's ``coalesce()``: unique entries with duplicates summed.

    Entries are addressed by their flat index over the sparse dimensions (rows of
    the parameter seen as ``(n_rows, *dense_shape)``). The result keeps the static
    size ``nse``; unused slots and BCOO padding get the out-of-range row ``n_rows``,
    which gathers read as 0 and scatters drop.
    """
    sparse_shape = grad.shape[: grad.n_sparse]
    indices = grad.indices
    rows = jnp.zeros(grad.nse, indices.dtype)
    valid = jnp.ones(grad.nse, bool)
    for axis, size in enumerate(sparse_shape):
        column = indices[:, axis]
        rows = rows * size + column
        valid &= (column >= 0) & (column < size)
    rows = jnp.where(valid, rows, n_rows)
    # Sort, then sum each run of equal rows into one slot (jnp.unique does the
    # same but compiles several times slower).
    order = jnp.argsort(rows, stable=True)
    rows = rows[order]
    starts = jnp.concatenate([jnp.ones(1, bool), rows[1:] != rows[:-1]])
    slot = jnp.cumsum(starts) - 1
    values = jax.ops.segment_sum(grad.data[order], slot, grad.nse)
    unique = jnp.full(grad.nse, n_rows, rows.dtype).at[slot].set(rows)
    return unique, values


class SparseAdamStepScalars(NamedTuple):
    """The per-step scalar of SparseAdam's rule: torch's ``step_size``, ``lr
    sqrt(bias_correction2) / bias_correction1``."""

    step_size: Any


def _init(param, o: Options) -> dict:
    return {"exp_avg": jnp.zeros_like(param), "exp_avg_sq": jnp.zeros_like(param)}


def _step(param, grad, state, o: Options, s: SparseAdamStepScalars):
    if not is_bcoo(grad):
        raise RuntimeError(
            "SparseAdam does not support dense gradients, please consider Adam instead"
        )
    beta1, beta2 = o.betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    # torch skips the update of an empty gradient (the step still counts).
    if grad.data.size == 0:
        return param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

    from jax.experimental import sparse  # loaded already: grad is a BCOO

    grad = sparse.bcoo_update_layout(grad, n_batch=0)  # torch has no batch dims
    # A gradient with no sparse dimension holds the whole parameter as one row.
    sparse_shape = param.shape[: grad.n_sparse] or (1,)
    table_shape = sparse_shape + param.shape[grad.n_sparse :]
    rows, grad_values = _coalesce(grad, math.prod(sparse_shape))
    if o.maximize:
        grad_values = -grad_values

    # Index the sparse dimensions one by one (no flattening of the parameter), so a
    # sharded parameter keeps its sharding. Unravelled by hand: padding rows
    # (n_rows) must fall out of range in the first dimension (jnp.unravel_index
    # would clip them onto the last entry).
    digits: list[jax.Array] = []
    rest = rows
    for size in reversed(sparse_shape[1:]):
        digits.insert(0, rest % size)
        rest = rest // size
    index = (rest, *digits)

    def gather(x):
        return x.reshape(table_shape).at[index].get(mode="fill", fill_value=0)

    def scatter_add(x, values):
        table = x.reshape(table_shape).at[index].add(values, mode="drop")
        return table.reshape(x.shape)

    # old + (1 - b) * (new - old), at the gradient's entries only.
    old_exp_avg = gather(exp_avg)
    exp_avg_update = mul(grad_values - old_exp_avg, 1 - beta1)
    exp_avg = scatter_add(exp_avg, exp_avg_update)
    old_exp_avg_sq = gather(exp_avg_sq)
    exp_avg_sq_update = mul(grad_values * grad_values - old_exp_avg_sq, 1 - beta2)
    exp_avg_sq = scatter_add(exp_avg_sq, exp_avg_sq_update)

    numer = exp_avg_update + old_exp_avg
    denom = add(jnp.sqrt(exp_avg_sq_update + old_exp_avg_sq), o.eps)
    new_param = scatter_add(param, mul(numer / denom, -s.step_size))
    return new_param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def _scalars(step, scalar_state, o: Options):
    # torch's step is a Python int, the others' a float32 tensor read with .item():
    # the same double below 2**24 steps, so the same bias corrections
    bias_correction1, bias_correction2 = bias_corrections(step, *o.betas)
    root: Any = (  # torch's math.sqrt
        doubled_sqrt(bias_correction2)
        if isinstance(bias_correction2, Doubled)
        else jnp.sqrt(bias_correction2)
    )
    step_size = o.lr * root / bias_correction1
    return rounded_values(SparseAdamStepScalars(step_size), {})


class SparseAdamState(NamedTuple):
    """The state of :func:`sparse_adam`: the step count and torch's moments, each
    a tree shaped like the params."""

    count: Array  # type: ignore[assignment]  # optax names it so; shadows tuple.count
    exp_avg: Any
    exp_avg_sq: Any


def sparse_adam(
    lr: Hyperparameter = 1e-3,
    betas: tuple[Hyperparameter, Hyperparameter] = (0.9, 0.999),
    eps: Hyperparameter = 1e-8,
    maximize: bool = False,
) -> GradientTransformation[SparseAdamState]:
    r"""Lazy Adam for sparse gradients (``torch.optim.SparseAdam``).

    Gradients must be :class:`jax.experimental.sparse.BCOO` (duplicate indices are
    summed, as torch's ``coalesce``). For each entry :math:`i` the gradient holds,
    with :math:`g` its value (negated when ``maximize``):

    .. math::
        m_i &\leftarrow m_i + (1 - \beta_1)(g - m_i), \quad
        v_i \leftarrow v_i + (1 - \beta_2)(g^2 - v_i) \\
        \theta_i &\leftarrow \theta_i
            - \gamma \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}
            \frac{m_i}{\sqrt{v_i} + \epsilon}

    Entries the gradient does not hold keep their moments and parameter values; the
    step count :math:`t` advances on every ``update`` (an empty gradient moves
    nothing), as in torch.

    Args:
      lr: learning rate :math:`\gamma` (> 0).
      betas: coefficients of the running averages of the gradient and its square.
      eps: term added to the denominator (> 0).
      maximize: ascend the objective instead of descending it.

    Returns:
      A :class:`~functorch_optim.GradientTransformation` with torch's state
      ``step``, ``exp_avg`` and ``exp_avg_sq``. ``init`` rejects complex and sparse
      parameters with torch's ValueError; ``update`` rejects dense gradients with
      torch's RuntimeError.

    Example:
      >>> from jax.experimental import sparse
      >>> tx = fo.sparse_adam(lr=1e-2)
      >>> state = tx.init({"embedding": table})
      >>> ids = jnp.array([3, 1, 3])          # rows looked up, with a repeat
      >>> grad = sparse.BCOO((row_grads, ids[:, None]), shape=table.shape)
      >>> updates, state = tx.update({"embedding": grad}, state, {"embedding": table})
    """
    transform = make_transform(SPARSE_ADAM, locals())

    def init(params):
        leaves = jax.tree.leaves(params, is_leaf=is_bcoo)
        check_params([[leaf for leaf in leaves if holds_state(leaf)]])
        return transform.init(params)

    # wraps: the update carries the transform's algorithm and options
    # (fo.interop.torch_state_dict reads them)
    @functools.wraps(transform.update)
    def update(grads, state, params=None, **extra_args):
        if params is None:
            # The dense zeros the update is measured from: a BCOO grad has the
            # parameter's shape.
            params = jax.tree.map(
                lambda g: jnp.zeros(g.shape, g.dtype), grads, is_leaf=is_bcoo
            )
        return transform.update(grads, state, params, **extra_args)

    return GradientTransformation(init, update)


SPARSE_ADAM = Algorithm(
    name="SparseAdam",
    functional=sparse_adam,
    init=_init,
    step=_step,
    validate=_validate,
    state_type=SparseAdamState,
    scalars=_scalars,
    complex_as_real=False,  # torch rejects complex parameters
    reads_params=lambda options: False,
    sparse_grads="native",
    step_is_tensor=False,
    check_params=check_params,
)

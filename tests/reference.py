"""Run torch.optim and this library side by side on the same parameters and grads.

Every parity test goes through these helpers so that the comparison (dtype
conversion, tolerances, step loop) is defined once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import functorch_optim as fo

# Shapes every parity test covers: scalar, vector, matrix, 3-D and size 0.
SHAPES = ((), (3,), (2, 3), (2, 3, 2), (0,))

DTYPES = ("float32", "float64", "complex64", "bfloat16")

# (rtol, atol) against torch after a few steps.
TOLERANCE = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "complex64": (1e-5, 1e-6),
    "complex128": (1e-10, 1e-12),
    "bfloat16": (2e-2, 2e-2),
    "float16": (5e-3, 5e-3),
}

# The property tests' pytree (test_properties): every dtype torch runs for an
# algorithm and the odd shapes in one tree, so one compile per algorithm covers
# them all. The registry's ``property_leaves`` narrows it where torch does.
MIXED = (
    ((), "float32"),
    ((0,), "float32"),
    ((2, 3), "float32"),
    ((3,), "float64"),
    ((2, 2), "bfloat16"),
    ((3,), "float16"),
    ((2,), "complex64"),
)

# 10 ** (u * SPAN) scales the property tests' params and grads, u in [-1, 1]:
# squares stay in range. bfloat16 stops at 1e-4: below, Adam's sqrt(v) nears eps and
# torch's bf16 results (its vectorized path rounds differently, see kernels.add)
# drift from the rule's by ~10 bf16 ulps.
SPAN = {"float64": 100, "float32": 15, "bfloat16": 4, "float16": 1.5, "complex64": 15}

TORCH_DTYPE = {
    "float32": torch.float32,
    "float64": torch.float64,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def random_arrays(
    seed: int, shapes: Sequence[tuple], dtype: str, scale: float = 1.0
) -> list[np.ndarray]:
    """Deterministic test values as NumPy (bf16 travels as float32)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        x = rng.standard_normal(shape) * scale
        if dtype.startswith("complex"):
            x = x + 1j * rng.standard_normal(shape) * scale
        out.append(x)
    return out


def to_torch(x: np.ndarray, dtype: str) -> torch.Tensor:
    return torch.tensor(np.asarray(x)).to(TORCH_DTYPE[dtype]).clone()


def to_jax(x: np.ndarray, dtype: str) -> jax.Array:
    # Round to the target dtype in torch, so both sides start from the same bits.
    t = to_torch(x, dtype)
    if dtype in ("bfloat16", "float16"):
        return jnp.asarray(t.float().numpy()).astype(dtype)
    return jnp.asarray(t.numpy())


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy().copy()  # torch steps in place: never alias its storage
    x = np.asarray(x)
    if x.dtype.name in ("bfloat16", "float16"):
        x = x.astype(np.float32)
    return x


def grad_sequence(steps: int, shapes, dtype: str, seed: int = 1) -> list[list]:
    return [random_arrays(seed + 100 * k, shapes, dtype) for k in range(steps)]


def torch_trajectory(
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    params: Sequence[np.ndarray],
    grads: Sequence[Sequence[np.ndarray]],
    dtype: str,
    grad_to_torch: Callable[[int, object], torch.Tensor] | None = None,
) -> list[list[np.ndarray]]:
    """Parameters after each torch ``step()`` fed ``grads``.

    ``grad_to_torch(i, g)`` makes leaf ``i``'s gradient from an entry of ``grads``
    (sparse gradients); by default ``g`` is an array, converted to ``dtype``.
    """
    tensors = [to_torch(p, dtype).requires_grad_() for p in params]
    optimizer = make_optimizer(tensors)
    if grad_to_torch is None:
        grad_to_torch = lambda i, g: to_torch(g, dtype)
    out = []
    for step_grads in grads:
        for i, (t, g) in enumerate(zip(tensors, step_grads)):
            t.grad = grad_to_torch(i, g)
        optimizer.step()
        out.append([to_numpy(t) for t in tensors])
    return out


def functional_trajectory(
    tx: fo.GradientTransformation,
    params: Sequence[np.ndarray],
    grads: Sequence[Sequence[np.ndarray]],
    dtype: str,
    jit: bool = True,
    final_state: list | None = None,
    grad_to_jax: Callable[[int, object], object] | None = None,
) -> list[list[np.ndarray]]:
    """Parameters after each ``update`` + ``apply_updates`` fed ``grads``.

    When ``final_state`` is a list, the transform's state after the last step is
    appended to it (to compare with torch's ``optimizer.state``). ``grad_to_jax``
    is ``torch_trajectory``'s ``grad_to_torch`` for this side.
    """
    if grad_to_jax is None:
        grad_to_jax = lambda i, g: to_jax(g, dtype)
    leaves = [to_jax(p, dtype) for p in params]
    state = tx.init(leaves)

    def step(leaves, state, step_grads):
        updates, state = tx.update(step_grads, state, leaves)
        return fo.apply_updates(leaves, updates), state

    step = jax.jit(step) if jit else step
    out = []
    for step_grads in grads:
        step_grads = [grad_to_jax(i, g) for i, g in enumerate(step_grads)]
        leaves, state = step(leaves, state, step_grads)
        out.append([to_numpy(p) for p in leaves])
    if final_state is not None:
        final_state.append(state)
    return out


def assert_trajectories_close(actual, expected, dtype: str, scale=1.0) -> float:
    """Assert step by step closeness; returns the largest absolute difference."""
    rtol, atol = TOLERANCE[dtype]
    worst = 0.0
    for k, (a_step, e_step) in enumerate(zip(actual, expected, strict=True)):
        for i, (a, e) in enumerate(zip(a_step, e_step, strict=True)):
            assert a.shape == e.shape, (k, i, a.shape, e.shape)
            np.testing.assert_allclose(
                a,
                e,
                rtol=rtol * scale,
                atol=atol * scale,
                err_msg=f"step {k + 1}, leaf {i} (shape {e.shape}), {dtype}",
            )
            if a.size:
                worst = max(worst, float(np.max(np.abs(a - e))))
    return worst


# --- whole parity runs and error comparisons, shared by the algorithm tests -------


def as_torch_options(options: dict, reset: dict | None = None) -> dict:
    """``options`` for torch's constructor: JAX arrays become tensors, and each flag
    of ``reset`` that ``options`` sets is put back to ``reset``'s value (flags that
    only pick an implementation torch cannot run, or runs differently, on CPU)."""
    converted = {
        k: torch.tensor(np.asarray(v)) if isinstance(v, jax.Array) else v
        for k, v in options.items()
    }
    return converted | {k: v for k, v in (reset or {}).items() if options.get(k)}


def _leaf_entry(ours, name: str, i: int):
    """Leaf ``i``'s entry ``name`` of a functional state (``count`` for torch's
    ``step``; a scalar entry, kept once, for every leaf)."""
    if name == "step":
        return ours.count
    value = getattr(ours, name)
    if value is None or isinstance(value, jax.Array):
        return value
    return value[i]


def assert_state_matches_torch(
    state_names, ours, torch_optimizer, tensors, dtype: str, skip=()
) -> None:
    """Our state equals torch's ``optimizer.state``, entry by entry, in its order.

    ``ours`` is a transform's functional state (a NamedTuple: ``count``, then
    torch's names) for params given as a list: ``ours.<name>[i]`` is leaf ``i``'s
    entry, None where torch creates no such entry; scalar entries are kept once.
    """
    rtol, atol = TOLERANCE[dtype]
    assert ours._fields[0] == "count" and ours.count.dtype == jnp.int32
    # This library counts steps for every algorithm; torch keeps ``step`` only
    # where ``state_names`` lists it (not for SGD or Muon).
    assert list(ours._fields[1:]) == [n for n in state_names if n != "step"], (
        ours._fields,
        state_names,
    )
    for i, tensor in enumerate(tensors):
        theirs = torch_optimizer.state[tensor]
        created = [n for n in state_names if _leaf_entry(ours, n, i) is not None]
        assert list(theirs) == created, i
        for name in created:
            if name in skip:
                continue
            actual = to_numpy(_leaf_entry(ours, name, i))
            expected = to_numpy(theirs[name])
            assert actual.shape == expected.shape, (name, i)
            # One rounding difference in a bfloat16 state entry is an ulp of its
            # largest element, which may be well above 1.
            magnitude = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
            np.testing.assert_allclose(
                actual,
                expected,
                rtol=rtol,
                atol=atol * magnitude,
                err_msg=f"{name}, leaf {i}",
            )


def parity_run(
    tx: fo.GradientTransformation,
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    state_names,
    params: Sequence[np.ndarray],
    grads: Sequence[Sequence[np.ndarray]],
    dtype: str,
    jit: bool = True,
    skip_state=(),
    grad_to_torch=None,
    grad_to_jax=None,
) -> float:
    """torch and ``tx`` side by side from ``params`` fed ``grads``: the parameters
    after every step and the final state agree. Returns the largest parameter
    difference. ``grad_to_torch`` / ``grad_to_jax``: see ``torch_trajectory``."""
    created = []

    def make(tensors):
        created.append((make_optimizer(tensors), tensors))
        return created[-1][0]

    expected = torch_trajectory(make, params, grads, dtype, grad_to_torch)
    final_state = []
    actual = functional_trajectory(
        tx, params, grads, dtype, jit, final_state, grad_to_jax
    )
    worst = assert_trajectories_close(actual, expected, dtype)
    ((optimizer, tensors),) = created
    assert_state_matches_torch(
        state_names, final_state[0], optimizer, tensors, dtype, skip_state
    )
    return worst


def assert_same_error(torch_run: Callable[[], object], our_run: Callable[[], object]):
    """Both raise, the same exception type with the same message."""

    def first_error(run):
        try:
            run()
        except Exception as e:  # noqa: BLE001 - the point is which exception
            return e
        raise AssertionError(f"{run.__name__} raised no exception")

    theirs, ours = first_error(torch_run), first_error(our_run)
    assert type(ours) is type(theirs), (ours, theirs)
    assert str(ours) == str(theirs)


def scale_lr_after_each_step(optimizer, factor: float):
    """Make ``optimizer.step()`` multiply every group's lr by ``factor`` after the
    step: torch's side of the schedule ``count -> lr * factor ** count``."""
    original_step = optimizer.step

    def step(*args, **kwargs):
        loss = original_step(*args, **kwargs)
        for group in optimizer.param_groups:
            group["lr"] *= factor
        return loss

    optimizer.step = step
    return optimizer


# --- torch's spread: results that depend on the machine torch runs on -------------

_aten = torch.ops.aten
_CORRECTED = (_aten.sqrt, _aten.sqrt_, _aten.pow, _aten.pow_)
_SQRT = (_aten.sqrt.default, _aten.sqrt_.default)
_POW_SCALAR_EXPONENT = (_aten.pow.Tensor_Scalar, _aten.pow_.Scalar)


def _correctly_rounded(func, args, kwargs) -> np.ndarray | None:
    """``func(*args, **kwargs)`` correctly rounded, for a float32 or float64 sqrt
    and a float32 pow; None for the ops :class:`CorrectlyRounded` leaves to torch
    (a float64 pow, which no wider NumPy dtype can round)."""
    if func.overloadpacket not in _CORRECTED:
        return None
    dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor)}
    values = [a.detach().numpy() if isinstance(a, torch.Tensor) else a for a in args]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if func in _SQRT and dtypes <= {torch.float32, torch.float64} and not kwargs:
            return np.sqrt(values[0])  # IEEE 754: correctly rounded in any dtype
        if dtypes != {torch.float32}:
            return None
        # pow in float64, whose error is far below half a float32 ulp, rounded
        # once to float32
        if func in _POW_SCALAR_EXPONENT and not kwargs:
            base, exponent = values
            return (base.astype(np.float64) ** float(exponent)).astype(np.float32)
        if func is _aten.pow.Scalar and not kwargs:
            base, exponent = values  # a Python base, which torch rounds to float32
            wide = np.float64(np.float32(base))
            return (wide ** exponent.astype(np.float64)).astype(np.float32)
    raise NotImplementedError(f"CorrectlyRounded does not correct {func} {dtypes}")


class CorrectlyRounded(TorchDispatchMode):
    """torch with its real sqrt and its float32 pow correctly rounded: the result
    torch gives on a machine whose kernels round them so.

    torch's own sqrt is not correctly rounded on every machine: torch 2.13 on an
    AVX-512 AMD EPYC rounds about a fifth of its float32 square roots one ulp off,
    under every ATEN_CPU_CAPABILITY (``sqrt(0.0039939284f)`` gives 0.0631975308,
    where IEEE 754, NumPy and XLA give 0.0631975383). Its float32 pow of a scalar
    tensor is that sqrt for an exponent of 0.5, and otherwise (here) a float64 pow
    rounded to float32: ASGD's capturable path, whose only such op it is, was
    reported to drift on that machine too. In a float64 run with torch's float32
    scalars (``capturable=True``, float32 tensor hyperparameters) one such ulp moves
    the parameters by ~1e-10. XLA's sqrt is correctly rounded on every machine.
    """

    def adjust(self, func, result: np.ndarray) -> np.ndarray:
        """What this mode returns for ``func``'s correctly rounded ``result``:
        itself. A subclass simulating a machine that rounds otherwise moves it."""
        return result

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        exact = _correctly_rounded(func, args, kwargs)
        if exact is None:
            return func(*args, **kwargs)
        result = torch.from_numpy(np.asarray(self.adjust(func, exact)))
        if func.overloadpacket in (_aten.sqrt_, _aten.pow_):
            return args[0].copy_(result)
        return result


# The machines whose results a torch run stands for: this one, and one whose torch
# rounds its sqrt and pow correctly.
MACHINES: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "as torch runs here": contextlib.nullcontext,
    "with sqrt and pow correctly rounded": CorrectlyRounded,
}

T = TypeVar("T")


def torch_spread(
    run: Callable[[], T],
    machines: Mapping[str, Callable[[], contextlib.AbstractContextManager]] = MACHINES,
) -> dict[str, T]:
    """``run()`` (a torch run) under each of ``machines``, by name: the results
    torch gives, each on some machine."""
    results = {}
    for name, machine in machines.items():
        with machine():
            results[name] = run()
    return results


def assert_close_to_one_of(actual, candidates: Mapping[str, list], rtol, atol) -> str:
    """``actual`` (the parameters after each step) is close at every step to one of
    ``candidates`` (torch's trajectories by :func:`torch_spread`), within
    ``rtol``/``atol`` as it stands: a result torch gives on some machine. Returns
    that candidate's name."""
    mismatches = []
    for name, expected in candidates.items():
        try:
            for k, (a, e) in enumerate(zip(actual, expected, strict=True)):
                np.testing.assert_allclose(
                    a, e, rtol=rtol, atol=atol, err_msg=f"step {k + 1}"
                )
        except AssertionError as error:
            mismatches.append(f"against torch {name}:{error}")
        else:
            return name
    raise AssertionError("\n".join(mismatches))

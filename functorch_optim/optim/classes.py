"""The registry of algorithms: each one's torch-named class (``fo.Adam``, ...), with
its functional and state type.

An algorithm is registered here, once: its module's imports, its facade class and
its names in ``__all__``, which the package's ``__all__`` extends (``fo.adam``,
``fo.AdamState`` and ``fo.Adam`` come from this list) and :func:`registered` reads
(the demo's choices). tests/test_registry_lists.py checks the lists written
elsewhere against it.

Each class is written out, for readers, type checkers and "go to definition":
torch's constructor signature, names, order, defaults and annotations (``Tensor``
read as ``Array``), over the shared :class:`Optimizer`. It holds no logic of its
own: its :class:`~functorch_optim.rule.Algorithm` fills, checks and validates the
options, and the defaults are the functional's (``fo.adam``'s), which
tests/test_types.py checks the signature against. :func:`optimizer_class` makes
such a class for an algorithm of your own.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from ..algorithms import adadelta as _adadelta
from ..algorithms import adafactor as _adafactor
from ..algorithms import adagrad as _adagrad
from ..algorithms import adam as _adam
from ..algorithms import adamax as _adamax
from ..algorithms import asgd as _asgd
from ..algorithms import muon as _muon
from ..algorithms import nadam as _nadam
from ..algorithms import radam as _radam
from ..algorithms import rmsprop as _rmsprop
from ..algorithms import rprop as _rprop
from ..algorithms import sgd as _sgd
from ..algorithms import sparse_adam as _sparse_adam
from ..algorithms.adadelta import AdadeltaState, adadelta
from ..algorithms.adafactor import AdafactorState, adafactor
from ..algorithms.adagrad import AdagradState, adagrad
from ..algorithms.adam import AdamState, AdamWState, adam, adamw
from ..algorithms.adamax import AdamaxState, adamax
from ..algorithms.asgd import ASGDState, asgd
from ..algorithms.muon import MuonState, muon
from ..algorithms.nadam import NAdamState, nadam
from ..algorithms.radam import RAdamState, radam
from ..algorithms.rmsprop import RMSpropState, rmsprop
from ..algorithms.rprop import RpropState, rprop
from ..algorithms.sgd import SGDState, sgd
from ..algorithms.sparse_adam import SparseAdamState, sparse_adam
from ..rule import Algorithm, Array, Options
from .optimizer import Optimizer

OptimizerClass = TypeVar("OptimizerClass", bound=type[Optimizer])

# What a constructor's locals() hold besides its options: the `__class__` cell is
# there because the constructor calls super().
_NOT_OPTIONS = frozenset({"self", "params", "__class__"})


def _options(algorithm: Algorithm, arguments: Mapping[str, Any]) -> Options:
    """The validated options of a constructor called with ``arguments`` (its
    ``locals()``): the algorithm fills, checks and validates them, as the
    functional's do."""
    return algorithm.options(
        {name: value for name, value in arguments.items() if name not in _NOT_OPTIONS}
    )


def _documented(cls: OptimizerClass) -> OptimizerClass:
    """``cls`` with its functional's docstring appended: the math and the options
    are written once, on the functional."""
    functional = cls.algorithm.functional
    doc = inspect.getdoc(functional)
    assert doc is not None, f"{functional.__name__} has no docstring"
    cls.__doc__ = (
        f"{(cls.__doc__ or '').rstrip()}\n\n"
        f"    The algorithm, as ``fo.{functional.__name__}`` documents it:\n\n    "
        + doc.replace("\n", "\n    ")
    )
    return cls


def optimizer_class(algorithm: Algorithm) -> type[Optimizer]:
    """The torch-named :class:`Optimizer` subclass running ``algorithm``, for an
    algorithm of your own (this library's classes are written out below).

    Its constructor is ``(params, <the functional's signature>)``: torch's keyword
    names, order, keyword-only markers and defaults, taken from
    ``algorithm.functional`` so they are written once. torch's other facts about
    the algorithm (state at construction, ``step`` as a tensor, checks on the
    params) are read from ``algorithm`` itself.
    """
    signature = inspect.signature(algorithm.functional)

    def __init__(self, params, *args, **kwargs):
        given = signature.bind(*args, **kwargs).arguments
        Optimizer.__init__(self, params, algorithm.options(given))

    params = inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    # inspect reads a function's __signature__, which typeshed does not declare
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_, params, *signature.parameters.values()],
        return_annotation=None,
    )
    functional = f"{algorithm.functional.__module__}.{algorithm.functional.__name__}"
    doc = (
        f"``torch.optim.{algorithm.name}`` over JAX arrays: the stateful form of "
        f":func:`{functional}` (see :class:`Optimizer`)."
    )
    return _documented(
        type(
            algorithm.name,
            (Optimizer,),
            {
                "__init__": __init__,
                "__doc__": doc,
                "__module__": algorithm.functional.__module__,
                "algorithm": algorithm,
            },
        )
    )


@_documented
class ASGD(Optimizer):
    """``torch.optim.ASGD`` over JAX arrays: the stateful form of
    :func:`functorch_optim.asgd` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.ASGD(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _asgd.ASGD

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class Adadelta(Optimizer):
    """``torch.optim.Adadelta`` over JAX arrays: the stateful form of
    :func:`functorch_optim.adadelta` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.Adadelta(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _adadelta.ADADELTA

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class Adafactor(Optimizer):
    """``torch.optim.Adafactor`` over JAX arrays: the stateful form of
    :func:`functorch_optim.adafactor` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.Adafactor(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _adafactor.ADAFACTOR

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class Adagrad(Optimizer):
    """``torch.optim.Adagrad`` over JAX arrays: the stateful form of
    :func:`functorch_optim.adagrad` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.Adagrad(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _adagrad.ADAGRAD

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class Adam(Optimizer):
    """``torch.optim.Adam`` over JAX arrays: the stateful form of
    :func:`functorch_optim.adam` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.Adam(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _adam.ADAM

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-3,
        betas: tuple[float | Array, float | Array] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class AdamW(Optimizer):
    """``torch.optim.AdamW`` over JAX arrays: the stateful form of
    :func:`functorch_optim.adamw` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.AdamW(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _adam.ADAMW

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-3,
        betas: tuple[float | Array, float | Array] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class Adamax(Optimizer):
    """``torch.optim.Adamax`` over JAX arrays: the stateful form of
    :func:`functorch_optim.adamax` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.Adamax(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _adamax.ADAMAX

    def __init__(
        self,
        params: Any,
        lr: float | Array = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class Muon(Optimizer):
    """``torch.optim.Muon`` over JAX arrays: the stateful form of
    :func:`functorch_optim.muon` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.Muon(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _muon.MUON

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (
            _muon.DEFAULT_A,
            _muon.DEFAULT_B,
            _muon.DEFAULT_C,
        ),
        eps: float = _muon.EPS,
        ns_steps: int = _muon.DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class NAdam(Optimizer):
    """``torch.optim.NAdam`` over JAX arrays: the stateful form of
    :func:`functorch_optim.nadam` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.NAdam(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _nadam.NADAM

    def __init__(
        self,
        params: Any,
        lr: float | Array = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class RAdam(Optimizer):
    """``torch.optim.RAdam`` over JAX arrays: the stateful form of
    :func:`functorch_optim.radam` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.RAdam(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _radam.RADAM

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class RMSprop(Optimizer):
    """``torch.optim.RMSprop`` over JAX arrays: the stateful form of
    :func:`functorch_optim.rmsprop` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.RMSprop(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _rmsprop.RMSPROP

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class Rprop(Optimizer):
    """``torch.optim.Rprop`` over JAX arrays: the stateful form of
    :func:`functorch_optim.rprop` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.Rprop(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _rprop.RPROP

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class SGD(Optimizer):
    """``torch.optim.SGD`` over JAX arrays: the stateful form of
    :func:`functorch_optim.sgd` (see :class:`Optimizer`).

    Example:
      >>> opt = fo.SGD(params)
      >>> opt.step(jax.grad(loss)(opt.params))
    """

    algorithm = _sgd.SGD

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Array = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


@_documented
class SparseAdam(Optimizer):
    """``torch.optim.SparseAdam`` over JAX arrays: the stateful form of
    :func:`functorch_optim.sparse_adam` (see :class:`Optimizer`).

    Example:
      >>> from jax.experimental import sparse
      >>> opt = fo.SparseAdam({"embedding": table})
      >>> ids = jnp.array([3, 1, 3])          # rows looked up, with a repeat
      >>> grad = sparse.BCOO((row_grads, ids[:, None]), shape=table.shape)
      >>> opt.step({"embedding": grad})
    """

    algorithm = _sparse_adam.SPARSE_ADAM

    def __init__(
        self,
        params: Any,
        lr: float | Array = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, _options(self.algorithm, locals()))


# The registry: every algorithm's facade class, functional and state type, which
# the package exports.
__all__ = [
    "Adadelta",
    "AdadeltaState",
    "adadelta",
    "Adafactor",
    "AdafactorState",
    "adafactor",
    "Adagrad",
    "AdagradState",
    "adagrad",
    "Adam",
    "AdamW",
    "AdamState",
    "AdamWState",
    "adam",
    "adamw",
    "Adamax",
    "AdamaxState",
    "adamax",
    "ASGD",
    "ASGDState",
    "asgd",
    "Muon",
    "MuonState",
    "muon",
    "NAdam",
    "NAdamState",
    "nadam",
    "RAdam",
    "RAdamState",
    "radam",
    "RMSprop",
    "RMSpropState",
    "rmsprop",
    "Rprop",
    "RpropState",
    "rprop",
    "SGD",
    "SGDState",
    "sgd",
    "SparseAdam",
    "SparseAdamState",
    "sparse_adam",
]


def registered() -> list[type[Optimizer]]:
    """The registry's facade classes, in its order; each names its algorithm
    (``cls.algorithm``: its functional, state type and torch name)."""
    return [
        value
        for value in map(globals().get, __all__)
        if isinstance(value, type) and issubclass(value, Optimizer)
    ]

"""One torch-named optimizer class per algorithm, made from its ``Algorithm``."""

from __future__ import annotations

import inspect

from ..algorithms import (
    adadelta,
    adafactor,
    adagrad,
    adam,
    adamax,
    asgd,
    muon,
    nadam,
    radam,
    rmsprop,
    rprop,
    sgd,
    sparse_adam,
)
from ..rule import Algorithm
from .optimizer import Optimizer


def optimizer_class(algorithm: Algorithm) -> type[Optimizer]:
    """The torch-named :class:`Optimizer` subclass running ``algorithm``.

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
    functional = algorithm.functional.__name__
    functional_doc = inspect.getdoc(algorithm.functional)
    assert functional_doc is not None, f"{functional} has no docstring"
    doc = (
        f"``torch.optim.{algorithm.name}`` over JAX arrays: the stateful form of "
        f":func:`functorch_optim.{functional}` (see :class:`Optimizer`).\n\n"
        f"    Example:\n"
        f"      >>> opt = fo.{algorithm.name}(params)\n"
        f"      >>> opt.step(jax.grad(loss)(opt.params))\n\n"
        f"    The algorithm, as ``fo.{functional}`` documents it:\n\n    "
        + functional_doc.replace("\n", "\n    ")
    )
    return type(
        algorithm.name,
        (Optimizer,),
        {
            "__init__": __init__,
            "__doc__": doc,
            "__module__": "functorch_optim",
            "algorithm": algorithm,
        },
    )


ASGD = optimizer_class(asgd.ASGD)
Adadelta = optimizer_class(adadelta.ADADELTA)
Adafactor = optimizer_class(adafactor.ADAFACTOR)
Adagrad = optimizer_class(adagrad.ADAGRAD)
Adam = optimizer_class(adam.ADAM)
AdamW = optimizer_class(adam.ADAMW)
Adamax = optimizer_class(adamax.ADAMAX)
Muon = optimizer_class(muon.MUON)
NAdam = optimizer_class(nadam.NADAM)
RAdam = optimizer_class(radam.RADAM)
RMSprop = optimizer_class(rmsprop.RMSPROP)
Rprop = optimizer_class(rprop.RPROP)
SGD = optimizer_class(sgd.SGD)
SparseAdam = optimizer_class(sparse_adam.SPARSE_ADAM)

"""Types: the facade classes are written out, their signatures are their
functionals', and the public signatures carry the annotations type checkers read.

The README's and the docs' code is type-checked as a user's script,
tests/typing/readme_usage.py, by mypy and pyright in CI (``.ci/run``); here it runs.
"""

from __future__ import annotations

import inspect
import runpy
import typing
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import torch

import functorch_optim as fo
from functorch_optim import optim
from functorch_optim.lbfgs import facade as lbfgs_optimizer
from functorch_optim.lbfgs import iteration as lbfgs_iteration
from functorch_optim.optim import classes
from functorch_optim.rule import Hyperparameter, StaticDefault

FACADE = sorted(
    name
    for name in fo.__all__
    if isinstance(getattr(fo, name), type)
    and issubclass(getattr(fo, name), fo.Optimizer)
    and name != "Optimizer"
)
# The classes of functorch_optim/optim/classes.py; L-BFGS's is written out in
# functorch_optim/lbfgs/facade.py, its functional's annotations are checked apart.
WRITTEN_OUT = [name for name in FACADE if name != "LBFGS"]
# Integer options that are counts, not float hyperparameters.
COUNTS = {"ns_steps"}


@pytest.mark.parametrize("name", FACADE)
def test_facade_class_has_source(name):
    # "go to definition" and inspect.getsource land on the class statement
    cls = getattr(fo, name)
    module = lbfgs_optimizer if name == "LBFGS" else classes
    assert inspect.getsourcefile(cls) == module.__file__
    assert f"class {name}(Optimizer):" in inspect.getsource(cls).splitlines()
    assert "__signature__" not in vars(cls.__init__)


def _unwrapped(default):
    return default.value if isinstance(default, StaticDefault) else default


def _described(signature: inspect.Signature) -> list:
    """Names, kinds and defaults, with their types (a default 0 stays an int, as
    torch branches on it)."""
    return [
        (p.name, p.kind, type(_unwrapped(p.default)), _unwrapped(p.default))
        for p in signature.parameters.values()
    ]


@pytest.mark.parametrize("name", FACADE)
def test_facade_signature_is_the_functionals(name):
    """``(self, params, <the functional's parameters>)``, in order."""
    cls = getattr(fo, name)
    functional = inspect.signature(cls.algorithm.functional).parameters.values()
    self_and_params = [
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for n in ("self", "params")
    ]
    assert _described(inspect.signature(cls.__init__)) == _described(
        inspect.Signature([*self_and_params, *functional])
    )


def test_optimizer_class_makes_the_written_out_constructor():
    """``optimizer_class``, for an algorithm of one's own, gives the constructor
    this library writes out."""
    made = optim.optimizer_class(fo.Adam.algorithm)
    assert _described(inspect.signature(made)) == _described(inspect.signature(fo.Adam))
    params = {"w": jnp.ones(3)}
    assert made(params, lr=0.5).defaults == fo.Adam(params, lr=0.5).defaults


def _formatted(annotation) -> str:
    """The annotation as text, torch's ``Tensor`` and JAX's ``Array`` both ``Array``."""
    return (
        inspect.formatannotation(annotation)
        .replace(inspect.formatannotation(jax.Array), "Array")
        .replace("torch.Tensor", "Array")
    )


@pytest.mark.parametrize("name", FACADE)
def test_facade_annotations_are_torchs(name):
    """torch's annotations, ``Tensor`` read as ``Array`` (``params``: any of the
    facade's forms)."""
    ours = typing.get_type_hints(getattr(fo, name).__init__)
    theirs = typing.get_type_hints(getattr(torch.optim, name).__init__)
    del theirs["params"]
    assert ours.pop("params") is typing.Any
    assert {k: _formatted(v) for k, v in ours.items()} == {
        k: _formatted(v) for k, v in theirs.items()
    }


@pytest.mark.parametrize("name", WRITTEN_OUT)
def test_functional_annotations(name):
    """Every parameter annotated; a numeric one a float, JAX scalar or schedule
    (never ``int`` inferred from a default 0); ``init`` typed by the state."""
    algorithm = getattr(fo, name).algorithm
    hints = typing.get_type_hints(algorithm.functional)
    parameters = inspect.signature(algorithm.functional).parameters
    assert set(hints) == {*parameters, "return"}
    assert hints["return"] == fo.GradientTransformation[algorithm.state_type]
    for option, p in parameters.items():
        default = _unwrapped(p.default)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert hints[option] == (int if option in COUNTS else Hyperparameter)


def test_lbfgs_functional_annotations():
    """``fo.lbfgs``: torch's ``LBFGS`` annotations (``lr`` a float or JAX scalar,
    not a schedule; the counts ints), ``init`` typed by its state."""
    hints = typing.get_type_hints(fo.lbfgs)
    theirs = typing.get_type_hints(torch.optim.LBFGS.__init__)
    del theirs["params"], theirs["return"]
    assert hints.pop("return") == fo.GradientTransformation[lbfgs_iteration.LBFGSState]
    assert {k: _formatted(v) for k, v in hints.items()} == {
        k: _formatted(v) for k, v in theirs.items()
    }
    torchs = inspect.signature(torch.optim.LBFGS.__init__).parameters
    ours = inspect.signature(fo.lbfgs).parameters
    assert {k: p.default for k, p in ours.items()} == {
        k: p.default for k, p in torchs.items() if k not in ("self", "params")
    }


def test_readme_usage_runs():
    """The typed README script the checkers read also runs as written."""
    path = Path(__file__).parent / "typing" / "readme_usage.py"
    runpy.run_path(str(path), run_name="__main__")

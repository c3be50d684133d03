"""Every list of the algorithms is the registry's or is checked against it.

The registry is ``functorch_optim/optim/classes.py``: each algorithm's facade class,
functional and state type, exported by its ``__all__`` (which the package's
``__all__`` extends, and the demo's choices are read from). The lists written by
hand elsewhere, for readers, are checked here, so a new algorithm missing from
one fails instead of going stale.
"""

from __future__ import annotations

import pathlib
import re

import functorch_optim as fo
from functorch_optim import demo
from functorch_optim.optim import classes

ROOT = pathlib.Path(__file__).resolve().parent.parent
REGISTERED = classes.registered()
ALGORITHMS = [cls.algorithm for cls in REGISTERED]


def test_registry_exports_each_algorithm_whole():
    # each registered class with its functional and state type, and nothing else
    expected = set()
    for cls in REGISTERED:
        expected |= {cls, cls.algorithm.functional, cls.algorithm.state_type}
    exported = [getattr(classes, name) for name in classes.__all__]
    assert set(exported) == expected
    defined = {
        value
        for value in vars(classes).values()
        if isinstance(value, type)
        and issubclass(value, fo.Optimizer)
        and value.__module__ == classes.__name__
    }
    assert defined == set(REGISTERED)
    assert set(classes.__all__) <= set(fo.__all__)


def test_demo_lists_only_registered_algorithms():
    functionals = {a.functional.__name__ for a in ALGORITHMS}
    assert set(demo.TUNED) <= functionals
    assert set(demo.AVAILABLE) <= functionals
    # every dense algorithm of vectors and matrices is a choice (not Muon: matrices)
    assert set(demo.AVAILABLE) == {
        a.functional.__name__ for a in ALGORITHMS if demo.trains_an_mlp(a)
    }
    assert {"sgd", "adam", "rprop"} <= set(demo.AVAILABLE)


def test_from_torch_guide_maps_every_name():
    text = (ROOT / "docs" / "from_torch.rst").read_text()
    mapped = set(re.findall(r"``(\w+)/(\w+)``", text))
    expected = {(a.name, a.functional.__name__) for a in ALGORITHMS}
    assert expected | {("LBFGS", "lbfgs")} == mapped


def test_readme_lists_every_elementwise_algorithm():
    text = (ROOT / "README.md").read_text()
    listed = re.search(r"\(any elementwise\s+algorithm: ([\w,\s]+)\)", text)
    assert listed is not None
    names = {n.strip() for n in listed.group(1).split(",")}
    assert names == {a.functional.__name__ for a in ALGORITHMS if a.elementwise}

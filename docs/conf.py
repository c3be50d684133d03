"""Sphinx configuration of the API reference.

Build it with ``python -m sphinx -W -b html docs docs/_build/html`` (``-W``: a
warning fails the build, as in CI). The API pages under ``docs/api/`` are written
here from the package's public names (a module's ``__all__``, or else the documented
names it defines), so that every public name has its entry; the build then checks
that each one has an entry and a docstring.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import types

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, os.path.abspath(".."))

import functorch_optim as fo  # noqa: E402

project = "functorch_optim"
author = "functorch_optim contributors"
copyright = "functorch_optim contributors"  # noqa: A001
release = version = fo.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
intersphinx_mapping: dict = {}
html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"functorch_optim {release}"
exclude_patterns = ["_build"]
templates_path: list[str] = []
nitpicky = False

# The submodules with a page of their own, in the order of the index. A name a
# page shares with fo's page (the facade classes in optim, say) is a link there.
SUBMODULES = {
    "optim": "The torch-style facade: extension points and compile counter",
    "lbfgs": "L-BFGS: its pieces, torch's state layout and compile counter",
    "lr_scheduler": "Torch-style learning-rate schedulers",
    "schedules": "Functional schedules",
    "swa_utils": "Weight averaging (torch.optim.swa_utils)",
    "interop": "Torch interchange",
    "checkpoint": "Checkpoints",
}
# fo's own names, sorted into the sections of its page by what they are.
SECTIONS = [
    ("functional", "Functional algorithms (optax-style)"),
    ("facade", "Torch-style optimizers"),
    ("states", "Functional states"),
    ("utilities", "Composition, clipping, packing and non-finite steps"),
]


def public_names(module: types.ModuleType) -> list[str]:
    """The module's ``__all__``, or else the non-underscore names it defines."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
        and inspect.getdoc(value)
    ]


def available_submodules() -> dict[str, str]:
    return {
        name: title
        for name, title in SUBMODULES.items()
        if importlib.util.find_spec(f"functorch_optim.{name}") is not None
    }


def top_level_entries() -> set[str]:
    """The names of fo that have their entry on fo's page: all but the modules and
    the schedules (those keep their entries on the schedules page)."""
    schedules = set(public_names(importlib.import_module("functorch_optim.schedules")))
    return {
        name
        for name in fo.__all__
        if not isinstance(getattr(fo, name), types.ModuleType) and name not in schedules
    }


def on_top_level_page(module: types.ModuleType, name: str, top_level: set[str]) -> bool:
    """``module.name`` is one of fo's names with its entry on fo's page."""
    return name in top_level and getattr(fo, name) is getattr(module, name)


def section_of(name: str, value: object) -> str:
    if isinstance(value, type) and issubclass(value, fo.Optimizer):
        return "facade"
    if isinstance(value, type) and hasattr(value, "_fields"):
        return "states"
    module = getattr(value, "__module__", "")
    if callable(value) and module.startswith(
        ("functorch_optim.algorithms.", "functorch_optim.lbfgs")
    ):
        return "functional"
    return "utilities"


def directive(qualified: str, value: object) -> str:
    if isinstance(value, type):
        options = "   :members:\n   :show-inheritance:\n"
        if hasattr(value, "_fields"):
            options = ""  # a NamedTuple: its docstring lists the fields
        elif issubclass(value, fo.Optimizer) and value is not fo.Optimizer:
            options = "   :show-inheritance:\n"  # methods: see Optimizer
        return f".. autoclass:: {qualified}\n{options}"
    if callable(value):
        return f".. autofunction:: {qualified}\n"
    return f".. autodata:: {qualified}\n"


def write_api_pages(app) -> None:
    """Write ``api/*.rst``: fo's names by section, then one page per submodule."""
    out = os.path.join(app.srcdir, "api")
    os.makedirs(out, exist_ok=True)
    submodules = available_submodules()
    schedule_names = set(
        public_names(importlib.import_module("functorch_optim.schedules"))
    )
    by_section: dict[str, list[str]] = {key: [] for key, _ in SECTIONS}
    re_exported = []
    for name in fo.__all__:
        value = getattr(fo, name)
        if isinstance(value, types.ModuleType):
            continue
        if name in schedule_names:
            re_exported.append(name)
            continue
        by_section[section_of(name, value)].append(name)

    lines = [
        "functorch_optim",
        "===============",
        "",
        ".. module:: functorch_optim",
        "",
        "``import functorch_optim as fo``. Lowercase names are optax-style",
        "gradient transformations; torch's class names are the stateful optimizers.",
        "",
    ]
    for key, title in SECTIONS:
        lines += [title, "-" * len(title), ""]
        for name in by_section[key]:
            lines.append(directive(f"functorch_optim.{name}", getattr(fo, name)))
    if re_exported:
        title = "Schedules at top level"
        lines += [
            title,
            "-" * len(title),
            "",
            "These are :mod:`functorch_optim.schedules`' schedules, also importable",
            "as ``fo.<name>``:",
            "",
        ]
        lines += [
            f"- :func:`fo.{n} <functorch_optim.schedules.{n}>`" for n in re_exported
        ]
        lines.append("")
    _write(os.path.join(out, "functorch_optim.rst"), lines)

    top_level = top_level_entries()
    for name, title in submodules.items():
        module = importlib.import_module(f"functorch_optim.{name}")
        heading = f"functorch_optim.{name}: {title}"
        lines = [heading, "=" * len(heading), "", f".. automodule:: {module.__name__}"]
        if getattr(fo, name) is not module:
            # fo.lbfgs is the transform: its entry on fo's page has this name
            lines.append("   :no-index:")
        lines.append("")
        shared = []
        for member in public_names(module):
            if on_top_level_page(module, member, top_level):
                shared.append(member)
                continue
            lines.append(
                directive(f"{module.__name__}.{member}", getattr(module, member))
            )
        if shared:
            lines += [
                "Also in this package, with their entries on fo's page: "
                + ", ".join(f":obj:`fo.{n} <functorch_optim.{n}>`" for n in shared)
                + ".",
                "",
            ]
        _write(os.path.join(out, f"{name}.rst"), lines)

    index = [
        "API reference",
        "=============",
        "",
        ".. toctree::",
        "",
        "   functorch_optim",
    ]
    index += [f"   {name}" for name in submodules]
    _write(os.path.join(out, "index.rst"), index)


def _write(path: str, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    try:
        with open(path) as f:
            if f.read() == text:
                return  # unchanged: Sphinx keeps its cached pages
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)


def check_coverage(app, env) -> None:
    """Every public name of fo and of each submodule has an entry and a docstring."""
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    documented = set(env.get_domain("py").objects)
    expected = {
        f"functorch_optim.{n}": getattr(fo, n)
        for n in fo.__all__
        if not isinstance(getattr(fo, n), types.ModuleType)
    }
    top_level = top_level_entries()
    for name in available_submodules():
        module = importlib.import_module(f"functorch_optim.{name}")
        for n in public_names(module):
            if not on_top_level_page(module, n, top_level):  # fo's entry is its entry
                expected[f"{module.__name__}.{n}"] = getattr(module, n)
    schedules = set(public_names(importlib.import_module("functorch_optim.schedules")))
    for qualified, value in expected.items():
        short = qualified.rsplit(".", 1)[1]
        if not inspect.getdoc(value):
            logger.warning("public name %s has no docstring", qualified)
        if qualified in documented:
            continue
        if qualified.count(".") == 1 and short in schedules:
            continue  # re-exported schedule: documented in functorch_optim.schedules
        logger.warning("public name %s has no entry in the API reference", qualified)


def drop_type_docstring(app, what, name, obj, options, lines) -> None:
    """A constant's entry shows its value, not its type's docstring (a tuple's
    "Built-in immutable sequence"), which autodoc takes when the constant has no
    ``#:`` comment."""
    if what == "data" and lines and inspect.getdoc(obj) == inspect.getdoc(type(obj)):
        lines.clear()


def recipe_section(text: str, name: str) -> list[str]:
    """The lines between ``# [name]`` and ``# [/name]`` of a recipe's source."""
    start, end = f"# [{name}]\n", f"# [/{name}]\n"
    if start not in text or end not in text:
        raise ValueError(f"no section [{name}]")
    return text.split(start, 1)[1].split(end, 1)[0].splitlines()


class RecipeDiff(SphinxDirective):
    """``.. recipe-diff:: recipes/nanogpt.py torch facade``: the lines a port
    changes, as a diff of two sections of a recipe (docs/recipes), so the page
    shows the code tests/test_recipes.py runs."""

    required_arguments = 3

    def run(self) -> list[nodes.Node]:
        path, old, new = self.arguments
        relative, filename = self.env.relfn2path(path)
        self.env.note_dependency(relative)
        with open(filename) as f:
            text = f.read()
        try:
            before, after = recipe_section(text, old), recipe_section(text, new)
        except ValueError as error:
            raise self.error(f"{path}: {error}") from None
        diff = "\n".join(
            list(difflib.unified_diff(before, after, lineterm="", n=1))[2:]
        )
        block = nodes.literal_block(diff, diff, language="diff")
        self.set_source_info(block)
        return [block]


def setup(app):
    app.add_directive("recipe-diff", RecipeDiff)
    app.connect("builder-inited", write_api_pages)
    app.connect("autodoc-process-docstring", drop_type_docstring)
    app.connect("env-updated", check_coverage)

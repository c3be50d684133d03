"""The package's layout: its import graph keeps the layers, and BUILD.md names it.

Read from the sources (``ast``), without importing them: every ``import`` of a
``functorch_optim`` module is an edge, at module level, inside a function or under
``if TYPE_CHECKING:`` (an import for the type checker alone is still a dependency
on that module: a cycle there is a cycle in the design). A module may import
modules of its own layer or below (``LAYERS``, declared once, top-down); an import
from a lower layer to a higher one, or a cycle between modules, fails.
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "functorch_optim"

# Top-down; a name is a module or a package (all its modules). Each module imports
# only modules of its own layer or of the layers below it.
LAYERS = [
    ("functorch_optim", "functorch_optim.__main__", "functorch_optim.demo"),
    (
        "functorch_optim.optim",
        "functorch_optim.lbfgs",
        "functorch_optim.swa_utils",
        "functorch_optim.checkpoint",
    ),
    (
        "functorch_optim.lr_scheduler",
        "functorch_optim.schedules",
        "functorch_optim.plateau",
        "functorch_optim.schedule_math",
    ),
    ("functorch_optim.algorithms",),
    ("functorch_optim.packing",),
    (
        "functorch_optim.functional",
        "functorch_optim.interop",
        "functorch_optim.param_groups",
    ),
    ("functorch_optim.torch_format",),
    ("functorch_optim.runner",),
    ("functorch_optim.kernels", "functorch_optim.doubled"),
    ("functorch_optim.rule",),
    (
        "functorch_optim.core",
        "functorch_optim.checks",
        "functorch_optim.names",
        "functorch_optim.grouping",
        "functorch_optim.sharding",
        "functorch_optim.clipping",
        "functorch_optim.nonfinite",
    ),
]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The package's modules that module ``name`` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` imports the module x; `from .x import y`, module x
            submodules = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules or {target}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {t for t in found if t in MODULES and t != name}


GRAPH = {name: imports(name) for name in MODULES}


def layer_of(name: str) -> int:
    """The index in LAYERS of the longest declared name that contains ``name``."""
    best = max(
        (
            (len(declared), index)
            for index, layer in enumerate(LAYERS)
            for declared in layer
            if name == declared or name.startswith(declared + ".")
        ),
        default=None,
    )
    assert best is not None, f"{name} is in no layer of LAYERS"
    return best[1]


def upward_imports() -> list[str]:
    return [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if layer_of(target) < layer_of(name)
    ]


def cycles() -> list[list[str]]:
    """One cycle per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(name: str) -> None:  # Tarjan's algorithm
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in GRAPH[name]:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    return found


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_import_runs_up_the_layers():
    assert upward_imports() == []


def test_no_import_cycle():
    assert cycles() == []


def test_imports_for_the_type_checker_are_edges():
    # the package imports its lazy submodules under `if TYPE_CHECKING:` only
    lazy = {"functorch_optim.checkpoint", "functorch_optim.swa_utils"}
    assert lazy <= GRAPH["functorch_optim"]


def layout_block() -> str:
    """The code block of BUILD.md's "Layout" section."""
    text = (ROOT / "BUILD.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```\n", 2)[1]


def test_build_md_layout_names_the_tree():
    """The layout block names every top-level module and every package of the tree
    (a package's own line starts with its folder), and every module it names exists.
    The modules of algorithms/ are the algorithms, listed by the registry instead."""
    block = layout_block()
    folders = set(re.findall(r"^  (\w+)/", block, flags=re.MULTILINE))
    files = set(re.findall(r"\b(\w+\.py)\b", block))
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    top_level = {p.name for p in PACKAGE.glob("*.py")}
    in_tree = {p.name for p in PACKAGE.rglob("*.py")}
    assert folders ^ packages == set(), (
        f"packages in the tree, not in BUILD.md: {sorted(packages - folders)}; "
        f"in BUILD.md, not in the tree: {sorted(folders - packages)}"
    )
    assert top_level - files == set(), f"unnamed: {sorted(top_level - files)}"
    assert files - in_tree == set(), f"not in the tree: {sorted(files - in_tree)}"

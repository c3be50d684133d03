"""Fail when pyproject.toml's lower bounds drift from the tested ones.

``.ci/lowest.txt`` pins the versions on which the test suite was run at its
minimum (see its header). Every runtime dependency and every package of the
``demo`` extra must have a ``>=`` bound equal to its pin there, a ``test``
package pinned there must have its bound equal to the pin, and
``requires-python`` must name the Python version of that run. The remaining
``test`` packages (static checkers and notebook runners) are resolved freely by
that run and listed in ``NOT_AT_MINIMUM``; ``docs`` and ``packaging`` are tools.

Run: ``python .ci/check_lower_bounds.py`` (exit status 1 and one line per problem).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NOT_AT_MINIMUM = {
    "ruff",
    "mypy",
    "pyright",
    "nbclient",
    "nbformat",
    "ipykernel",
}


def lower_bound(requirement: Requirement) -> str | None:
    bounds = [s.version for s in requirement.specifier if s.operator == ">="]
    return bounds[0] if len(bounds) == 1 else None


def problems() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / ".ci" / "lowest.txt").read_text()
    pins = {
        canonicalize_name(name): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, re.M)
    }
    python = re.search(r"^# python: (\S+)$", text, re.M)
    found = []
    if python is None or project["requires-python"] != f">={python.group(1)}":
        found.append(
            f"requires-python is {project['requires-python']!r}, the lowest run "
            f"used python {python.group(1) if python else '(not recorded)'}"
        )
    extras = project["optional-dependencies"]
    checked = [(r, True) for r in project["dependencies"] + extras["demo"]]
    checked += [(r, False) for r in extras["test"]]
    seen = set()
    for line, required in checked:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        seen.add(name)
        if any(s.operator == "==" for s in requirement.specifier):
            continue  # an exact pin (torch) is its own lower bound
        pin = pins.get(name)
        if pin is None:
            if required or name not in NOT_AT_MINIMUM:
                found.append(f"{line!r}: no tested minimum in .ci/lowest.txt")
            continue
        if lower_bound(requirement) != pin:
            found.append(f"{line!r}: .ci/lowest.txt tested {name}=={pin}")
    found += [
        f".ci/lowest.txt pins {name}, which pyproject.toml does not require"
        for name in sorted(set(pins) - seen)
    ]
    return found


if __name__ == "__main__":
    found = problems()
    for problem in found:
        print(problem)
    if not found:
        print("lower bounds: pyproject.toml matches .ci/lowest.txt")
    sys.exit(1 if found else 0)

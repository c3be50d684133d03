"""Turn the notebook sources (``notebooks/src/*.py``, percent format) into .ipynb.

A source is a Python script whose cells start with ``# %%`` (code) or
``# %% [markdown]`` (markdown, each line prefixed with ``# ``). The notebooks are
written without outputs. Run after editing a source:

    python notebooks/build.py           # rewrite notebooks/*.ipynb
    python notebooks/build.py --check   # fail if an .ipynb differs from its source
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = HERE / "src"


def cells_of(source: str) -> list:
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(
                line[2:] if line.startswith("# ") else line.lstrip("#")
                for line in text.splitlines()
            )
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "code" and text:
            cells.append(nbformat.v4.new_code_cell(text))

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def notebook_of(path: pathlib.Path) -> str:
    nb = nbformat.v4.new_notebook(
        cells=cells_of(path.read_text()),
        metadata={
            "kernelspec": {
                "display_name": "Python 3",
                "language": "python",
                "name": "python3",
            },
            "language_info": {"name": "python"},
        },
    )
    for i, cell in enumerate(nb.cells):  # stable ids: rebuilding changes nothing
        cell["id"] = f"{path.stem}-{i}"
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SOURCES.glob("*.py")):
        target = HERE / f"{source.stem}.ipynb"
        text = notebook_of(source)
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
    if stale:
        print(f"out of date with notebooks/src: {stale}; run notebooks/build.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

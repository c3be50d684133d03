"""Execute every notebook in notebooks/ from a clean kernel (a CI step, not pytest).

    python tests/notebooks.py                  # all notebooks
    python tests/notebooks.py quickstart lbfgs # some
    python tests/notebooks.py --executed out/  # also keep the executed copies

Checks first that each .ipynb matches its source in notebooks/src, then runs each in
a fresh ``python3`` kernel with the notebook's folder as working directory. Prints
each notebook's time; exits non-zero if any cell raises or a notebook runs past
``TIMEOUT`` seconds.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
TIMEOUT = 300  # per cell, seconds


def run(path: pathlib.Path, executed: pathlib.Path | None) -> bool:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as error:
        print(f"FAILED {path.name} after {time.perf_counter() - start:.0f}s:\n{error}")
        return False
    finally:
        if executed is not None:
            executed.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, executed / path.name)
    print(f"ok     {path.name} in {time.perf_counter() - start:.0f}s", flush=True)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--executed", type=pathlib.Path, help="write executed copies")
    args = parser.parse_args(argv)
    names = args.names
    check = subprocess.run([sys.executable, str(NOTEBOOKS / "build.py"), "--check"])
    if check.returncode != 0:
        return 1
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if names:
        paths = [p for p in paths if p.stem in names]
        missing = set(names) - {p.stem for p in paths}
        if missing:
            print(f"no such notebooks: {sorted(missing)}")
            return 1
    if not paths:
        print(f"no notebooks in {NOTEBOOKS}")
        return 1
    results = [run(p, args.executed) for p in paths]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

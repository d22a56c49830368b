"""
Execute the tutorials in place, so that they can be read with their outputs (``make notebooks``), or strip them again
(``--strip``: the repository keeps them without outputs, which ``tests/test_notebooks.py`` checks).

Usage: python notebooks/execute.py [--strip] [NOTEBOOK.ipynb ...]   (default: every notebooks/*.ipynb)
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
logger = logging.getLogger("notebooks")


def strip(nb) -> None:
    """Remove outputs, execution counts and execution metadata from every code cell."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)


def main(argv=None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path)
    parser.add_argument("--strip", action="store_true", help="strip outputs instead of executing")
    parser.add_argument("--timeout", type=int, default=900, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = args.paths or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if args.strip:
            strip(nb)
        else:
            from nbclient import NotebookClient

            start = time.perf_counter()
            NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            logger.info("%s: executed in %.0f s", path.name, time.perf_counter() - start)
        nbformat.write(nb, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

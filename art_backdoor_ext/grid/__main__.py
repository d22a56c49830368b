"""
Command line: ``python -m art_backdoor_ext.grid SPEC.yaml [--backend local|ray] [--address ADDR] [--workers N]
[--cache DIR] [--out PREFIX] [--force]``. Shows a progress bar over tasks and a log line per finished task, writes the
tables (``PREFIX.md``, ``PREFIX.json``, ``PREFIX.png``) when ``--out`` is given, and prints the Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from art_backdoor_ext.grid.core import BACKENDS, DEFAULT_CACHE, run_grid


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m art_backdoor_ext.grid", description=__doc__.split("``")[0])
    parser.add_argument("spec", help="grid spec (YAML or JSON)")
    parser.add_argument("--backend", choices=BACKENDS, default="local")
    parser.add_argument("--address", default=None, help="ray: address of an existing cluster ('auto' for this one)")
    parser.add_argument("--workers", type=int, default=None, help="ray: CPUs of the local Ray (default 2)")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})")
    parser.add_argument("--out", default=None, help="path prefix of the .md/.json/.png outputs")
    parser.add_argument("--force", action="store_true", help="recompute everything, overwriting the cache")
    parser.add_argument("--no-plot", action="store_true", help="skip the error-bar plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-task log lines")
    parser.add_argument("--cached-only", action="store_true",
                        help="compute nothing: tables from the results the cache holds (a partial grid)")
    args = parser.parse_args(argv)

    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.quiet:  # the grid's own lines (one per finished task); the rest of the package stays at WARNING
        logging.getLogger("art_backdoor_ext.grid").setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm():
            result = run_grid(args.spec, cache=args.cache, backend=args.backend, out=args.out, force=args.force,
                              workers=args.workers, address=args.address, verbose=not args.quiet,
                              plot=not args.no_plot, cached_only=args.cached_only)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    print(result.table())
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    logging.getLogger("art_backdoor_ext.grid").info("Done in %.1f s (%s).", result.seconds, counts or "nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())

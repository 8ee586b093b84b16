"""The command line of ``tools/fault_matrix.py``."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import catalogue
from .cases import FAULTS, Fault, source
from .cells import Cell, run_cell
from .modes import MODE_KEYS, MODES, Mode
from .table import outcome, print_matrix

USAGE = """\
examples:
  fault_matrix.py                          every fault in every mode: 45 runs, 5.5-7 min on 2 busy cores
  fault_matrix.py -j 2                     two runs at once: sooner, timings less exact
  fault_matrix.py --mode torchrun          one column
  fault_matrix.py -k segfault -k pytest    cells whose "fault mode" text has every -k
  fault_matrix.py --part catalogue         the one-shot catalogue of test/test_faults.py
  fault_matrix.py --print-file pool        the file a mode's class runs (for a reproduction)

Exit code: 0 when every cell is as expected, 1 when one is not, 2 on bad usage."""

_SAY = threading.Lock()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run each fault in each mode and print what the user sees as a Markdown table.",
        epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-k", action="append", default=[], metavar="SUBSTRING",
                        help="only cells (or catalogue rows) whose fault or mode names contain it; repeatable: all")
    parser.add_argument("--mode", action="append", choices=MODE_KEYS, help="only these modes; repeatable")
    parser.add_argument("--part", choices=("matrix", "catalogue", "all"), default="matrix",
                        help="the fault x mode matrix (default), test_faults.py's one-shot catalogue, or both")
    parser.add_argument("--limit", type=float, default=150.0, help="seconds before a run is killed (default 150)")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="cells run at once (default 1: timings without contention)")
    parser.add_argument("--show-output", action="store_true", help="print the output of each unexpected cell")
    parser.add_argument("--print-file", choices=("one-shot", "env", "pool"), metavar="KIND",
                        help="print the test file of a kind of class (one-shot, env, pool) and exit")
    return parser


def _selected(text: str, wanted: list[str]) -> bool:
    return all(k.lower() in text.lower() for k in wanted)


def _run_one(fault: Fault, mode: Mode, args: argparse.Namespace) -> Cell:
    """Run one cell and say how it went on stderr (its output too, if asked and it missed)."""
    start = time.monotonic()
    cell = run_cell(fault, mode, args.limit)
    mark = "ok" if not cell.problems else "MISS: " + "; ".join(cell.problems)
    said = f"{fault.key}/{mode.key}: {outcome(cell)} in {time.monotonic() - start:.1f} s: {mark}\n"
    if cell.problems and args.show_output:
        left = "".join(f"left: {item}\n" for item in cell.processes + cell.files)
        said += f"--- output of {fault.key}/{mode.key} ---\n{cell.output}{left}--- end ---\n"
    with _SAY:
        sys.stderr.write(said)
        sys.stderr.flush()
    return cell


def run_matrix(args: argparse.Namespace) -> bool:
    """Run the selected cells, print their table; whether all were as expected."""
    modes = [m for m in MODES if not args.mode or m.key in args.mode]
    chosen = [(f, m) for f in FAULTS for m in modes if _selected(f"{f.key} {f.name} {m.key}", args.k)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        cells = list(pool.map(lambda pair: _run_one(*pair, args), chosen))
    if cells:
        print_matrix(cells, [m for m in modes if any(c.mode is m for c in cells)])
    return all(not c.problems for c in cells)


def run_catalogue(args: argparse.Namespace) -> bool:
    """Run the selected rows of the catalogue, print their table; whether all were as expected."""
    rows = []
    for name, job in catalogue.jobs():
        if _selected(name, args.k):
            rows.append(job())
            print(f"done: {name}", file=sys.stderr, flush=True)
    if rows:
        print("\nOne-shot catalogue (test/test_faults.py, each fault run on its own):\n")
        catalogue.print_table(rows)
    return all(catalogue.as_expected(r) for r in rows)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.print_file:
        print(source(args.print_file), end="")
        return 0
    ok = True
    if args.part in ("matrix", "all"):
        ok = run_matrix(args) and ok
    if args.part in ("catalogue", "all"):
        ok = run_catalogue(args) and ok
    sys.stdout.flush()
    return 0 if ok else 1

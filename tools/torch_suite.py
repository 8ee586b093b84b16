"""Run PyTorch's own distributed suites on PyTorch's framework and through torch_compat, and compare.

One generated test file per suite, PyTorch's style, imports the suite from the
installed torch wheel (nothing of PyTorch's is copied here), combined as PyTorch's
own test files combine it (see ``tools/torch_suites/catalog.py``). It runs twice in
fresh subprocesses, each with BACKEND=gloo, WORLD_SIZE, a fresh TEMP_DIR (with
``barrier`` and ``test_dir``) and INIT_METHOD as PyTorch's run_test.py sets them:

* ``python FILE``: PyTorch's framework (``common_distributed``, spawned ranks);
* ``python -m distributed_testing --torch-compat FILE``: the same file on ours.

Each run gets its own TMPDIR. It prints, for both, the outcome counts, the
end-to-end wall time and the files left in TMPDIR, then the speed-up and every
test whose outcome differs, split into differences by design (the README's
*Moving from PyTorch*: a non-zero rank that fails while rank 0 passes fails here;
a class with world_size 0 skips here; ``requires_world_size`` skips only with
nccl here) and defects (everything else). Suites (``--suite``, several, or ``all``):

* ``dist``: ``distributed_test.py``'s ``DistributedTest._DistTestBase`` as
  ``test_distributed_spawn.py`` runs it; WORLD_SIZE from ``--world-size`` (default
  3, what run_test.py gives gloo without 2 GPUs);
* TensorPipe agent (``test_tensorpipe_agent.py``'s ``generate_tests("TensorPipe",
  TensorPipeRpcAgentTestFixture, GENERIC_TESTS + TENSORPIPE_TESTS)``), one suite
  per wheel module: ``rpc`` (rpc_test.py), ``dist_autograd``, ``dist_optimizer``,
  ``ddp_under_dist_autograd``, ``remote_module``, ``jit_rpc``,
  ``jit_dist_autograd``, ``rpc_examples``; ``tensorpipe`` is that whole file;
* ``faulty``: ``test_faulty_agent.py``'s ``generate_tests("Faulty",
  FaultyRpcAgentTestFixture, FAULTY_AGENT_TESTS)``.

``--file PATH ...`` compares PyTorch's own test files instead (``test/distributed``
of its repository, not in the wheel: fetch them), each run where it is, as it is.

The RPC suites' classes fix their world size (4; remote module 2 and 3; DDP under
dist autograd 6 and 4), as in PyTorch. ``all`` is every suite but ``tensorpipe``.

Examples::

    python tools/torch_suite.py --suite all --sample 24
    python tools/torch_suite.py --suite all --every 5   # estimates the full run's total speed-up
    python tools/torch_suite.py --world-size 2 3 --sample 60
    python tools/torch_suite.py -k all_reduce -k broadcast --only ours
    python tools/torch_suite.py --suite rpc dist_autograd --sample 20
    python tools/torch_suite.py --file /tmp/test_c10d_gloo.py /tmp/tensor/test_dtensor.py
    python tools/torch_suite.py --world-size 2 --only ours --keep full   # full/ours-dist-ws2.json: durations
    python tools/torch_suite.py --world-size 2 --only ours --shard 1/3 --durations full/ours-dist-ws2.json

Exit code: 0 when no outcome differs but by design, 1 when any defect, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch_suites.catalog import ALL, SUITES, file_suite, resolve
from torch_suites.compare import compare

DEFAULT_WORLD_SIZE = 3  # run_test.py's gloo WORLD_SIZE on a machine without exactly 2 GPUs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python tools/torch_suite.py",
        description="Run PyTorch's distributed suites on PyTorch's framework and on ours; compare.",
    )
    parser.add_argument(
        "--suite",
        nargs="+",
        choices=[*SUITES, "all"],
        metavar="NAME",
        help=f"one or more of {', '.join(SUITES)}, or all ({', '.join(ALL)}); default dist",
    )
    parser.add_argument(
        "--file",
        nargs="+",
        default=[],
        metavar="PATH",
        help="instead of the wheel's suites: PyTorch test files run as they are (test/distributed/..., "
        "fetched from its repository), each as python FILE -v and with --torch-compat",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        nargs="+",
        help=f"WORLD_SIZE values for dist (default {DEFAULT_WORLD_SIZE}); the RPC suites' classes fix theirs",
    )
    parser.add_argument("-k", dest="patterns", action="append", default=[], help="select tests (unittest -k rules)")
    parser.add_argument("--limit", type=int, help="the first N selected tests of each suite")
    parser.add_argument("--sample", type=int, help="N selected tests of each suite, evenly spread over its selection")
    parser.add_argument(
        "--every",
        type=int,
        metavar="K",
        help="one in K selected tests of each suite, evenly spread: each suite keeps its share of the whole, "
        "so the total speed-up estimates the full run's",
    )
    parser.add_argument("--only", choices=("torch", "ours"), help="run one framework only")
    parser.add_argument("--init-method", choices=("file", "env"), default="file", help="as run_test.py (default file)")
    parser.add_argument("--start-method", default="fork", help="ours: fork (default, the fast start) or spawn")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one framework's run may take (3600)")
    parser.add_argument("--keep", help="keep the generated files, logs and reports in this directory")
    parser.add_argument("--json", help="write the comparisons to this JSON file")
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="run shard I of N of the selection (ours: DISTRIBUTED_TESTING_SHARD; PyTorch: the same tests)",
    )
    parser.add_argument(
        "--durations",
        metavar="FILE",
        help="balance --shard by this earlier run's record (ours: DISTRIBUTED_TESTING_DURATIONS; "
        "--keep DIR keeps ours-SUITE-wsN.json, a full run's record)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.file and args.suite:
        print("torch_suite: give --suite or --file, not both", file=sys.stderr)
        return 2
    missing = [path for path in args.file if not os.path.isfile(path)]
    if missing:
        print(f"torch_suite: --file: no such file: {missing[0]}; example: --file test_c10d_gloo.py", file=sys.stderr)
        return 2
    stems = [os.path.basename(path) for path in args.file]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:
        print(f"torch_suite: --file: two files named {twice[0]} (their logs and records would share names); "
              "compare them in separate runs", file=sys.stderr)
        return 2
    suites = resolve(args.suite or ["dist"]) if not args.file else []
    if args.world_size and any(n < 1 for n in args.world_size):
        print("torch_suite: --world-size values must be >= 1", file=sys.stderr)
        return 2
    if args.world_size and not any(SUITES[s].world_sizes_from_env for s in suites):  # (--file included)
        print("torch_suite: --world-size applies to dist only; the RPC suites' classes fix theirs", file=sys.stderr)
        return 2
    if args.every is not None and args.every < 1:
        message = f"--every must be >= 1 (one in K tests), not {args.every}; example: --every 5"
        print(f"torch_suite: {message}", file=sys.stderr)
        return 2
    if args.durations and not args.shard:
        print("torch_suite: --durations balances --shard; give --shard I/N too", file=sys.stderr)
        return 2
    if args.shard:
        from distributed_testing._errors import ConfigError
        from distributed_testing._parsers import parse_durations, parse_shard

        try:
            args.shard = parse_shard(args.shard, "--shard")
            args.durations = parse_durations(args.durations, "--durations") if args.durations else None
        except ConfigError as exc:
            print(f"torch_suite: {exc}", file=sys.stderr)
            return 2
    work = args.keep or tempfile.mkdtemp(prefix="torch-suite-")
    os.makedirs(work, exist_ok=True)
    summary: list[dict[str, Any]] = []
    try:
        for name in suites:
            sizes = (args.world_size or [DEFAULT_WORLD_SIZE]) if SUITES[name].world_sizes_from_env else [4]
            for world_size in sizes:
                result = compare(args, name, world_size, work)
                if result is not None:
                    summary.append(result)
        for path in args.file:  # the file's classes fix their world sizes; WORLD_SIZE=4 as for the RPC suites
            suite = file_suite(path)
            result = compare(args, suite.name, 4, work, suite)
            if result is not None:
                summary.append(result)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not summary:
        print(f"torch_suite: no test matches -k {' -k '.join(args.patterns)}", file=sys.stderr)
        return 2
    if len(summary) > 1:
        print_summary(summary)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)
    return 1 if any(result["defects"] for result in summary) else 0


def _cell(run: dict[str, Any] | None) -> tuple[str, str]:
    if run is None:
        return "-", "-"
    c = run["counts"]
    text = f"{c['passed']}/{c['failed'] + c['error']}/{c['skipped']}"
    if c["missing"]:
        text += f" +{c['missing']} did not run"
    return text, f"{run['seconds']:.1f}"


def print_summary(summary: list[dict[str, Any]]) -> None:
    """One row per suite (and world size): outcomes and wall time per framework, speed-up, differences."""
    header = (
        f"{'suite':26} {'world size':>10} {'tests':>9} {'PyTorch p/f/s':>14} {'s':>7} {'ours p/f/s':>14} {'s':>7}"
        f" {'speed-up':>8} {'by design':>9} {'defects':>7}"
    )
    print(f"\n== summary (p/f/s: passed / failed or error / skipped)\n{header}\n{'-' * len(header)}")
    totals = [0.0, 0.0]
    for result in summary:
        runs = {("torch" if r["framework"].startswith("PyTorch") else "ours"): r for r in result["runs"]}
        theirs, ours = _cell(runs.get("torch")), _cell(runs.get("ours"))
        speed = "-"
        if "torch" in runs and "ours" in runs and runs["ours"]["seconds"] > 0:
            speed = f"{runs['torch']['seconds'] / runs['ours']['seconds']:.1f}x"
            totals[0] += runs["torch"]["seconds"]
            totals[1] += runs["ours"]["seconds"]
        size = str(result["world_size"]) if result["world_size"] else "/".join(map(str, result["world_sizes"]))
        print(
            f"{result['suite']:26} {size:>10} {result['tests']:>4}/{result['tests_in_suite']:<4} {theirs[0]:>14} "
            f"{theirs[1]:>7} {ours[0]:>14} {ours[1]:>7} {speed:>8} {len(result['by_design']):>9} "
            f"{len(result['defects']):>7}"
        )
    if totals[1] > 0:
        print(f"total: PyTorch {totals[0]:.1f} s, ours {totals[1]:.1f} s, speed-up {totals[0] / totals[1]:.1f}x")


if __name__ == "__main__":
    sys.exit(main())

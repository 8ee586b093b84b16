"""``python -m distributed_testing merge``: the shards' JSON records and JUnit files as one run's.

Each test once: a test found in two inputs (shards that overlapped) is kept
from the first and reported. Counts, times and the exit code are recomputed;
records that say which shard they are (``"shard": [i, n]``) are checked for
a missing or repeated shard. Inputs are told apart by their content, so one
call can merge both kinds::

    python -m distributed_testing merge --json run.json --junit run.xml shard-*.json shard-*.xml

Exit code: the merged run's (0 passed, 1 a test failed or a shard is missing
or repeated, 5 no tests; a shard that stopped early, such as a usage error or
an interrupt, passes its own code on), or 2 when the merge cannot be made.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from distributed_testing._protocol import ERROR, FAILED, TEST_OUTCOMES
from distributed_testing._record import write_report
from distributed_testing._shard import id_key

__all__ = ["main", "merge_junit", "merge_records"]

PROG = "python -m distributed_testing merge"
EXAMPLE = f"Example: {PROG} --json run.json --junit run.xml shard-1.json shard-2.json shard-1.xml shard-2.xml"
_FINISHED = (0, 1, 5)  # exit codes of a run that ran its tests (5: a shard that had none)
_COUNTED = ("tests", "failures", "errors", "skipped")


class MergeError(Exception):
    """The merge cannot be made: a usage error (exit 2)."""


# -- records ------------------------------------------------------------------------------


def merge_records(records: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[dict[str, Any]], int, list[str]]:
    """The tests of ``(path, record)`` pairs, each once, the merged run's exit code, and the
    problems found (a test in two inputs, a missing or repeated shard)."""
    tests: list[dict[str, Any]] = []
    owner: dict[str, str] = {}
    problems: list[str] = []
    for path, record in records:
        mine: set[str] = set()  # a test recorded twice in one input (repeats) is kept twice
        for entry in record["tests"]:
            key = entry.get("key") or id_key(str(entry.get("id", "")))
            if key in owner and key not in mine:
                problems.append(f"{key} is in both {owner[key]} and {path}: kept the first")
                continue
            owner.setdefault(key, path)
            mine.add(key)
            tests.append(entry)
    problems += _shard_problems(records)
    stopped = [int(r["exit_code"]) for _, r in records if r.get("exit_code") not in (*_FINISHED, None)]
    if stopped:
        code = stopped[0]
    elif any(t.get("outcome") in (FAILED, ERROR) for t in tests) or problems:
        code = 1
    else:
        code = 0 if tests else 5
    return tests, code, problems


def _shard_problems(records: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    shards = [(path, r["shard"]) for path, r in records if isinstance(r.get("shard"), list) and len(r["shard"]) == 2]
    if not shards:
        return []
    counts = {int(n) for _, (_, n) in shards}
    if len(counts) > 1:
        return [f"the records are shards of different splits: {', '.join(f'{p} {i}/{n}' for p, (i, n) in shards)}"]
    count = counts.pop()
    seen: dict[int, str] = {}
    problems = []
    for path, (index, _) in shards:
        if int(index) in seen:
            problems.append(f"shard {index}/{count} is both {seen[int(index)]} and {path}")
        seen.setdefault(int(index), path)
    missing = [str(i) for i in range(1, count + 1) if i not in seen]
    if missing:
        problems.append(f"shard {', '.join(f'{i}/{count}' for i in missing)} missing: the merged run is not whole")
    return problems


# -- JUnit --------------------------------------------------------------------------------


def merge_junit(roots: Sequence[tuple[str, ET.Element]]) -> tuple[ET.ElementTree[ET.Element], list[str]]:
    """One JUnit file from ``(path, root)`` pairs: a ``testsuite`` per suite name (pytest's ``pytest``,
    the matrix tool's configurations), each test case once, counts and times recomputed."""
    root = ET.Element("testsuites", name=roots[0][1].get("name", "merged") if roots else "merged")
    suites: dict[str, ET.Element] = {}
    owner: dict[tuple[str, str, str], str] = {}
    problems: list[str] = []
    for path, tree_root in roots:
        mine: set[tuple[str, str, str]] = set()
        for suite in [tree_root] if tree_root.tag == "testsuite" else tree_root.iter("testsuite"):
            name = suite.get("name", "")
            merged = suites.get(name)
            if merged is None:
                merged = suites[name] = ET.SubElement(root, "testsuite", {k: v for k, v in suite.attrib.items()})
                merged.set("time", "0")
                if (properties := suite.find("properties")) is not None:
                    merged.append(properties)
            merged.set("time", f"{float(merged.get('time', '0')) + _seconds(suite, path):.3f}")
            if suite.get("timestamp") and suite.get("timestamp", "") < merged.get("timestamp", "~"):
                merged.set("timestamp", suite.get("timestamp", ""))
            for case in suite.findall("testcase"):
                ident = (name, case.get("classname", ""), case.get("name", ""))
                if ident in owner and ident not in mine:
                    test = f"{ident[1]}.{ident[2]} ({name})"
                    problems.append(f"{test} is in both {owner[ident]} and {path}: kept the first")
                    continue
                owner.setdefault(ident, path)
                mine.add(ident)
                merged.append(case)
            for tag in ("system-out", "system-err"):
                for output in suite.findall(tag):
                    merged.append(output)
    for merged in suites.values():
        cases = merged.findall("testcase")
        merged.set("tests", str(len(cases)))
        for key, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
            merged.set(key, str(sum(case.find(tag) is not None for case in cases)))
        _outputs_last(merged)
    for key in (*_COUNTED, "time"):
        total = sum(float(suite.get(key, "0")) for suite in suites.values())
        root.set(key, f"{total:.3f}" if key == "time" else str(int(total)))
    ET.indent(root)
    return ET.ElementTree(root), problems


def _outputs_last(suite: ET.Element) -> None:
    """Properties first, test cases, then one system-out and one system-err (JUnit's order)."""
    for tag in ("system-out", "system-err"):
        outputs = suite.findall(tag)
        for output in outputs:
            suite.remove(output)
        text = "\n".join(output.text or "" for output in outputs)
        if text.strip():
            ET.SubElement(suite, tag).text = text


def _junit_code(tree: ET.ElementTree[ET.Element]) -> int:
    root = tree.getroot()
    if int(root.get("failures", "0")) + int(root.get("errors", "0")):
        return 1
    return 0 if int(root.get("tests", "0")) else 5


# -- the command --------------------------------------------------------------------------


def _seconds(element: ET.Element, path: str) -> float:
    """A JUnit element's ``time``, or a MergeError naming the file."""
    try:
        return float(element.get("time", "0") or 0)
    except ValueError:
        raise MergeError(f"{path!r} is not valid JUnit: time={element.get('time')!r} is not a number") from None


def _read(path: str) -> dict[str, Any] | ET.Element:
    """A record (JSON) or the root of a JUnit file (XML), by its content."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise MergeError(f"cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("<"):
            element = ET.fromstring(text)
            if element.tag not in ("testsuites", "testsuite"):
                raise MergeError(f"{path!r} is XML but not JUnit (its root is <{element.tag}>)")
            return element
        data = json.loads(text)
    except (ET.ParseError, json.JSONDecodeError) as exc:
        raise MergeError(f"{path!r} is neither a JSON record nor a JUnit XML file ({exc})") from None
    if not (isinstance(data, dict) and isinstance(data.get("tests"), list)):
        raise MergeError(f"{path!r} is JSON but not a record of a run (no \"tests\" list)")
    if not all(isinstance(entry, dict) for entry in data["tests"]):
        raise MergeError(f"{path!r} is not a record of a run: each entry of \"tests\" must be an object")
    if not isinstance(data.get("exit_code", 0), int):
        raise MergeError(f"{path!r} is not a record of a run: its exit_code {data['exit_code']!r} is not a number")
    return data


def _write(path: str, write: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise MergeError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Merge the JSON records (DISTRIBUTED_TESTING_REPORT, --dt-report) and JUnit XML files "
        "(pytest --junitxml, tools/run_distributed_tests.py --junit-xml) of a run's shards into one of each: "
        "each test once, counts and exit code recomputed.",
        epilog=f"{EXAMPLE}\n\nexit codes: the merged run's (0 passed, 1 a test failed or a shard is missing or "
        "repeated, 5 no tests, or a shard's own code when it stopped early), 2 when the merge cannot be made",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", metavar="OUT", help="write the merged JSON record here")
    parser.add_argument("--junit", metavar="OUT", help="write the merged JUnit XML here")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="the shards' records and JUnit files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Merge; print what was merged (problems on stderr); return the merged run's exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return _merge(args)
    except MergeError as exc:
        print(f"{PROG}: error: {exc}. {EXAMPLE}", file=sys.stderr)
        return 2


def _merge(args: argparse.Namespace) -> int:
    if not (args.json or args.junit):
        raise MergeError("give --json OUT, --junit OUT or both")
    read = [(path, _read(path)) for path in args.inputs]
    records = [(p, r) for p, r in read if isinstance(r, dict)]
    roots = [(p, r) for p, r in read if isinstance(r, ET.Element)]
    for option, wanted, kind in ((args.json, records, "JSON record"), (args.junit, roots, "JUnit XML file")):
        if option and not wanted:
            raise MergeError(f"{option!r} needs at least one {kind} among the inputs")
    codes: list[int] = []
    problems: list[str] = []
    if args.json:
        tests, code, found = merge_records(records)
        _write(args.json, lambda tmp: write_report(tmp, tests, code))  # counts as a run's record has them
        counts = ", ".join(f"{sum(t.get('outcome') == o for t in tests)} {o}" for o in TEST_OUTCOMES)
        print(f"{args.json}: {len(records)} records, {len(tests)} tests ({counts}), exit code {code}")
        codes.append(code)
        problems += found
    if args.junit:
        tree, found = merge_junit(roots)
        _write(args.junit, lambda tmp: tree.write(tmp, encoding="utf-8", xml_declaration=True))
        root = tree.getroot()
        print(f"{args.junit}: {len(roots)} JUnit files, " + ", ".join(f"{root.get(k)} {k}" for k in _COUNTED))
        codes.append(1 if found else _junit_code(tree))
        problems += found
    for problem in dict.fromkeys(problems):
        print(f"{PROG}: {problem}", file=sys.stderr)
    return next((code for code in codes if code), 0)  # the JUnit files' problems count as much as the records'

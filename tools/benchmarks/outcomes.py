"""What a scenario's run did: its record (``Run``), and each test's outcome read from its output.

The trivial table reads its tests' words with ``unittest_sections`` too.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

# A failed test whose output says a class's own timeout stopped it (PyTorch's, then ours).
TIMEOUT_TEXT = re.compile(r"Timing out after \d+ seconds|\btimed out after [\d.]+ s\b")


@dataclass
class Run:
    """One subprocess (a test file, a pytest run, an import): what it did and how long it took."""

    label: str
    side: str
    expected: list[str] = field(default_factory=list)  # test ids, in the order they should run
    code: int | None = None  # None: killed at the wall-clock limit
    limit: float = 0.0
    wall: float = 0.0  # seconds, from starting the subprocess to its exit
    foreign_cpu: float | None = None
    stdout: str = ""
    stderr: str = ""
    starts: dict[str, float] = field(default_factory=dict)  # test id: monotonic time its setUp began
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # test id: (start, end)
    outcomes: dict[str, str] = field(default_factory=dict)  # ok, failed, timed out, hung, not run, ...
    reasons: dict[str, str] = field(default_factory=dict)  # test id: first line of its failure
    durations: dict[str, float] = field(default_factory=dict)  # pytest: setup + call + teardown, s
    memory: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # run-level: a kill, an exit code, leaks

    def ids(self, prefix: str = "") -> list[str]:
        """The expected tests (those whose id starts with ``prefix``), in order."""
        return [name for name in self.expected if name.startswith(prefix)]

    def ms(self, name: str) -> float | None:
        span = self.spans.get(name)
        return None if span is None else 1000.0 * (span[1] - span[0])

    def not_ok(self) -> dict[str, list[str]]:
        """Tests that did not pass, by outcome."""
        found: dict[str, list[str]] = {}
        for name in self.expected:
            outcome = self.outcomes.get(name, "not run")
            if outcome != "ok":
                found.setdefault(outcome, []).append(name)
        return found


def read_jsonl(path: str) -> list[dict[str, object]]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill
    return records


def read_times(run: Run, path: str) -> None:
    for record in read_jsonl(path):
        name, at = str(record["test"]), float(record["at"])  # type: ignore[arg-type]
        if record["event"] == "start":
            run.starts[name] = at
        elif name in run.starts:
            run.spans[name] = (run.starts[name], at)


UNITTEST_PROGRESS = re.compile(r"^(test_\w+) \(([\w.]+)\) \.\.\. ", re.M)
UNITTEST_WORD = re.compile(r"\b(ok|FAIL|ERROR)$|\b(skipped) ", re.M)  # the last one in a test's section
UNITTEST_BLOCK = re.compile(r"^(ERROR|FAIL): (test_\w+) \(([\w.]+)\)\n(.*?)(?=^={20,}$|^-{20,}\nRan |\Z)", re.M | re.S)
PYTEST_SUMMARY = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+?)(?: - (.*))?$", re.M)
PYTEST_SECTION = re.compile(r"^_{2,} (?:ERROR at \w+ of )?(\w+)\.(test_\w+) _{2,}$", re.M)
PYTEST_PART = re.compile(r"^={5,}", re.M)  # the next part of the report (PASSES, the summary)
PYTEST_DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+)\s*$", re.M)


def unittest_id(method: str, found: str) -> str:
    """The test's id (Python 3.11 prints it whole; earlier versions print only the class)."""
    return found if found.endswith("." + method) else f"{found}.{method}"


def pytest_id(node: str) -> str:
    """``test_a.py::Bench::test_0000`` as ``test_a.Bench.test_0000``, the id unittest gives it."""
    path, _, rest = node.partition("::")
    return path.removesuffix(".py").replace("/", ".") + "." + rest.replace("::", ".")


def unittest_sections(text: str) -> Iterator[tuple[str, str, str]]:
    """Each test in ``-v`` output: its method, what the parentheses after it say, and its part of the
    output (from its progress line to the next test's; rank output may come between)."""
    starts = list(UNITTEST_PROGRESS.finditer(text))
    for i, match in enumerate(starts):
        stop = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        yield match.group(1), match.group(2), text[match.end() : stop]


def parse_unittest(run: Run) -> dict[str, str]:
    """Each test's word (ok, FAIL, ERROR, skipped) from ``-v`` output; the text around its failure in reasons."""
    words: dict[str, str] = {}
    texts: dict[str, str] = {}
    text = run.stderr
    for method, found_id, section in unittest_sections(text):
        name = unittest_id(method, found_id)
        found = list(UNITTEST_WORD.finditer(section))
        if found:
            words[name] = found[-1].group(1) or found[-1].group(2)
        texts[name] = section
    for match in UNITTEST_BLOCK.finditer(text):
        name = unittest_id(match.group(2), match.group(3))
        texts[name] = texts.get(name, "") + match.group(4)
    run.reasons.update(texts)
    return words


def parse_pytest(run: Run, modules: dict[str, str]) -> dict[str, str]:
    """Each test's word from ``-rA``, its failure section in reasons, its phases in durations."""
    text = run.stdout
    words = {pytest_id(m.group(2)): m.group(1) for m in PYTEST_SUMMARY.finditer(text)}
    sections = list(PYTEST_SECTION.finditer(text))
    for i, match in enumerate(sections):
        stop = sections[i + 1].start() if i + 1 < len(sections) else len(text)
        part = PYTEST_PART.search(text, match.end(), stop)
        stop = part.start() if part else stop
        module = modules.get(match.group(1))
        if module is not None:
            name = f"{module}.{match.group(1)}.{match.group(2)}"
            run.reasons[name] = run.reasons.get(name, "") + text[match.end() : stop]
    for match in PYTEST_DURATION.finditer(text):
        name = pytest_id(match.group(3))
        run.durations[name] = run.durations.get(name, 0.0) + float(match.group(1))
    return words


def classify(run: Run, words: dict[str, str], timeout: float) -> None:
    """Each expected test's outcome: ok, failed, timed out (its class's own timeout), skipped,
    hung (running when the run was killed), finished but unknown (the run was killed before
    its summary), or not run."""
    for name in run.expected:
        word = words.get(name)
        text = run.reasons.get(name, "")
        ms = run.ms(name)
        if word in ("ok", "PASSED"):
            outcome = "ok"
        elif word in ("FAIL", "ERROR", "FAILED"):
            slow = ms is not None and ms >= 1000.0 * timeout
            outcome = "timed out" if TIMEOUT_TEXT.search(text) or slow else "failed"
        elif word in ("skipped", "SKIPPED"):
            outcome = "skipped"
        elif word is not None:
            outcome = word.lower()
        elif name in run.starts and name not in run.spans:
            outcome = "hung" if run.code is None else "died"
        elif name in run.spans:
            outcome = "finished, outcome unknown"
        else:
            outcome = "not run"
        run.outcomes[name] = outcome
        if outcome == "ok":
            run.reasons.pop(name, None)
        else:
            run.reasons[name] = first_error_line(text)


def first_error_line(text: str) -> str:
    """The most telling line of a failure's text: the last exception line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # pytest marks the exception's lines with "E   ".
    lines = [ln[1:].strip() if re.match(r"^E\s", ln) else ln for ln in lines]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Failure|Interrupt)\b", ln)]
    chosen = errors[-1] if errors else (lines[-1] if lines else "")
    return chosen[:200]


def outcome_counts(run: Run) -> str:
    """How many of the expected tests had each outcome, in the order the outcomes first came."""
    counts = Counter(run.outcomes.get(name, "not run") for name in run.expected)
    return ", ".join(f"{outcome} {n}" for outcome, n in counts.items())

"""The fault matrix as Markdown: a legend of the modes, then one row per (fault, mode)."""

from __future__ import annotations

from .cases import CLASS_NAMES
from .cells import DEADLINE, FILE, HANG_DEADLINE, PROMPT, Cell
from .modes import Mode

EXCERPT = 72


def _excerpt(text: str, width: int = EXCERPT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def outcome(cell: Cell) -> str:
    """The verdict and exit code the user got."""
    if cell.returncode is None:
        return "killed by the tool"
    return f"{cell.verdict or 'no verdict'}, exit {cell.returncode}"


def line(cell: Cell) -> str:
    where = f"{FILE}:{cell.line}"
    if cell.line_named:
        return f"yes ({where})"
    return f"no ({where})" if cell.fault.line else "n/a"


def seconds(cell: Cell) -> str:
    if cell.seconds is None:
        return "n/a"
    return f"{cell.seconds:.2f}" + (" (exit)" if cell.by_exit else "")


def legend(modes: list[Mode]) -> list[str]:
    """What each mode ran and how the columns read."""
    lines = ["Modes (world size 2, gloo, the test selected by name):", ""]
    lines += [f"* `{m.key}`: `{m.shown}` ({CLASS_NAMES[m.kind]})" for m in modes]
    lines += [
        "",
        f"Rank 1 injects each fault; DISTRIBUTED_TESTING_TIMEOUT={HANG_DEADLINE} for the hangs, {DEADLINE} for the "
        "others. *rank named*: the words that name rank 1; *line named*: whether the output names the fault's "
        "line; *s to report*: from the fault (its rank's timestamp) to the test's verdict line ((exit): no "
        "verdict, to the end of the run); *procs/files left*: processes and files in TMPDIR after the run "
        "(torchrun's own empty `torchelastic_*` log directories, which it leaves for any script, not counted).",
        "",
        f"A cell is as expected with the verdict and exit code of the fault, rank 1 named, the fault's line named "
        f"(but for os._exit and a skip), a report within {PROMPT:g} s of the fault (of the deadline for a hang) and "
        "nothing left; under torchrun a rank's death ends the launch (torchrun stops the other rank), so no "
        "verdict is expected there.",
        "",
    ]
    return lines


def print_matrix(cells: list[Cell], modes: list[Mode]) -> None:
    for text in legend(modes):
        print(text)
    header = ["fault", "mode", "outcome", "rank named", "line named", "s to report", "procs left", "files left",
              "as expected"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    previous = None
    for cell in cells:
        problems = cell.problems
        row = [
            cell.fault.name if cell.fault is not previous else "",
            cell.mode.key,
            outcome(cell),
            _excerpt(cell.named) if cell.named else "no",
            line(cell),
            seconds(cell),
            str(len(cell.processes)),
            str(len(cell.files)),
            "yes" if not problems else "NO: " + "; ".join(problems),
        ]
        previous = cell.fault
        print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")

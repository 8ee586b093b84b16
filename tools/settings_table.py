"""README's table of settings, generated from the one table in distributed_testing._settings.

    python tools/settings_table.py                     # print the reStructuredText table
    python tools/settings_table.py --write README.rst  # replace the table between its markers

test/test_config.py fails when README's table differs from this output.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from distributed_testing._settings import SETTINGS

START = ".. settings-table-start"
END = ".. settings-table-end"
COMMAND = "python tools/settings_table.py --write README.rst"
HEADINGS = ("variable", "meaning", "when missing")
WIDTHS = (40, 42, 36)  # the first fits ``DISTRIBUTED_TESTING_REQUIRE_HARDWARE``


def rst_table() -> str:
    """A simple table: each variable, what it is and takes, and what happens when it is not set."""
    border = "  ".join("=" * width for width in WIDTHS)
    lines = [border, _row(*HEADINGS), border]
    for setting in SETTINGS:
        meaning = _wrap(f"{setting.help}: {setting.values}", WIDTHS[1])
        missing = _wrap(setting.default, WIDTHS[2])
        for i in range(max(len(meaning), len(missing))):
            lines.append(
                _row(
                    f"``{setting.variable}``" if i == 0 else "",
                    meaning[i] if i < len(meaning) else "",
                    missing[i] if i < len(missing) else "",
                )
            )
    lines.append(border)
    return "\n".join(lines) + "\n"


def _row(*cells: str) -> str:
    for cell, width in zip(cells, WIDTHS, strict=True):
        if len(cell) > width:  # reStructuredText would read the row as a malformed table
            raise ValueError(f"{cell!r} is wider than its column ({width}): widen WIDTHS")
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, WIDTHS, strict=True)).rstrip()


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width``, never breaking ">= 1" or an inline literal."""
    text = text.replace(" >= ", "\xa0>=\xa0").replace(" > ", "\xa0>\xa0")
    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
    too_long = [line for line in lines if len(line) > width]
    if too_long:
        raise ValueError(f"a word is wider than its column ({width}): {too_long[0]!r}")
    return [line.replace("\xa0", " ") for line in lines]


def replace_table(text: str, table: str) -> str:
    """``text`` (a README) with the table between the markers replaced by ``table``."""
    try:
        before, rest = text.split(START + "\n", 1)
        _, after = rest.split(END + "\n", 1)
    except ValueError:
        raise ValueError(f"the README has no {START!r} ... {END!r} markers, each on a line of its own") from None
    return f"{before}{START}\n\n{table}\n{END}\n{after}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="README", help="replace the table between the markers of this file")
    args = parser.parse_args(argv)
    table = rst_table()
    if args.write is None:
        sys.stdout.write(table)
        return 0
    with open(args.write, encoding="utf-8") as handle:
        text = handle.read()
    try:
        updated = replace_table(text, table)
    except ValueError as exc:
        print(f"settings_table.py: {args.write}: {exc}", file=sys.stderr)
        return 2
    if updated != text:
        with open(args.write, "w", encoding="utf-8") as handle:
            handle.write(updated)
    print(f"{args.write}: settings table {'updated' if updated != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How ``hostgate`` writes tables: boxed for a person at a terminal, tab-separated when stdout is
a pipe or a file, so that ``grep``, ``cut`` and ``awk`` see every topic name and PCR value whole.

rich sizes a table to the terminal's width; with no terminal it assumes 80 columns and then
truncates or folds long cells, which corrupts machine values (a 64-hex-digit SHA-256 PCR value
split over two lines). So a table goes through rich only when a person will read it.

Imports nothing of hostgate, so every package may use it (``services.tpm`` included).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

__all__ = ["is_terminal", "print_table"]


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) is an interactive terminal."""
    out = sys.stdout if stream is None else stream
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], *,
                fold: Sequence[str] = ()) -> None:
    """Print a table: boxed (rich markup in cells allowed; ``fold``: columns whose long values
    may wrap) on a terminal, else a ``# title`` line, a header line and one tab-separated line
    per row with markup removed."""
    if is_terminal():
        _print_rich(title, columns, rows, fold)
    else:
        _print_plain(title, columns, rows)


def _print_rich(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]],
                fold: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold" if col in fold else "ellipsis")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _plain_cell(cell: str) -> str:
    from rich.text import Text

    # A tab or newline inside a value would shift every later column of the line.
    return Text.from_markup(cell).plain.replace("\t", " ").replace("\n", " ")


def _print_plain(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    lines = [f"# {title}", "\t".join(columns)]
    lines += ["\t".join(_plain_cell(cell) for cell in row) for row in rows]
    sys.stdout.write("\n".join(lines) + "\n")

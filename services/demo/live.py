"""The demo's live view (rich): a progress bar and the fleet table, refreshed as records arrive.

Rendering is a pure function of the run state (:func:`render`); :class:`LiveView` only owns
the rich ``Live`` display. Without a terminal (CI, pipes) it prints one line per phase instead.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from services.demo.orchestrator import RunState, is_final
from services.demo.report import (
    DemoRun,
    HostOutcome,
    credential_cell,
    judge,
    outcome_cell,
    plain_rules,
    refusal_summary,
    tamper_cell,
)
from services.terminal import print_table

_STYLE = {"TRUSTED": "bold green", "PASS": "green", "QUARANTINED": "bold red", "FAIL": "red",
          "REJECTED": "red", "PENDING": "dim", "REVOKED": "yellow"}


def _bar(done: int, total: int, width: int = 32) -> str:
    filled = int(width * done / total) if total else width
    return "█" * filled + "░" * (width - filled)


COLUMNS: tuple[str, ...] = ("host", "image", "tamper profile", "verdict",
                            "failed rules (plain words)", "outcome",
                            "credential opened in TPM")
"""The fleet table's columns (the final table adds ``check``)."""


def host_cells(hosts: list[HostOutcome], checks: list[str] | None = None, *,
               short: bool = True) -> list[list[tuple[str, str]]]:
    """The fleet table's cells, one list per host: ``(plain text, rich style)`` (``""``: none)
    in :data:`COLUMNS` order, then the check when ``checks`` is given. ``short`` clips the
    credential's serial and reason (the live view's narrow column)."""
    out = []
    for i, h in enumerate(hosts):
        verdict = h.verdict or "…"
        if h.attack_sent is not None or len(h.rejections) > 1:  # many records refused
            verdict = f"rejected: {refusal_summary(h.rejections) or '…'}"
        elif h.rejection:  # both: a passing round, then a refused one (replayed_nonce)
            verdict = f"{h.verdict}; rejected: {h.rejection}" if h.verdict else \
                f"rejected: {h.rejection}"
        row = [(h.host_id, ""), (h.image, ""), (tamper_cell(h), ""), (verdict, ""),
               (plain_rules(h) or "—", ""), (outcome_cell(h), _STYLE.get(h.status, "")),
               (credential_cell(h, short=short), "dim" if h.credential_opened is None
                else "green" if h.credential_opened else "bold red")]
        if checks is not None:
            row.append((checks[i], ""))
        out.append(row)
    return out


def host_table(hosts: list[HostOutcome], *, title: str, checks: list[str] | None = None
               ) -> Table:
    """The fleet table of the live view: host, image, tamper profile, verdict, failed rules,
    outcome, whether the host's TPM opened its credential."""
    table = Table(title=title, expand=True)
    table.add_column("host", no_wrap=True)
    table.add_column("image", no_wrap=True)
    # the profile, and the host an attacker's records name
    table.add_column("tamper profile", ratio=2, overflow="fold")
    table.add_column("verdict", ratio=1, overflow="fold")
    table.add_column("failed rules (plain words)", ratio=3, overflow="fold")
    table.add_column("outcome", ratio=2, overflow="fold")
    table.add_column("credential opened in TPM", ratio=1, overflow="fold")
    if checks is not None:
        table.add_column("check", ratio=2, overflow="fold")
    for row in host_cells(hosts, checks):
        table.add_row(*(Text(text, style=style) for text, style in row))
    return table


def render(st: RunState) -> RenderableType:
    """One frame of the live view."""
    total = len(st.rows)
    done = sum(is_final(h, issuer_running=st.issuer_running) for h in st.rows.values())
    head = Text.assemble((f"hostgate demo {st.run_id}  ", "bold"),
                         (f"{_bar(done, total)} {done}/{total} hosts final  ", "cyan"),
                         (st.phase, "italic"))
    return Group(head, host_table(list(st.rows.values()), title="fleet"))


def _checks(run: DemoRun) -> list[str]:
    return [("✔ " if j.ok else "✘ ") + j.why for j in run.judgements()]


def _final_title(run: DemoRun) -> str:
    status = "matches the tamper mix" if run.ok else "DOES NOT match the tamper mix"
    return f"hostgate demo {run.run_id}: {status}"


def print_final_table(run: DemoRun) -> None:
    """The final table on stdout through ``services.terminal``: boxed on a terminal,
    tab-separated when piped, with no value cut or wrapped (ids, serials, digests)."""
    rows = [[f"[{style}]{escape(text)}[/]" if style else escape(text) for text, style in row]
            for row in host_cells(list(run.hosts), _checks(run), short=False)]
    columns = (*COLUMNS, "check")
    print_table(_final_title(run), columns, rows, fold=columns[2:])


class LiveView:
    """A rich ``Live`` display on ``console``; a no-op frame sink when there is no terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self._phase = ""

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def tick(self, st: RunState) -> None:
        """Show the current state."""
        if self.live is not None:
            self.live.update(render(st))
        elif st.phase != self._phase:
            self._phase = st.phase
            self.console.print(f"[demo {st.run_id}] {st.phase}")


__all__ = ["COLUMNS", "LiveView", "host_cells", "host_table", "judge",
           "print_final_table", "render"]

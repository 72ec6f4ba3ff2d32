"""Output: tables and short lines for people, `--json` for scripts (the API's own JSON, as is)."""

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

# Colours carry meaning; a failure is also spelled out, never shown by colour alone.
STATE_STYLE = {
    "succeeded": "green",
    "committed": "green",
    "completed": "green",
    "already_installed": "green",
    "failed": "bold red",
    "rolled_back": "bold red",
    "rejected": "bold red",
    "timed_out": "bold red",
    "aborted": "bold red",
    "canceled": "yellow",
    "paused": "yellow",
    "running": "cyan",
    "partial": "bold yellow",
}


@dataclass(slots=True)
class Output:
    """Where a command writes: a table or line for a person, or JSON."""

    as_json: bool
    console: Console

    def json(self, value: Any) -> None:
        """Write `value` as JSON on stdout."""
        sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")

    def table(
        self,
        rows: Sequence[dict[str, Any]],
        columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any]]],
        *,
        empty: str,
    ) -> None:
        """`rows` as a table (or JSON); `empty` says what an empty result means."""
        if self.as_json:
            self.json(list(rows))
            return
        if not rows:
            self.console.print(empty)
            return
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        for title, _ in columns:
            table.add_column(title)
        for row in rows:
            table.add_row(*(styled(cell(row)) for _, cell in columns))
        self.console.print(table)

    def detail(self, value: dict[str, Any], fields: Sequence[str]) -> None:
        """One object as `key: value` lines (or JSON)."""
        if self.as_json:
            self.json(value)
            return
        width = max(len(f) for f in fields)
        for name in fields:
            self.console.print(f"[bold]{name:<{width}}[/] {styled(value.get(name))}")

    def done(self, message: str, value: Any = None) -> None:
        """A command's result: `message` for a person, `value` as JSON for a script."""
        if self.as_json:
            self.json(value if value is not None else {"ok": True})
        else:
            self.console.print(message)


def styled(value: Any) -> str:
    """A cell: blanks for None, states in their colour, mappings as k=v."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    text = str(value)
    style = STATE_STYLE.get(text)
    return f"[{style}]{text}[/]" if style else text.replace("[", r"\[")


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"

"""PatchReport: what patch_model fused, what it left on PEFT's path, and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

_HEADERS = ("module", "group", "layers", "status", "detail")


@dataclass(frozen=True)
class ReportEntry:
    """One decision for one module: ``kernel`` is set when patched, ``reason`` when skipped."""

    module: str
    group: str
    kernel: str | None
    detail: str = ""

    @property
    def patched(self) -> bool:
        return self.kernel is not None


@dataclass
class PatchReport:
    """Per module instance and projection group, the kernel bound or the reason it was not.

    ``str(report)`` is a plain-text table (rows of identical decisions are merged, with the
    number of layers); rich renders it as a rich Table.
    """

    model_type: str
    transformers_version: str
    entries: list[ReportEntry] = field(default_factory=list)

    @property
    def patched(self) -> list[ReportEntry]:
        return [entry for entry in self.entries if entry.patched]

    @property
    def skipped(self) -> list[ReportEntry]:
        return [entry for entry in self.entries if not entry.patched]

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """Table rows: module class, group, layer count, status, detail; in first-seen order."""
        counts = Counter(self.entries)
        return [
            (
                entry.module,
                entry.group,
                str(count),
                f"fused: {entry.kernel}" if entry.patched else "PEFT path",
                entry.detail,
            )
            for entry, count in counts.items()
        ]

    def title(self) -> str:
        return (
            f"lk_patch: {self.model_type} (transformers {self.transformers_version}): "
            f"{len(self.patched)} fused, {len(self.skipped)} on PEFT's path"
        )

    def __str__(self) -> str:
        rows = [_HEADERS, *self.rows()]
        widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADERS))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join([self.title(), *lines])

    def __rich__(self) -> object:
        from rich.table import Table

        table = Table(title=self.title())
        for header in _HEADERS:
            table.add_column(header, justify="right" if header == "layers" else "left")
        for row in self.rows():
            style = "green" if row[3].startswith("fused") else "yellow"
            table.add_row(*row, style=style)
        return table

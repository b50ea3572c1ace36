"""What optimize() did, pass by pass: the object behind ``cm.report``."""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass
class PassRecord:
    """One pass run: whether it changed the model, node counts around it, time, verification."""

    name: str
    changed: bool
    nodes_before: int
    nodes_after: int
    seconds: float
    verified: bool | None = None
    reverted: bool = False
    reason: str = ""
    group: str = ""
    """The fixed-point group and round this run belongs to (e.g. ``cleanup#2``), if any."""
    fired: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    """The pass's own account: what it did, or why it did nothing."""
    ops_before: dict[str, int] = dataclasses.field(default_factory=dict)
    ops_after: dict[str, int] = dataclasses.field(default_factory=dict)
    diff: str = ""
    module_paths: list[str] = dataclasses.field(default_factory=list)
    region_before: list = dataclasses.field(default_factory=list)
    """The nodes the pass removed (RegionNode), for the report's picture."""
    region_after: list = dataclasses.field(default_factory=list)
    """The nodes the pass added."""
    traceback: str = ""


@dataclasses.dataclass
class Report:
    """The record of one optimize() call. ``str()`` is a table of the passes."""

    model_name: str
    nodes_before: int
    nodes_after: int
    backend: str
    capture_seconds: float = 0.0
    passes_seconds: float = 0.0
    compile_seconds: float = 0.0
    cache_hit: bool = False
    partitions: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    """(backend, node count) of each piece the graph was cut into, in run order."""
    fallbacks: list[str] = dataclasses.field(default_factory=list)
    """Every node that did not run on the chosen backend, with its op."""
    records: list[PassRecord] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    quantization: list[str] = dataclasses.field(default_factory=list)
    """One line per linear layer the quantization search considered: precision, kernel, sensitivity."""
    knobs: list[str] = dataclasses.field(default_factory=list)
    """One line per knob other lossy passes declared (token merging's ratio per layer): each setting's
    sensitivity and measured saving, and the one the search chose."""

    def __str__(self) -> str:
        lines = [
            f"leangraph report for '{self.model_name}' (backend: {self.backend})",
            f"  captured in {self.capture_seconds:.2f} s, passes {self.passes_seconds:.2f} s, "
            f"compiled in {self.compile_seconds:.2f} s; "
            f"nodes {self.nodes_before} -> {self.nodes_after}",
        ]
        if self.records:
            header = f"  {'pass':<24} {'group':<16} {'changed':<8} {'nodes':>15} {'time':>9}  verification"
            lines += [header, "  " + "-" * (len(header) - 2)]
            for r in self.records:
                status = "reverted: " + r.reason if r.reverted else (
                    "verified" if r.verified else ("not verified" if r.verified is False else "-"))
                lines.append(
                    f"  {r.name:<24} {r.group:<16} {('yes' if r.changed else 'no'):<8} "
                    f"{f'{r.nodes_before} -> {r.nodes_after}':>15} {r.seconds * 1e3:>7.1f}ms  {status}"
                )
                lines += [f"      {r.name}: {note}" for note in r.notes]
        else:
            lines.append("  no passes were run")
        if len(self.partitions) > 1 or self.fallbacks:
            lines.append("  partitions: " + ", ".join(f"{backend} ({n} nodes)" for backend, n in self.partitions))
            lines += [f"  fallback: {f}" for f in self.fallbacks]
        if self.quantization:
            lines.append("  layer precisions:")
            lines += [f"    {row}" for row in self.quantization]
        if self.knobs:
            lines.append("  knobs of lossy passes:")
            lines += [f"    {row}" for row in self.knobs]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_html(self, path) -> None:
        """Write one self-contained HTML file: the table, and for every pass that changed the
        model its rules, module paths, pictures of the changed region and the IR diff."""
        from leangraph.errors import OptionError
        from leangraph.passes.html_report import render

        page = render(self)
        if not isinstance(path, (str, os.PathLike)) or not str(os.fspath(path)).strip() or "\0" in str(os.fspath(path)):
            raise OptionError(f"to_html() of the report of '{self.model_name}' takes a file path, got {path!r}",
                              hint="e.g. cm.report.to_html('report.html')")
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        except OSError as exc:
            raise OptionError(f"cannot write the HTML report of '{self.model_name}' to '{path}': "
                              f"{exc.strerror or exc}", hint="pass a file path you can write to") from None

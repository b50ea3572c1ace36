"""The HTML form of a Report: one file, no external assets (inline CSS and SVG)."""

from __future__ import annotations

import html

import networkx as nx

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0}.rev{background:#fde0e0}.chg{background:#e6f4e6}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}
.del{color:#b00}.add{color:#070}.pics{display:flex;gap:2em;flex-wrap:wrap}
h3{margin-top:2em;border-top:1px solid #ddd;padding-top:1em}
"""


def _svg(nodes, title: str, fill: str) -> str:
    """Boxes for the region's nodes in topological layers, with edges where one feeds another."""
    if not nodes:
        return f"<div><b>{title}</b><p>(no nodes)</p></div>"
    graph = nx.DiGraph()
    producers = {}
    for index, node in enumerate(nodes):
        graph.add_node(index)
        for out in node.outputs:
            producers[out] = index
    for index, node in enumerate(nodes):
        for name in node.inputs:
            if name in producers and producers[name] != index:
                graph.add_edge(producers[name], index)
    layers = list(nx.topological_generations(graph)) if nx.is_directed_acyclic_graph(graph) else [list(graph)]
    box_w, box_h, gap_x, gap_y = 170, 30, 20, 28
    width = max(len(layer) for layer in layers) * (box_w + gap_x) + gap_x
    height = len(layers) * (box_h + gap_y) + gap_y
    position = {}
    for row, layer in enumerate(layers):
        for col, index in enumerate(sorted(layer)):
            position[index] = (gap_x + col * (box_w + gap_x), gap_y + row * (box_h + gap_y))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    for a, b in graph.edges:
        (x1, y1), (x2, y2) = position[a], position[b]
        parts.append(f'<line x1="{x1 + box_w / 2}" y1="{y1 + box_h}" x2="{x2 + box_w / 2}" y2="{y2}" stroke="#888"/>')
    for index, node in enumerate(nodes):
        x, y = position[index]
        tip = html.escape(f"{node.op}({', '.join(node.inputs)}) -> {', '.join(node.outputs)}  [{node.module}]")
        label = html.escape(node.op if len(node.op) < 26 else node.op[:24] + "…")
        parts.append(f'<g><title>{tip}</title><rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="4" '
                     f'fill="{fill}" stroke="#555"/><text x="{x + 6}" y="{y + 19}">{label}</text></g>')
    parts.append("</svg>")
    return f"<div><b>{title}</b><br>{''.join(parts)}</div>"


def _diff(text: str) -> str:
    lines = []
    for line in text.splitlines():
        escaped = html.escape(line)
        if line.startswith("-") and not line.startswith("---"):
            lines.append(f'<span class="del">{escaped}</span>')
        elif line.startswith("+") and not line.startswith("+++"):
            lines.append(f'<span class="add">{escaped}</span>')
        else:
            lines.append(escaped)
    return "<pre>" + "\n".join(lines) + "</pre>"


def render(report) -> str:
    rows = []
    for i, r in enumerate(report.records):
        status = ("reverted: " + r.reason) if r.reverted else ("verified" if r.verified else
                                                                ("not verified" if r.verified is False else "-"))
        css = "rev" if r.reverted else ("chg" if r.changed else "")
        name = f'<a href="#pass{i}">{html.escape(r.name)}</a>' if r.changed or r.reverted else html.escape(r.name)
        rows.append(f'<tr class="{css}"><td>{name}</td><td>{html.escape(r.group)}</td><td>{"yes" if r.changed else "no"}</td>'
                    f"<td>{r.nodes_before} &rarr; {r.nodes_after}</td><td>{r.seconds * 1e3:.1f} ms</td>"
                    f"<td>{html.escape(status)}</td></tr>")
    sections = []
    for i, r in enumerate(report.records):
        if not (r.changed or r.reverted):
            continue
        body = [f'<h3 id="pass{i}">{html.escape(r.name)} {html.escape(r.group)}: {r.nodes_before} &rarr; {r.nodes_after} nodes</h3>']
        if r.reverted:
            body.append(f"<p><b>Reverted:</b> {html.escape(r.reason)}</p>")
            if r.traceback:
                body.append(f"<pre>{html.escape(r.traceback)}</pre>")
        if r.fired:
            body.append("<p>Rules fired: " + ", ".join(f"{html.escape(k)} &times;{v}" for k, v in sorted(r.fired.items())) + "</p>")
        if r.module_paths:
            shown = r.module_paths[:40]
            more = f" … and {len(r.module_paths) - 40} more" if len(r.module_paths) > 40 else ""
            body.append("<p>Modules touched: " + ", ".join(f"<code>{html.escape(p)}</code>" for p in shown) + more + "</p>")
        body.append('<div class="pics">' + _svg(r.region_before, "before (removed nodes)", "#fbe3e3")
                    + _svg(r.region_after, "after (added nodes)", "#e3f4e3") + "</div>")
        if r.diff:
            body.append("<details><summary>IR diff</summary>" + _diff(r.diff) + "</details>")
        sections.append("\n".join(body))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>leangraph report: {html.escape(report.model_name)}</title>
<style>{_CSS}</style></head><body>
<h1>leangraph report: {html.escape(report.model_name)}</h1>
<p>backend {html.escape(report.backend)}; nodes {report.nodes_before} &rarr; {report.nodes_after};
capture {report.capture_seconds:.2f} s, passes {report.passes_seconds:.2f} s, compile {report.compile_seconds:.2f} s</p>
<ul>{notes}</ul>
<table><tr><th>pass</th><th>group</th><th>changed</th><th>nodes</th><th>time</th><th>verification</th></tr>
{''.join(rows)}</table>
{''.join(sections)}
</body></html>"""

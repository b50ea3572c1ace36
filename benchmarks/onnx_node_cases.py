"""ONNX's operator cases (onnx.backend.test.case.node) through ONNX Runtime alone and through
leangraph (optimize(..., backend="onnxruntime")): the counts in docs/conformance.md, and every
case one passes and the other does not, with the reason.

    .venv/bin/python benchmarks/onnx_node_cases.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conformance.node_cases import collect, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every case's outcome here")
    args = parser.parse_args()
    cases = collect()
    start, outcomes = time.perf_counter(), []
    for index, name in enumerate(sorted(cases)):
        outcomes.append(run(cases[name]))
        if index % 100 == 0:
            print(f"  {index}/{len(cases)} cases, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    ort = sum(o.onnxruntime == "pass" for o in outcomes)
    ours = sum(o.leangraph == "pass" for o in outcomes)
    print(f"{len(outcomes)} cases: ONNX Runtime alone passes {ort}, leangraph passes {ours}")
    for title, rows in (("ONNX Runtime passes, leangraph does not",
                         [o for o in outcomes if o.onnxruntime == "pass" and o.leangraph != "pass"]),
                        ("leangraph passes, ONNX Runtime alone does not",
                         [o for o in outcomes if o.leangraph == "pass" and o.onnxruntime != "pass"])):
        print(f"\n{title}: {len(rows)}")
        for o in rows:
            print(f"  {o.name}: {(o.leangraph if o.leangraph != 'pass' else o.onnxruntime)[:160]}")
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))


if __name__ == "__main__":
    main()

"""Replay the PQ transition rule on recorded probe curves: where each --eps would have switched (or the cap), and one
PNG with every curve and its recorded switch marked.

Tuning the momentum rule needs no GPU once the held-out probe curves of real runs are recorded: the rule is a
function of the curve alone (``MomentumSwitch.observe``). Inputs are pqcad_table JSONs (rows carry ``probe_curve``)
or an extract of training checkpoints, ``{"runs": {name: {"probe_curve": ..., "switch": {"decided": ...}}}}``
(as in results/pqcad_switch/h100_2026-12-07/train_curves.json).

    python benchmarks/switch_replay.py benchmarks/results/pqcad_switch/h100_2026-12-07/train_curves.json \\
        --eps 0.005 0.01 0.015 0.02 --png benchmarks/results/pqcad_switch/h100_2026-12-07/probe_curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.io import atomic_json_save, read_json_object
from pqcad_deploy.plots import save_curves
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.train.pqcad_momentum import MomentumSwitch

Curve = list[tuple[float, float]]


def load_curves(paths: list[Path]) -> dict[str, tuple[Curve, int | None]]:
    """name -> (probe curve, recorded switch step or None); runs without a probe curve are left out."""
    out: dict[str, tuple[Curve, int | None]] = {}
    for path in paths:
        try:
            doc = read_json_object(path, "a pqcad_table JSON or a curves extract")
        except ValueError as e:
            raise SystemExit(str(e)) from e
        if "rows" in doc:  # a pqcad_table JSON
            items = {f"{r['variant']} s{r.get('seed')}": r for r in doc["rows"]}
        else:
            items = doc.get("runs", doc)
        for name, run in items.items():
            curve = [(float(s), float(v)) for s, v in run.get("probe_curve") or []]
            if not curve:
                continue
            switch = (run.get("switch") or {}).get("decided") or next(
                (h for h in run.get("history") or [] if h.get("event") == "switch"), None
            )
            step = int(switch["step"]) if switch else None
            # branches resumed from one stage-1 checkpoint share its curve: one entry, every name
            same = next((k for k, v in out.items() if v == (curve, step)), None)
            if same is not None:
                out[f"{same} = {name}"] = out.pop(same)
            else:
                out[name] = (curve, step)
    if not out:
        raise SystemExit(f"no probe curve in {', '.join(map(str, paths))}: train with --switch-signal probe")
    return out


def replay(
    curve: Curve, eps: float, patience: int, cap: int, beta: float = PQCADConfig.beta
) -> tuple[int, str]:
    """The step and reason (plateau / cap) at which the rule switches on ``curve``; a curve that ends before either
    gives its last step with reason ``end``."""
    rule = MomentumSwitch(beta=beta, eps=eps, patience=patience, cap=cap)
    for step, value in curve:
        decision = rule.observe(int(step), value)
        if decision is not None:
            return decision.step, decision.reason
    return int(curve[-1][0]), "end"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("curves", type=Path, nargs="+", help="pqcad_table JSONs or checkpoint extracts")
    p.add_argument("--eps", type=float, nargs="+", default=[PQCADConfig.eps])
    p.add_argument("--patience", type=int, default=PQCADConfig.patience)
    p.add_argument("--cap", type=int, default=400, help="stage-1 step cap of the recorded runs")
    p.add_argument("--png", type=Path, help="one panel per curve, recorded switches marked")
    p.add_argument("--json", type=Path, help="the replay table as JSON")
    a = p.parse_args(argv)
    refuse_bad_outputs(p, {"--png": a.png, "--json": a.json}, inputs=a.curves)
    runs = load_curves(a.curves)
    table: dict[str, Any] = {}
    width = max(len(n) for n in runs) + 2
    print(f"{'run':<{width}}{'recorded':>10}" + "".join(f"{'eps ' + format(e, 'g'):>16}" for e in a.eps))
    for name, (curve, recorded) in runs.items():
        cells = {e: replay(curve, e, a.patience, a.cap) for e in a.eps}
        table[name] = {"recorded_switch": recorded, "replay": {str(e): list(c) for e, c in cells.items()}}
        shown = "".join(f"{f'{s} ({r})':>16}" for s, r in cells.values())
        print(f"{name:<{width}}{recorded if recorded is not None else '-':>10}{shown}")
    if a.json:
        atomic_json_save({"args": sys.argv[1:], "runs": table}, a.json)
    if a.png:
        panels, own = {}, {}  # each run's panel, and its own switch marked on it only
        for name, (curve, switched) in runs.items():
            panel = f"{name}: probe eps-error to FP, switched at {switched}"
            panels[panel] = curve
            if switched is not None:
                own[panel] = [(switched, f"switch {switched}")]
        title = "held-out probe curves of recorded PQCAD runs"
        save_curves(a.png, panels, title=title, log_y=False, panel_marks=own)
        print(f"PNG: {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

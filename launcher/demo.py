"""`make demo`: the quickstart sweep (configs/sweep/quickstart.yaml) on a private local Ray, then a table of
final loss, drift/weight_rel and ntk/rel_drift by width (mean over seeds), with each fitted log-log slope, its 95%
interval over seeds and the verdict on the theory's exponent.

Extra arguments are passed to `overparam sweep` (key=value overrides, --address ...). The sweep runs with
--resume: a second `make demo` reuses the finished trials and only prints the table again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from overparam_dist.metrics import names

from .cli import main

PRESET = Path(__file__).resolve().parents[1] / "configs" / "sweep" / "quickstart.yaml"
COLUMNS = (names.TRAIN_LOSS, names.DRIFT_WEIGHT_REL, names.NTK_REL_DRIFT)


def _slope_cell(fit) -> str:
    """'-0.93 [-1.15, -0.71]', or '-' without a fit."""
    if fit is None or fit.slope is None:
        return "-"
    return f"{fit.slope:.2f}" + (f" [{fit.ci95[0]:.2f}, {fit.ci95[1]:.2f}]" if fit.ci95 else " (no interval)")


def width_table(sweep_dir: Path, columns=COLUMNS) -> str:
    """Final metrics by width, the mean over the seeds inside their regime (one block per depth, '-' where a metric
    is missing), then each metric's fitted slope with its 95% interval over seeds and, where the theory predicts an
    exponent, the verdict (analysis/verdicts.py). Trials outside their regime are listed and left out."""
    from overparam_dist.analysis.figures import sweep_param
    from overparam_dist.analysis.plots import against_width
    from overparam_dist.analysis.results import load_sweep as load_results
    from overparam_dist.analysis.theory import law_text, reference

    res = load_results(sweep_dir)
    param = sweep_param(res)
    figs = {c: against_width(res, c, name=c, title=c, caption="", reference=reference(c, param)[0]) for c in columns}
    lines = []
    for depth in res.depths or [None]:
        lines.append(f"depth L = {depth}")
        lines.append(f"  {'width':>7}" + "".join(f"  {c:>26}" for c in columns))
        series = {c: next((s for s in figs[c].panels[0].series if s.label == f"L={depth}" or depth is None), None)
                  for c in columns}
        for w in res.widths:
            cells = []
            for c in columns:
                s = series[c]
                v = s.y[s.x.index(w)] if s is not None and w in s.x else None
                seeds = len([p for pts in (s.meta.get("per_seed", {}) if s else {}).values() for p in pts if p[0] == w])
                cells.append(f"  {f'{v:.4g} ({seeds} seeds)' if v is not None else '-':>26}")
            lines.append(f"  {w:>7}" + "".join(cells))
        fits = {c: s.meta.get("fit") if (s := series[c]) is not None else None for c in columns}
        lines.append(f"  {'slope':>7}" + "".join(f"  {_slope_cell(f):>26}" for f in fits.values()))
        words = [f"{f.verdict.word} ({law_text(f.metric, f.reference)})" if f is not None and f.verdict else "no law"
                 for f in fits.values()]
        lines.append(f"  {'verdict':>7}" + "".join(f"  {w:>26}" for w in words))
    lines.append("slope: d log(metric) / d log(width), per seed, mean and 95% interval over seeds. Lazy-training "
                 "theory (theory.py) bounds both: ntk/rel_drift = O(m^-1/2); weights move O(1/sqrt(m)) against "
                 "||W_0||_F ~ sqrt(2m), so drift/weight_rel = O(m^-1). A verdict needs at least 3 seeds and an "
                 "interval that excludes 0 and reaches the exponent + 0.2 or below (faster is within a bound; "
                 "docs/concepts/verdicts.md).")
    if note := res.flag_note():
        lines.append(note)
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    from overparam_dist.config import ConfigError

    from .sweep.spec import load_sweep

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    runs_dir = "runs"
    if "--runs-dir" in argv:
        runs_dir = argv[argv.index("--runs-dir") + 1]
    rc = main(["sweep", "--config", str(PRESET), "--resume", *argv])
    if rc != 0:
        return rc
    try:
        sweep = load_sweep(PRESET, overrides, runs_dir=runs_dir)
    except ConfigError:
        return rc
    print()
    print(width_table(sweep.dir))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))

"""`overparam report runs/<sweep>`: runs/<sweep>/report/ with one PNG per figure, figures.json (the data each
figure drew, fitted slopes included), index.html (figures + slopes + results table) and, for a sweep that names a
published claim (`reproduces:`), claim.json: the claim beside the measured numbers (repro.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..rundir import CLAIM_FILE, REPORT_DIR, check_writable_dir
from .claims import CLAIMS
from .draw import draw_all
from .html import write_index
from .plots import FigureData
from .repro import Finding, check, this_run
from .results import SweepResults, load_sweep
from .theory import law_text


@dataclass
class LocalReport:
    results: SweepResults
    figures: list[FigureData]
    findings: list[Finding]  # a reproduction's claim, measured, each with its verdict ([] for other sweeps)
    dir: Path
    index: Path

    @property
    def images(self) -> list[Path]:
        return [f.path for f in self.figures if f.path is not None]


def build_local_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> LocalReport:
    """Read the sweep, draw every figure, write figures.json and index.html. ConfigError for a bad directory."""
    res = load_sweep(sweep_dir)
    out = Path(out_dir) if out_dir is not None else res.dir / REPORT_DIR
    check_writable_dir(out, "report directory")
    out.mkdir(parents=True, exist_ok=True)
    checked = check(res)  # once: the findings below and the claim's figure
    figs = draw_all(res, out, checked)
    (out / "figures.json").write_text(json.dumps([f.to_json() for f in figs], indent=1, default=str) + "\n")
    found = checked[0]
    if res.reproduces:  # the paper's claim beside the measured numbers, for scripts and the README gallery
        (out / CLAIM_FILE).write_text(json.dumps({"claim": asdict(CLAIMS[res.reproduces]), "this_run": this_run(res),
                                                  "findings": [asdict(f) for f in found],
                                                  "left_out": {t.name: t.flag for t in res.flagged()}}, indent=1,
                                                 default=str) + "\n")
    index = write_index(res, figs, out, found)
    return LocalReport(results=res, figures=figs, findings=found, dir=out, index=index)


def verdict_lines(rep: LocalReport) -> list[str]:
    """What the terminal shows of a report's conclusions: each theory slope with its interval and verdict, each
    finding of a reproduction, and which trials were left out."""
    lines = [f"  {f.metric} ({f.series}): slope {f.verdict.text()} against {law_text(f.metric, f.reference)}"
             for fig in rep.figures if not fig.name.startswith("repro_") for f in fig.fits if f.verdict is not None]
    if rep.results.critical_width:  # its trials stop when they fit, each at its own step: no width law to judge
        lines = ["  (no width law is judged on a critical-width search: its trials stop at different steps)"]
    elif len(rep.results.widths) < 2:  # one width: no slope to judge, and a line per series would only say so
        lines = []
    lines += [f"  {f.quantity}: {f.verdict.word} ({f.verdict.reason})" for f in rep.findings]
    if note := rep.results.flag_note():
        lines.append(f"  {note}")
    return (["verdicts (95% intervals over seeds):"] + lines) if lines else []

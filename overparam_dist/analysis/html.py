"""index.html of a sweep report: the figures (relative links to the PNGs next to it, and to each one's PDF), the
fitted slopes and the results table. Plain HTML + CSS, no scripts, no network: it opens from a shared file system or
a copied folder."""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any

from ..metrics import names
from ..rundir import RESULTS_FILE, atomic_write
from .claims import CLAIMS
from .plots import FigureData
from .repro import Finding, this_run
from .results import SweepResults
from .verdicts import MIN_SEEDS

# The results table shows these columns first (when present), then the other varying config axes.
TABLE_COLUMNS = [
    "trial", "status", "model.width", "model.depth", "seed", "steps", names.TRAIN_LOSS, names.TRAIN_ACC,
    names.DRIFT_WEIGHT_ABS, names.DRIFT_WEIGHT_REL, names.NTK_REL_DRIFT, names.NTK_LAMBDA_MIN, names.DRIFT_ACT_FLIP,
    names.CONV_STEPS_TO_FIT, names.CONV_RATE, "wall_s",
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:1000px}
table{border-collapse:collapse;font-size:.82em} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4;position:sticky;top:0} td.t{text-align:left} tr:nth-child(even){background:#fafafa}
.muted{color:#777}
"""


def results_table(res: SweepResults) -> tuple[list[str], list[list[Any]]]:
    """The table the report shows (and logs to W&B): key columns and the sweep's varying axes, one row per trial."""
    cols = [c for c in TABLE_COLUMNS if c in res.columns]
    cols += [a for a in res.axes if a not in cols]
    rows = [[t.row.get(c) for c in cols] for t in res.trials]
    return cols, rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def figure_block(f: FigureData) -> str:
    """One figure on a page: its PNG, its caption and a link to the same figure as a PDF (draw.py writes both)."""
    e = html.escape
    return (f"<h2 id='{e(f.name)}'>{e(f.title)}</h2><figure><img src='{e(f.file)}' alt='{e(f.title)}'>"
            f"<figcaption>{e(f.caption)} <a href='{e(f.pdf_file)}'>PDF</a></figcaption></figure>")


def _claim_section(res: SweepResults, found: list[Finding]) -> list[str]:
    """The published claim the sweep reproduces, beside what this sweep measured (repro.py)."""
    e, claim = html.escape, CLAIMS[res.reproduces]
    rows = "".join(f"<tr><td class='t'>{e(f.quantity)}</td><td class='t'>{e(f.paper)}</td>"
                   f"<td class='t'>{e(f.measured)}</td><td class='t verdict'>{e(f.verdict.word)}</td>"
                   f"<td class='t'>{e(f.verdict.reason)}</td></tr>" for f in found)
    note = res.flag_note()
    return [f"<h2 id='claim'>Reproduces: {e(claim.paper)}</h2><p><b>Claim.</b> {e(claim.claim)}</p>"
            f"<p><b>The reproduction's setup.</b> {e(claim.setup)}</p><p><b>This run.</b> {e(this_run(res))}</p>"
            f"<table><tr><th>quantity</th><th>paper</th><th>measured here"
            f"</th><th>verdict</th><th>why</th></tr>{rows}</table>" + (f"<p>{e(note)}</p>" if note else "")]


def write_index(res: SweepResults, figs: list[FigureData], out_dir: Path, found: list[Finding] | None = None) -> Path:
    e = html.escape
    counts: dict[str, int] = {}
    for t in res.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    axes = ", ".join(res.axes) or "none"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(res.name)} — overparam-dist report</title><style>{CSS}</style></head><body>",
        f"<h1>Sweep <code>{e(res.name)}</code></h1>",
        f"<p>{len(res.trials)} trials ({e(', '.join(f'{n} {s}' for s, n in sorted(counts.items())))}); "
        f"axes: {e(axes)}; widths {e(str(res.widths))}, depths {e(str(res.depths))}. "
        f"Source: <a href='../{RESULTS_FILE}'>{RESULTS_FILE}</a> and each trial's metrics.jsonl. "
        f"<span class='muted'>Generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</span></p>",
        "<p>Contents: " + " · ".join(f"<a href='#{e(f.name)}'>{e(f.title.split('(')[0].strip())}</a>" for f in figs)
        + " · <a href='#slopes'>fitted slopes</a> · <a href='#results'>results table</a></p>",
    ]
    if res.reproduces:
        parts += _claim_section(res, found or [])
    parts += [figure_block(f) for f in figs]

    fits = [fit for f in figs for fit in f.fits]
    parts.append("<h2 id='slopes'>Fitted slopes against width (log-log)</h2>")
    if fits:
        method = sorted({fit.method for fit in fits})
        note = res.flag_note()
        parts.append("<p>" + e("; ".join(method)) + ". Verdicts: supported / contradicted / inconclusive, by the rules"
                     f" of verdicts.py (at least {MIN_SEEDS} seeds). {e(note)}</p><table><tr><th>metric</th>"
                     "<th>series</th><th>slope</th><th>95% interval</th><th>theory</th><th>verdict</th><th>why</th>"
                     "<th>per seed</th><th>widths</th></tr>")
        for fit in fits:
            ci = f"[{fit.ci95[0]:.3f}, {fit.ci95[1]:.3f}]" if fit.ci95 else "—"
            per_seed = ", ".join(f"s{k}: {v:.3f}" for k, v in fit.per_seed.items())
            parts.append(
                f"<tr><td class='t'>{e(fit.metric)}</td><td class='t'>{e(fit.series)}</td>"
                f"<td>{'' if fit.slope is None else f'{fit.slope:.3f}'}</td><td>{e(ci)}</td>"
                f"<td>{'' if fit.reference is None else f'{fit.reference:g}'}</td>"
                f"<td class='t verdict'>{'' if fit.verdict is None else fit.verdict.word}</td>"
                f"<td class='t'>{'' if fit.verdict is None else e(fit.verdict.reason)}</td>"
                f"<td class='t'>{e(per_seed)}</td>"
                f"<td class='t'>{e(str(fit.widths))}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class='muted'>No fits (fewer than two widths with values).</p>")

    if res.critical_width:
        cols = list(res.critical_width[0])
        parts.append("<h2 id='critical'>Critical width per cell</h2><table><tr>"
                     + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
        for r in res.critical_width:
            parts.append("<tr>" + "".join(f"<td class='t'>{e(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")

    cols, rows = results_table(res)
    parts.append(f"<h2 id='results'>Results ({len(rows)} trials; every column in "
                 f"<a href='../{RESULTS_FILE}'>{RESULTS_FILE}</a>)</h2><table><tr>"
                 + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
    for r in rows:
        parts.append("<tr>" + "".join(
            f"<td{' class=t' if isinstance(v, str) else ''}>{e(_fmt(v))}</td>" for v in r) + "</tr>")
    parts.append("</table></body></html>\n")
    path = out_dir / "index.html"
    return atomic_write(path, "\n".join(parts))

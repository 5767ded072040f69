"""The report's figures as data. Each function returns a `FigureData`: the series a figure shows (x/y points per
depth), the theory reference lines and the fitted slopes, so tests and the HTML page check data rather than
pixels; draw.py renders it.

Slopes of a metric against width are fitted in log-log space: for each seed, least squares of log(value) on
log(width) over the widths (final value of each trial); the reported slope is the mean over seeds with a
95% Student-t interval over seeds (verdicts.seed_interval). One seed gives no interval: the residuals of one
seed's fit say nothing about the next seed. Where the theory predicts an exponent, the fit carries the verdict
(verdicts.width_law). Trials outside the regime their metrics describe (names.REGIME_FLAGGED) are left out of every
fit and drawn hollow.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps

from ..metrics import names
from ..metrics.fit import fit_line
from .results import DEPTH, WIDTH, SweepResults, Trial, label, number
from .theory import is_bound
from .verdicts import Verdict, seed_interval, width_law

WIDTH_CMAP = colormaps["viridis"]
INTERVAL = "95% Student-t interval over seeds (verdicts.seed_interval); none at a point with one seed"
SERIES_COLORS = colormaps["tab10"]  # one colour per series (depth, noise level): SERIES_COLORS(i % 10)


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    key: tuple = ()
    # The 95% Student-t interval over seeds of a mean over seeds (verdicts.seed_interval), same length as x: None at
    # a point with one seed (one seed gives no interval). meta["per_seed"] holds each seed's own (x, y) values.
    lo: list[float | None] | None = None
    hi: list[float | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlopeFit:
    metric: str
    series: str
    key: tuple
    slope: float | None
    ci95: tuple[float, float] | None
    intercept: float | None  # of the mean fit, log(value) = intercept + slope * log(width)
    method: str
    per_seed: dict[int, float]
    widths: list[int]
    reference: float | None
    verdict: Verdict | None = None  # where the theory predicts an exponent (reference)

    def text(self) -> str:
        if self.slope is None:
            return "slope: n/a"
        ci = f" [{self.ci95[0]:.2f}, {self.ci95[1]:.2f}]" if self.ci95 else ""
        word = f", {self.verdict.word}" if self.verdict is not None else ""
        return f"slope {self.slope:.2f}{ci}{word}"


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)  # the data: one per depth in the plots against width
    references: list[Series] = field(default_factory=list)  # theory lines
    extra: list[Series] = field(default_factory=list)  # secondary data (lambda_min at init, ...)
    xlog: bool = False
    ylog: bool = False
    heatmap: dict[str, Any] | None = None  # {"x": [...], "y": [...], "z": [[...]], "text": [[...]]}


@dataclass
class FigureData:
    name: str  # file stem: <name>.png
    title: str
    caption: str
    panels: list[Panel]
    fits: list[SlopeFit] = field(default_factory=list)
    path: Path | None = None  # the PNG, once drawn; the PDF lies beside it (pdf_file)
    subtitle: str = ""  # a second, smaller title line (what the reference line means)
    footer: str = ""  # provenance line drawn under the figure: code commit, config hash, seed count (provenance.py)

    @property
    def file(self) -> str:
        return f"{self.name}.png"

    @property
    def pdf_file(self) -> str:
        return f"{self.name}.pdf"

    def to_json(self) -> dict:
        def ser(s: Series) -> dict:
            out = {"label": s.label, "key": list(s.key), "x": s.x, "y": s.y, "lo": s.lo, "hi": s.hi}
            if "per_seed" in s.meta:  # each seed's own values, and how many seeds each point averages
                out["per_seed"] = _json_safe({str(k): v for k, v in s.meta["per_seed"].items()})
                out["n_seeds"] = s.meta.get("n_seeds")
            return out

        return {
            "name": self.name, "file": self.file, "pdf": self.pdf_file, "title": self.title,
            "subtitle": self.subtitle, "caption": self.caption, "footer": self.footer,
            "interval": INTERVAL,
            "panels": [{"title": p.title, "xlabel": p.xlabel, "ylabel": p.ylabel, "xlog": p.xlog, "ylog": p.ylog,
                        "series": [ser(s) for s in p.series], "references": [ser(s) for s in p.references],
                        "extra": [ser(s) for s in p.extra], "heatmap": _json_safe(p.heatmap)} for p in self.panels],
            "fits": [{"metric": f.metric, "series": f.series, "slope": f.slope,
                      "ci95": list(f.ci95) if f.ci95 else None, "method": f.method,
                      "per_seed": {str(k): v for k, v in f.per_seed.items()}, "widths": f.widths,
                      "reference": f.reference, "verdict": None if f.verdict is None else asdict(f.verdict)}
                     for f in self.fits],
        }


def _json_safe(v: Any) -> Any:
    """NaN/inf -> None (strict JSON)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


# ----------------------------------------------------------------------------------------------- fits


def fit_loglog(points_by_seed: dict[int, list[tuple[float, float]]], *, metric: str = "", series: str = "",
               key: tuple = (), reference: float | None = None, bound: bool = False) -> SlopeFit:
    """Slope of log(y) against log(x): per seed, then mean ± 95% t-interval over seeds (see the module doc)."""
    per_seed: dict[int, float] = {}
    intercepts: dict[int, float] = {}
    widths: set[int] = set()
    for seed, pts in sorted(points_by_seed.items()):
        pts = [(x, y) for x, y in pts if x > 0 and y is not None and y > 0]
        if len({x for x, _ in pts}) < 2:
            continue
        per_seed[seed], intercepts[seed], _ = fit_line([math.log(p[0]) for p in pts], [math.log(p[1]) for p in pts])
        widths.update(int(p[0]) for p in pts)
    verdict = None if reference is None else width_law(per_seed, reference, bound=bound)
    if not per_seed:
        return SlopeFit(metric, series, key, None, None, None, "fewer than 2 widths with positive values", {},
                        sorted(widths), reference, verdict)
    mean, ci = seed_interval(list(per_seed.values()))
    s = len(per_seed)
    method = (f"per-seed least squares, mean ± 95% t-interval over {s} seeds" if ci else
              "one seed: no interval (an interval comes from seeds)")
    return SlopeFit(metric, series, key, mean, ci, float(np.mean(list(intercepts.values()))), method, per_seed,
                    sorted(widths), reference, verdict)


# ----------------------------------------------------------------------------------------------- data


def seed_band(values: list[float]) -> tuple[float | None, float | None]:
    """(lo, hi) of the 95% t-interval over these seeds' values; (None, None) for fewer than two seeds."""
    ci = seed_interval(values)[1] if len(values) >= 2 else None
    return ci if ci is not None else (None, None)


def _by_x(per_seed: dict[int, list[tuple[float, float]]]) -> dict[float, list[float]]:
    """{seed: [(x, value)]} -> {x: [each seed's value]}, x ascending."""
    out: dict[float, list[float]] = {}
    for pts in per_seed.values():
        for x, v in pts:
            out.setdefault(x, []).append(v)
    return dict(sorted(out.items()))


def from_seeds(label_: str, per_seed: dict[int, list[tuple[float, float]]], key: tuple = (), **meta) -> Series:
    """The mean over seeds at each x with its 95% t-interval over seeds; each seed's own values stay in meta."""
    by_x = _by_x(per_seed)
    bands = [seed_band(v) for v in by_x.values()]
    return Series(label_, list(by_x), [float(np.mean(v)) for v in by_x.values()], key, [b[0] for b in bands],
                  [b[1] for b in bands], {"per_seed": per_seed, "n_seeds": [len(v) for v in by_x.values()], **meta})


def _values_by_width(trials: list[Trial], key: str, *, initial: bool = False) -> dict[int, dict[int, float]]:
    """width -> {seed: value} (final summary value, or the step-0 value)."""
    out: dict[int, dict[int, float]] = {}
    for t in trials:
        if t.width is None:
            continue
        v = t.initial(key) if initial else t.final(key)
        if v is not None:
            out.setdefault(int(t.width), {})[t.seed] = v
    return dict(sorted(out.items()))


def mean_series(res: SweepResults, skey: tuple, trials: list[Trial], key: str, positive: bool,
                 initial: bool = False) -> Series:
    per_seed: dict[int, list[tuple[float, float]]] = {}
    for w, vals in _values_by_width(trials, key, initial=initial).items():
        for seed, v in vals.items():
            if v > 0 or not positive:  # a log axis cannot show the others
                per_seed.setdefault(seed, []).append((w, v))
    return from_seeds(res.series_label(skey), per_seed, skey)


def against_width(res: SweepResults, key: str, *, name: str, title: str, caption: str, subtitle: str = "",
                  ylabel: str | None = None,
                  reference: float | None = None, reference_label: str = "", fit: bool = True,
                  init_too: bool = False) -> FigureData:
    """`key` (final value per trial) against width, one series per depth (and other non-seed axes), log-log,
    mean over seeds with its 95% interval over seeds (bars), per-series fitted slope (95% CI over seeds),
    optional theory line."""
    groups = res.by_series()
    all_vals = [t.final(key) for ts in groups.values() for t in ts if t.flag is None]
    positive = all(v is None or v > 0 for v in all_vals) and any(v is not None for v in all_vals)
    panel = Panel(title=title, xlabel="width m", ylabel=ylabel or key, xlog=True, ylog=positive)
    fits = []
    for i, (skey, trials) in enumerate(groups.items()):
        s = mean_series(res, skey, [t for t in trials if t.flag is None], key, positive)
        flagged = [(t.width, v) for t in trials if t.flag is not None and t.width is not None
                   and (v := t.final(key)) is not None and (v > 0 or not positive)]
        if flagged:  # drawn hollow, in no mean, fit or verdict
            panel.extra.append(Series(f"{s.label}: outside its regime", [p[0] for p in flagged],
                                      [p[1] for p in flagged], skey, meta={"hollow": True, "color_index": i}))
        if fit and positive:
            f = fit_loglog(s.meta["per_seed"], metric=key, series=s.label, key=skey, reference=reference,
                           bound=is_bound(key))
            s.meta["fit"] = f
            fits.append(f)
        panel.series.append(s)
        if init_too:
            s0 = mean_series(res, skey, trials, key, positive, initial=True)
            s0.label = f"{s.label} (init)"
            panel.extra.append(s0)
    if reference is not None and positive:
        pts = [(x, y) for s in panel.series for x, y in zip(s.x, s.y)]
        if pts:
            lx = np.log([p[0] for p in pts])
            ly = np.log([p[1] for p in pts])
            c = float(ly.mean() - reference * lx.mean())
            xr = [float(min(p[0] for p in pts)), float(max(p[0] for p in pts))]
            panel.references.append(Series(reference_label or f"theory: m^{reference:g}", xr,
                                           [math.exp(c + reference * math.log(x)) for x in xr],
                                           meta={"slope": reference}))
    note = res.flag_note()
    return FigureData(name=name, title=title, caption=f"{caption} {note}".strip(), panels=[panel], fits=fits,
                      subtitle=subtitle)


def loss_curves(res: SweepResults, key: str = names.TRAIN_LOSS) -> FigureData:
    """Training loss against step: one panel per depth (and other non-seed axes), one line per trial, coloured by
    width (seeds share their width's colour)."""
    widths = res.widths
    panels = []
    for skey, trials in res.by_series().items():
        p = Panel(title=res.series_label(skey), xlabel="step", ylabel=key)
        ys_all = []
        for t in sorted(trials, key=lambda t: (t.width or 0, t.seed)):
            xs, ys = t.curve(key)
            if not xs:
                continue
            ys_all.extend(ys)
            p.series.append(Series(f"{label(WIDTH, t.width)}, seed {t.seed}", xs, ys, skey,
                                   meta={"width": t.width, "seed": t.seed, "trial": t.name, "flag": t.flag,
                                         "style": "--" if t.flag else "-", "color": _width_color(t.width, widths)}))
        p.ylog = bool(ys_all) and min(ys_all) > 0
        panels.append(p)
    return FigureData(
        name="loss_curves", title=f"{key} during training, coloured by width",
        caption=f"{key} at every logged step of every trial; one panel per depth, colour = width "
                "(darker = narrower), one line per seed; dashed: a trial outside the regime its metrics describe "
                "(its summary's regime is catapult, diverged or dead).", panels=panels)


def _width_color(width: int | None, widths: list[int]):
    if width is None or len(widths) <= 1:
        return WIDTH_CMAP(0.5)
    i = widths.index(width) if width in widths else 0
    return WIDTH_CMAP(0.05 + 0.85 * i / (len(widths) - 1))


def steps_to_fit(res: SweepResults, key: str = names.CONV_STEPS_TO_FIT) -> FigureData:
    """Steps to fit against width (one series per depth) and a width x depth table of it (heatmap)."""
    groups = res.by_series()
    widths = res.widths
    line = Panel(title="steps to fit against width", xlabel="width m", ylabel="steps to fit (mean over seeds "
                 "that fit)", xlog=True)
    zs, texts, rows = [], [], []
    for skey, trials in groups.items():
        by_w: dict[int, list[Trial]] = {}
        for t in trials:
            if t.width is not None:
                by_w.setdefault(int(t.width), []).append(t)
        frac, per_seed = {}, {}
        zrow, trow = [], []
        for w in widths:
            ts = by_w.get(w, [])
            got = [(t.seed, v) for t in ts if (v := number(t.row.get(key))) is not None]
            vals = [v for _, v in got]
            frac[w] = (len(vals), len(ts))
            for seed, v in got:
                per_seed.setdefault(seed, []).append((w, v))
            zrow.append(float(np.mean(vals)) if vals else float("nan"))
            trow.append(f"{np.mean(vals):.0f}\n{len(vals)}/{len(ts)}" if vals else
                        (f"—\n0/{len(ts)}" if ts else ""))
        line.series.append(from_seeds(res.series_label(skey), per_seed, skey,
                                      fitted={w: f"{a}/{b}" for w, (a, b) in frac.items()}))
        zs.append(zrow)
        texts.append(trow)
        rows.append(res.series_label(skey))
    heat = Panel(title="steps to fit: width × depth (mean; fitted seeds / seeds)", xlabel="width m", ylabel="",
                 heatmap={"x": widths, "y": rows, "z": zs, "text": texts})
    return FigureData(
        name="steps_to_fit", title="Steps to fit (100% train accuracy or loss below train.target_loss)",
        caption=f"{key}: the first step at which the trial fits its training set. Left: against width, per depth "
                "(mean over the seeds that fit, bars: 95% interval over those seeds, faint dots: each seed). Right: "
                "the same per (depth, width); — = no seed fit within train.steps.", panels=[line, heat])


def critical_width(res: SweepResults) -> FigureData | None:
    """Phase diagram of a critical-width search: probed widths that fit (●) or did not (×) per cell, and m*."""
    rows = res.critical_width
    if not rows:
        return None
    first = list(rows[0])
    cell_axes = first[:first.index("m_star")] if "m_star" in first else []
    varying = [a for a in cell_axes if len({json.dumps(r.get(a), default=str) for r in rows}) > 1]
    xaxis = next((a for a in ("data.n", DEPTH) if a in varying), varying[0] if varying else None)
    others = [a for a in varying if a != xaxis]
    panel = Panel(title="critical width m*", xlabel=xaxis or "cell", ylabel="width m", ylog=True,
                  xlog=xaxis == "data.n")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(a) for a in others), []).append(r)
    for gkey, rs in groups.items():
        rs = sorted(rs, key=lambda r: (r.get(xaxis) if xaxis else 0) or 0)
        xs, ys, ok_pts, bad_pts = [], [], [], []
        for i, r in enumerate(rs):
            x = r.get(xaxis) if xaxis else i
            probed = r.get("probed_widths") or {}
            if isinstance(probed, str):
                try:
                    probed = json.loads(probed)
                except json.JSONDecodeError:
                    probed = {}
            for w, ok in probed.items():
                (ok_pts if ok else bad_pts).append((x, int(w)))
            if number(r.get("m_star")) is not None:
                xs.append(x)
                ys.append(int(r["m_star"]))
        lab = ", ".join(label(a, v) for a, v in zip(others, gkey)) or "m*"
        panel.series.append(Series(lab, xs, ys, gkey, meta={"fit_ok": ok_pts, "fit_failed": bad_pts}))
    fit = res.critical_width_fit or {}
    caption = ("Each cell's probed widths: ● reached the fit target within train.steps, × did not; the line is "
               "m*, the smallest width that reached it.")
    if fit.get("axes"):
        parts = []
        for sym, key in fit["axes"].items():
            ci = fit.get(f"{sym}_ci95")
            parts.append(f"{key}^{fit[sym]:.2f}" + (f" (95% CI [{ci[0]:.2f}, {ci[1]:.2f}])" if ci else ""))
        caption += " Power-law fit: m* ∝ " + " · ".join(parts) + "."
    return FigureData(name="critical_width", title="Critical width phase diagram", caption=caption, panels=[panel])

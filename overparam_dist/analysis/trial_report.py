"""`overparam report runs/<trial>`: one trial's report in runs/<trial>/report/ — loss, drift and NTK curves over
steps, the probe NTK's spectrum at init and at the end against the infinite-width kernel K_inf where it is known
(ntk_spectrum.json), figures.json with the data each figure drew, and index.html.

Everything is read from the run directory (rundir.py's contract): metrics.jsonl, config.yaml, summary.json and
ntk_spectrum.json. A trial still running, or one logged without the NTK, gets the figures its files allow.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ConfigError
from ..metrics import names
from ..rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    REPORT_DIR,
    SPECTRUM_FILE,
    SUMMARY_FILE,
    atomic_write,
    check_writable_dir,
)
from ..sinks import read_jsonl
from .draw import draw
from .html import CSS, figure_block
from .plots import FigureData, Panel, Series
from .provenance import footer

# (figure name, title, [(panel title, y label, log y, metric keys)])
CURVES = [
    ("loss", "Training loss over steps", [("train/loss", "loss", True, [names.TRAIN_LOSS])]),
    ("drift", "Distance from initialisation over steps", [
        ("relative weight drift", "||θ_t − θ_0||_F / ||θ_0||_F", True, [names.DRIFT_WEIGHT_REL]),
        ("absolute weight drift", "||θ_t − θ_0||_F", True, [names.DRIFT_WEIGHT_ABS]),
        ("ReLU patterns flipped", "fraction of units", False, [names.DRIFT_ACT_FLIP]),
        ("pre-activation movement", "||h_t − h_0||_F / ||h_0||_F", True, [names.FEATURE_DELTA_REL]),
    ]),
    ("ntk", "Distance from the NTK at initialisation over steps", [
        ("kernel drift", "||K_t − K_0||_F / ||K_0||_F", True, [names.NTK_REL_DRIFT]),
        ("extreme eigenvalues", "eigenvalue", True, [names.NTK_LAMBDA_MIN, names.NTK_LAMBDA_MAX]),
    ]),
]


@dataclass
class TrialReport:
    dir: Path
    index: Path
    figures: list[FigureData]


def is_trial_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


def _curve_panel(rows: list[dict], title: str, ylabel: str, ylog: bool, keys: list[str]) -> Panel | None:
    series = []
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
               and (r[key] > 0 or not ylog)]
        if pts:
            series.append(Series(label=key, x=[p[0] for p in pts], y=[p[1] for p in pts], meta={"line": True}))
    if not series:
        return None
    return Panel(title=title, xlabel="step", ylabel=ylabel, series=series, ylog=ylog)


def _layer_keys(rows: list[dict], prefix: str) -> list[str]:
    """The per-layer keys <prefix>/<layer> logged in the rows, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r if k.startswith(prefix + "/")))


def _sharpness_figure(rows: list[dict]) -> FigureData | None:
    """hessian/* over steps against the edge of stability: the edge ratio against 2 and, where one step eta serves
    every parameter (the logged edge ratio is then train/lr x lambda_max), lambda_max against 2/eta."""
    edge = _curve_panel(rows, "sharpness in units of the step: η·λ_max(H); dashed: 2, the edge of stability",
                        "hessian/edge_ratio", True, [names.HESSIAN_EDGE_RATIO])
    if edge is None:
        return None
    xs = edge.series[0].x
    edge.series.append(Series("_", [xs[0], xs[-1]], [2.0, 2.0], meta={"line": True, "style": "--",
                                                                        "color": "black"}))
    top = _curve_panel(rows, "λ_max(H) and its Gauss–Newton part", "eigenvalue", True,
                       [names.HESSIAN_LAMBDA_MAX, names.HESSIAN_LAMBDA_MAX_GN])
    keys = (names.HESSIAN_EDGE_RATIO, names.HESSIAN_LAMBDA_MAX, names.TRAIN_LR)
    uniform = [(r["step"], 2 / lr) for r in rows if all(isinstance(r.get(k), (int, float)) for k in keys)
               and (lr := r[names.TRAIN_LR]) > 0
               and abs(r[keys[0]] - lr * r[keys[1]]) <= 1e-9 * abs(r[keys[0]])]
    if top is not None and uniform:
        top.series.append(Series("2/η", [p[0] for p in uniform], [p[1] for p in uniform],
                                 meta={"line": True, "style": "--", "color": "black"}))
    return FigureData(name="sharpness", title="Sharpness of the training loss over steps (metrics.hessian)",
                      caption="The top eigenvalue of the training loss's Hessian, by Lanczos on Hessian-vector "
                              "products, against gradient descent's edge of stability: η·λ_max = 2. In the kernel "
                              "regime it stays near its value at init; at the edge of stability it rises to 2/η and "
                              "hovers there.", panels=[p for p in (edge, top) if p is not None])


def _feature_figure(rows: list[dict]) -> FigureData | None:
    """Per layer, how far the features moved: the RMS coordinate of h(t) - h(0) and its size relative to h(0)."""
    panels = [p for p in (
        _curve_panel(rows, "RMS coordinate of h_l(t) − h_l(0) (mup's coordinate check)", "feature/delta_rms", True,
                     _layer_keys(rows, names.FEATURE_DELTA_RMS)),
        _curve_panel(rows, "|h_l(t) − h_l(0)| / |h_l(0)|", "feature/delta_rel", True,
                     _layer_keys(rows, names.FEATURE_DELTA_REL))) if p is not None]
    if not panels:
        return None
    return FigureData(name="features", title="Feature movement over steps, per ReLU layer",
                      caption="h_l is the input of ReLU layer l on the probe set. In the kernel regime it moves as "
                              "m^-1/2; when features learn it moves Θ(1).", panels=panels)


def _spectrum_figure(spectrum: dict) -> FigureData | None:
    """Eigenvalues from the largest down, at init, at the end and of K_inf: how far the kernel moved, and whether
    the finite-width kernel is near its infinite-width limit."""
    styles = [("init", "at init (K_0)", "-", "tab:blue"),
              ("end", f"at the end (step {spectrum.get('step_end')})", "--", "tab:orange"),
              ("infinite", "infinite width (K_inf)", ":", "black")]
    series = []
    for key, label, style, color in styles:
        evals = spectrum.get(key)
        if isinstance(evals, list) and evals and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in evals):
            desc = sorted(evals, reverse=True)
            pts = [(i + 1, v) for i, v in enumerate(desc) if v > 0]
            series.append(Series(label=label, x=[p[0] for p in pts], y=[p[1] for p in pts],
                                 meta={"line": True, "style": style, "color": color}))
    if not series:
        return None
    known = "" if spectrum.get("infinite") else " (K_inf is not known in closed form for this model)"
    return FigureData(name="ntk_spectrum", title="Spectrum of the probe NTK" + known,
                      caption="Eigenvalues of the empirical NTK on the probe samples, largest first, at init and at "
                              "the last measured step, against the infinite-width kernel where it is known. In the "
                              "lazy regime the three curves nearly coincide; λ_min sets the convergence rate.",
                      panels=[Panel(title="spectrum", xlabel="index (largest first)", ylabel="eigenvalue",
                                    series=series, xlog=True, ylog=True)])


def _read_json(path: Path) -> dict:
    """A JSON mapping from the run directory, or {} for a missing, damaged or non-mapping file."""
    try:
        data = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def build_trial_report(trial_dir: str | Path, out_dir: str | Path | None = None) -> TrialReport:
    """Draw the trial's figures and write figures.json and index.html. ConfigError for a directory that is not a
    trial's (no metrics.jsonl) or has no logged row."""
    src = Path(trial_dir)
    if not is_trial_dir(src):
        raise ConfigError(f"'{src}' is not a trial directory (no {METRICS_FILE})")
    rows = read_jsonl(src / METRICS_FILE)
    if not rows:
        raise ConfigError(f"'{src / METRICS_FILE}' has no logged step yet")
    out = Path(out_dir) if out_dir is not None else src / REPORT_DIR
    check_writable_dir(out, "report directory")
    out.mkdir(parents=True, exist_ok=True)

    figs: list[FigureData] = []
    for name, title, specs in CURVES:
        panels = [p for p in (_curve_panel(rows, *spec) for spec in specs) if p is not None]
        if panels:
            figs.append(FigureData(name=name, title=title, caption=f"{title}, from {METRICS_FILE}.", panels=panels))
    figs += [f for f in (_sharpness_figure(rows), _feature_figure(rows),
                         _spectrum_figure(_read_json(src / SPECTRUM_FILE))) if f is not None]
    for f in figs:
        f.footer = footer(src / CONFIG_FILE, 1)  # one trial: one seed
        draw(f, out)
    atomic_write(out / "figures.json", json.dumps([f.to_json() for f in figs], indent=1, default=str) + "\n")
    index = _write_index(src, figs, out)
    return TrialReport(dir=out, index=index, figures=figs)


def _write_index(src: Path, figs: list[FigureData], out: Path) -> Path:
    e = html.escape
    summary = _read_json(src / SUMMARY_FILE)
    try:
        cfg = yaml.safe_load((src / CONFIG_FILE).read_text(errors="replace")) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    model = cfg.get("model") if isinstance(cfg, dict) else None
    model = model if isinstance(model, dict) else {}
    what = ", ".join(f"{k} {model[k]}" for k in ("arch", "param", "width", "depth") if k in model)
    facts = "".join(f"<tr><td class='t'>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in summary.items()
                    if not isinstance(v, (dict, list)))
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>{e(src.name)} — overparam-dist trial report</title><style>{CSS}</style></head><body>",
             f"<h1>Trial <code>{e(src.name)}</code></h1>",
             f"<p>{e(what)}; status {e(str(summary.get('status', 'running or interrupted')))}. Source: "
             f"<a href='../{METRICS_FILE}'>{METRICS_FILE}</a>, <a href='../{CONFIG_FILE}'>{CONFIG_FILE}</a>.</p>"]
    parts += [figure_block(f) for f in figs]
    if facts:
        parts.append(f"<h2 id='summary'>Summary ({SUMMARY_FILE})</h2><table>{facts}</table>")
    parts.append("</body></html>\n")
    return atomic_write(out / "index.html", "\n".join(parts))

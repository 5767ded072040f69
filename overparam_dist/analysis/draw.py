"""Rendering the report's figures: each FigureData (plots.py) becomes one PNG, drawn with matplotlib on an Agg canvas
(no pyplot state, so it is safe in any process)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .figures import figures
from .plots import SERIES_COLORS, FigureData, Panel, SlopeFit
from .results import WIDTH, SweepResults, label

DPI = 110


def draw(fig_data: FigureData, out_dir: Path) -> Path:
    """Render a FigureData to out_dir/<name>.png and return the path."""
    n = len(fig_data.panels)
    fig = Figure(figsize=(5.2 * n, 4.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, p in zip(axes, fig_data.panels):
        if p.heatmap is not None:
            _draw_heatmap(fig, ax, p)
        else:
            _draw_panel(ax, p, fig_data)
    head = fig_data.title + (f"\n{fig_data.subtitle}" if fig_data.subtitle else "")
    if n == 1:
        axes[0].set_title(textwrap.fill(fig_data.title, 70) + (
            "\n" + textwrap.fill(fig_data.subtitle, 68) if fig_data.subtitle else ""), fontsize=8.5)
    else:
        fig.suptitle(head, fontsize=10)
    path = out_dir / fig_data.file
    fig.savefig(path)
    fig_data.path = path
    return path


def _draw_panel(ax, p: Panel, fd: FigureData) -> None:
    by_width = fd.name == "loss_curves"
    seen_widths = set()
    for i, s in enumerate(p.series):
        if not s.x:
            continue
        if by_width or s.meta.get("line"):  # a curve over steps; "_" labels stay out of the legend
            w = s.meta.get("width")
            lab = s.label if s.meta.get("line") else (label(WIDTH, w) if w not in seen_widths else None)
            ax.plot(s.x, s.y, s.meta.get("style", "-"), color=s.meta.get("color"), lw=1.2, alpha=0.85, label=lab)
            seen_widths.add(w)
            continue
        color = SERIES_COLORS(i % 10)
        f: SlopeFit | None = s.meta.get("fit")
        lab = s.label + (f": {f.text()}" if f is not None else "")
        if fd.name == "critical_width":
            ok, bad = s.meta.get("fit_ok", []), s.meta.get("fit_failed", [])
            if ok:
                ax.scatter(*zip(*ok), marker="o", color=color, s=24, alpha=0.8,
                           label="probe reached the target" if i == 0 else None)
            if bad:
                ax.scatter(*zip(*bad), marker="x", color="tab:red", s=28,
                           label="probe did not" if i == 0 else None)
            ax.plot(s.x, s.y, "-", color=color, lw=1.8, label="m*" if s.label == "m*" else f"m* ({s.label})")
            xs = sorted({q[0] for q in ok + bad} | set(s.x))
            if not p.xlog and xs and all(isinstance(x, (int, float)) for x in xs):
                ax.set_xticks(xs)
            continue
        yerr = None
        if s.lo is not None and s.hi is not None:
            yerr = np.array([np.subtract(s.y, s.lo), np.subtract(s.hi, s.y)])
        ax.errorbar(s.x, s.y, yerr=yerr, fmt="o-", color=color, ms=4, lw=1.4, capsize=2, label=lab)
        for pts in s.meta.get("per_seed", {}).values():
            ax.scatter([q[0] for q in pts], [q[1] for q in pts], color=color, s=8, alpha=0.35, lw=0)
        if f is not None and f.slope is not None and len(s.x) >= 2:
            xr = np.array([min(s.x), max(s.x)], dtype=float)
            ax.plot(xr, np.exp(f.intercept + f.slope * np.log(xr)), ":", color=color, lw=1.0)
    for s in p.extra:
        if s.meta.get("hollow") and s.x:  # outside its regime: a point, in no fit
            ax.scatter(s.x, s.y, marker="o", s=30, facecolors="none", lw=1.2,
                       edgecolors=SERIES_COLORS(s.meta.get("color_index", 0) % 10), label=s.label)
    measured = [s for s in p.extra if not s.meta.get("infinite_width") and not s.meta.get("hollow")]
    limits = [s for s in p.extra if s.meta.get("infinite_width")]  # a limit, not a measurement: dotted
    for i, s in enumerate(measured):
        if s.x:
            ax.plot(s.x, s.y, "s--", color=SERIES_COLORS(i % 10), ms=3, lw=0.9, alpha=0.6, label=s.label)
    for i, s in enumerate(limits):
        if s.x:
            ax.plot(s.x, s.y, "_:", color=SERIES_COLORS(i % 10), ms=9, lw=1.6, label=s.label)
    for s in p.references:
        ax.plot(s.x, s.y, "--", color="black", lw=1.3, alpha=0.7, label=s.label)
    if p.xlog:
        ax.set_xscale("log", base=2)
        if p.xlabel.startswith("width"):
            _plain_width_ticks(ax.xaxis)
    if p.ylog:
        ax.set_yscale("log", base=2 if p.ylabel.startswith("width") else 10)
        if p.ylabel.startswith("width"):
            _plain_width_ticks(ax.yaxis)
    ax.set_xlabel(p.xlabel)
    ax.set_ylabel(p.ylabel)
    if len(fd.panels) > 1:
        ax.set_title(p.title, fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def _plain_width_ticks(axis) -> None:
    """Widths on a base-2 log axis, labelled 32, 64, ... rather than 2^5, 2^6."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=2))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _draw_heatmap(fig, ax, p: Panel) -> None:
    h = p.heatmap
    z = np.array(h["z"], dtype=float) if h["z"] else np.zeros((0, 0))
    if z.size:
        im = ax.imshow(np.ma.masked_invalid(z), cmap="magma_r", aspect="auto")
        fig.colorbar(im, ax=ax, shrink=0.8, label="steps")
        finite = z[np.isfinite(z)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i, row in enumerate(h["text"]):
            for j, t in enumerate(row):
                ax.text(j, i, t, ha="center", va="center", fontsize=7,
                        color="white" if np.isfinite(z[i, j]) and z[i, j] > mid else "black")
    ax.set_xticks(range(len(h["x"])), [str(x) for x in h["x"]])
    ax.set_yticks(range(len(h["y"])), h["y"])
    ax.set_xlabel(p.xlabel)
    ax.set_title(p.title, fontsize=9)


def draw_all(res: SweepResults, out_dir: Path) -> list[FigureData]:
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = figures(res)
    for f in figs:
        draw(f, out_dir)
    return figs

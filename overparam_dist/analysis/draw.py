"""Rendering the report's figures: each FigureData (plots.py) becomes one PNG and, beside it, the same figure as a
PDF (vector, for a paper), drawn with matplotlib on an Agg canvas (no pyplot state, so it is safe in any process).

What a paper needs of them: means over seeds with their 95% intervals over seeds and each seed faint, log axes
labelled in plain numbers, legends that leave the data visible, titles wrapped rather than clipped, and a footer
saying which code, config and seeds made the figure (FigureData.footer)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation
from matplotlib.transforms import offset_copy

from .figures import figures
from .plots import SERIES_COLORS, FigureData, Panel, Series, SlopeFit
from .results import WIDTH, SweepResults, label

DPI = 110
PANEL_W, PANEL_H = 5.2, 4.2  # inches per panel
FOOTER_PT = 13  # room kept under the axes for the footer line
BELOW_AXES_PT = 40  # from the axes' bottom edge past the tick labels and the x label: where a legend below starts
LEGEND_ROW_PT = 11  # height of one legend row at fontsize 7
DODGE = 0.04  # series i of k on a log-2 x axis is drawn at x * 2^(DODGE * (i - (k-1)/2)): bars side by side, not on
# top of each other (a 64 -> 128 step is 1 in these units)


def draw(fig_data: FigureData, out_dir: Path) -> Path:
    """Render a FigureData to out_dir/<name>.png and out_dir/<name>.pdf; returns the PNG's path (fig_data.path)."""
    n = len(fig_data.panels)
    fig = Figure(figsize=(PANEL_W * n, PANEL_H), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    rows_below = 0  # legend rows drawn under the axes: the figure grows by them, so the axes keep their size
    for ax, p in zip(axes, fig_data.panels):
        if p.heatmap is not None:
            _draw_heatmap(fig, ax, p)
        else:
            _draw_panel(ax, p, fig_data)
            rows_below = max(rows_below, _legend(fig, ax))
    if n == 1:
        axes[0].set_title(textwrap.fill(fig_data.title, 70) + (
            "\n" + textwrap.fill(fig_data.subtitle, 68) if fig_data.subtitle else ""), fontsize=8.5)
    else:  # wrapped to the figure's width (about 12 characters of 10 pt per inch), never clipped at its edges
        wrap = int(12 * PANEL_W * n)
        fig.suptitle("\n".join(textwrap.fill(t, wrap) for t in (fig_data.title, fig_data.subtitle) if t),
                     fontsize=10)
    height = PANEL_H + ((BELOW_AXES_PT + rows_below * LEGEND_ROW_PT) / 72 if rows_below else 0.0)
    fig.set_size_inches(PANEL_W * n, height)
    if fig_data.footer:  # bottom left, in a strip the layout keeps free
        fig.get_layout_engine().set(rect=(0, FOOTER_PT / 72 / height, 1, 1 - FOOTER_PT / 72 / height))
        fig.text(0.004, 0.004, fig_data.footer, fontsize=6.5, color="0.35", ha="left", va="bottom")
    path = out_dir / fig_data.file
    fig.savefig(path)
    # The PDF: TrueType fonts (Type 3, matplotlib's default, is refused by some publishers), and no creation date, so
    # the same data draws the same bytes.
    with rc_context({"pdf.fonttype": 42}):
        fig.savefig(out_dir / fig_data.pdf_file, metadata={"CreationDate": None, "Subject": fig_data.footer or None})
    fig_data.path = path
    return path


def _legend(fig, ax) -> int:
    """Inside the axes where it covers least, see-through, when it is small; else below the axes (inside, many or
    long entries would cover data), in as many columns as fit. Returns the rows it takes below the axes."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return 0
    longest = max(len(t) for t in labels)
    if len(labels) <= 3 and longest <= 24:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
        return 0
    ncols = max(1, min(len(labels), 4, int(PANEL_W * 72 / 3.6) // (longest + 8)))  # ~3.6 pt a character at 7 pt
    below = offset_copy(ax.transAxes, fig=fig, y=-BELOW_AXES_PT, units="points")
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below,
              ncols=ncols, frameon=False)
    return math.ceil(len(labels) / ncols)


def _mean_with_seeds(ax, s: Series, color, fmt: str, label_: str | None, shift: float = 1.0, **style) -> None:
    """A mean over seeds: the line with its 95% interval over seeds as bars (none where one seed), each seed's own
    value a faint dot; drawn at x * shift. On a log axis a bar that reaches 0 or below runs off the bottom edge."""
    y = np.asarray(s.y, dtype=float)
    yerr = None
    if s.lo is not None and s.hi is not None:
        lo = np.array([np.nan if v is None else v for v in s.lo], dtype=float)  # NaN: no bar
        hi = np.array([np.nan if v is None else v for v in s.hi], dtype=float)
        yerr = np.array([y - lo, hi - y])
    ax.errorbar(np.asarray(s.x, dtype=float) * shift, y, yerr=yerr, fmt=fmt, color=color, capsize=2, label=label_,
                **style)
    for pts in s.meta.get("per_seed", {}).values():
        ax.scatter([q[0] * shift for q in pts], [q[1] for q in pts], color=color, s=8, alpha=0.35, lw=0)


def _draw_panel(ax, p: Panel, fd: FigureData) -> None:
    by_width = fd.name == "loss_curves"
    seen_widths = set()
    k = len(p.series)
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
        shift = 2 ** (DODGE * (i - (k - 1) / 2)) if p.xlog else 1.0
        _mean_with_seeds(ax, s, color, "o-", lab, shift, ms=4, lw=1.4)
        if f is not None and f.slope is not None and len(s.x) >= 2:
            xr = np.array([min(s.x), max(s.x)], dtype=float)
            ax.plot(xr, np.exp(f.intercept + f.slope * np.log(xr)), ":", color=color, lw=1.0)
    for s in p.extra:
        if s.meta.get("hollow") and s.x:  # outside its regime: a point, in no fit
            ax.scatter(s.x, s.y, marker="o", s=30, facecolors="none", lw=1.2,
                       edgecolors=SERIES_COLORS(s.meta.get("color_index", 0) % 10), label=s.label)
    measured = [s for s in p.extra if not s.meta.get("infinite_width") and not s.meta.get("hollow")]
    limits = [s for s in p.extra if s.meta.get("infinite_width")]  # a limit, not a measurement: dotted
    for i, s in enumerate(measured):  # at init: means over seeds as well
        if s.x:
            _mean_with_seeds(ax, s, SERIES_COLORS(i % 10), "s--", s.label, ms=3, lw=0.9, alpha=0.6)
    for i, s in enumerate(limits):
        if s.x:
            _mean_with_seeds(ax, s, SERIES_COLORS(i % 10), "_:", s.label, ms=9, lw=1.6)
    for s in p.references:
        ax.plot(s.x, s.y, "--", color="black", lw=1.3, alpha=0.7, label=s.label)
    if p.xlog:  # widths, sample counts: powers of 2, labelled 64, 256, 1024
        ax.set_xscale("log", base=2)
        _plain_log_ticks(ax.xaxis, 2)
    if p.ylog:
        base = 2 if p.ylabel.startswith("width") else 10
        ax.set_yscale("log", base=base)
        _plain_log_ticks(ax.yaxis, base)
    ax.set_xlabel(p.xlabel)
    ax.set_ylabel(p.ylabel)
    if len(fd.panels) > 1:
        ax.set_title(textwrap.fill(p.title, 60), fontsize=9)
    ax.grid(True, which="both", alpha=0.25)


def _plain_log_ticks(axis, base: int) -> None:
    """Plain numbers on a log axis: 32, 64, ... rather than 2^5, 2^6 on base 2; 0.02, 0.1, 3 rather than 2×10^-2
    on base 10 (minor ticks labelled too where the axis spans under a decade or so, as matplotlib decides)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if base == 2:
        axis.set_major_locator(LogLocator(base=2))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 1 and v == int(v) else f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_formatter(_PlainLog(base))
        axis.set_minor_formatter(_PlainLog(base, labelOnlyBase=False))


class _PlainLog(LogFormatterSciNotation):
    """matplotlib's own choice of which log ticks to label, each written 0.02 rather than 2×10^-2 (within 1e-4 to
    1e5; outside, plain numbers grow too long and the power of ten reads better)."""

    def __call__(self, x, pos=None):
        text = super().__call__(x, pos)
        return f"{x:g}" if text and 1e-4 <= abs(x) < 1e5 else text


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


def draw_all(res: SweepResults, out_dir: Path, checked: tuple | None = None) -> list[FigureData]:
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = figures(res, checked=checked)
    for f in figs:
        draw(f, out_dir)
    return figs

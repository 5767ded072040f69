"""W&B side of a sweep report.

- `log_summary_run`: one run with job_type="summary" in the sweep's W&B group (offline by default, like the
  trials) holding the report's figures as images, the results table and the fitted slopes as wandb.Tables.
  Best effort: a W&B error is one WandbWarning.
- `build_wandb_report`: a W&B Report (wandb-workspaces) over the sweep's group: line plots of loss and drift grouped
  by config.model.width, scatters of final drift against width, the results table, the figures.
- `report_spec`: the JSON a W&B Report saves, computed offline (no login): the run set's project is named by
  entity/project only, since its internal id needs a server lookup.
- `save_wandb_report`: needs a login; the caller decides what to do without one (`wandb_logged_in`).
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..metrics import names
from ..rundir import atomic_write
from ..sinks import wandb_init, wandb_mode, warn_wandb
from .results import WIDTH, SweepResults

SUMMARY_RUN_FILE = "wandb_summary_run.json"  # in runs/<sweep>/: the summary run's id and its last step
SPEC_FILE = "wandb_report.json"
RESULTS_TABLE = "results"
SLOPES_TABLE = "slopes"
CLAIM_TABLE = "claim"  # a reproduction's findings, each with its verdict
IMAGE_PREFIX = "report/"
LINE_METRICS = (names.TRAIN_LOSS, names.NTK_REL_DRIFT, names.DRIFT_WEIGHT_ABS)
SCATTER_METRICS = (names.DRIFT_WEIGHT_REL, names.NTK_REL_DRIFT)


# -------------------------------------------------------------------------------------------- summary run


def _summary_run_state(sweep_dir: Path) -> dict:
    path = sweep_dir / SUMMARY_RUN_FILE
    try:
        state = json.loads(path.read_text())
        if isinstance(state, dict) and state.get("id"):
            return state
    except (OSError, json.JSONDecodeError):
        pass
    return {"id": hashlib.sha1((str(sweep_dir.resolve()) + "#summary").encode()).hexdigest()[:16], "step": -1}


@dataclass(frozen=True)
class SummaryRun:
    id: str
    step: int | None  # the step this report was logged at; None: its tables equal the last ones, nothing logged


def log_summary_run(report, *, mode: str | None = None) -> SummaryRun | None:
    """Log `report` (an analysis.report.LocalReport) to the sweep's summary run. Returns the run and the step
    logged, or None when W&B is disabled or failed (one WandbWarning). The run's files go to runs/<sweep>/wandb/,
    next to the trials'.

    The id is kept in runs/<sweep>/wandb_summary_run.json, so a new report of the same sweep continues the same
    run (resume="allow") at the next step: the latest figures and table are the run's summary. A report whose
    tables equal the last one logged (a second `make demo`, which reuses the finished trials) logs nothing: no
    duplicate history step, no new table versions.
    """
    res: SweepResults = report.results
    mode = mode or wandb_mode(str(res.wandb_setting("mode", "offline")))
    if mode == "disabled":
        return None
    state = _summary_run_state(res.dir)
    from .html import results_table

    cols = [c for c in res.columns if c != "error"] + (["error"] if "error" in res.columns else [])
    data = [[_cell(t.row.get(c)) for c in cols] for t in res.trials]
    fits = [f for fig in report.figures for f in fig.fits]
    slopes = [[f.metric, f.series, f.slope, f.ci95[0] if f.ci95 else None, f.ci95[1] if f.ci95 else None,
               f.reference, None if f.verdict is None else f.verdict.word,
               None if f.verdict is None else f.verdict.reason, len(f.per_seed), f.method] for f in fits]
    claims = [[f.quantity, f.paper, f.measured, f.verdict.word, f.verdict.reason] for f in report.findings]
    short_cols, short_rows = results_table(res)
    short = [[_cell(v) for v in r] for r in short_rows]
    digest = hashlib.sha1(json.dumps([cols, data, slopes, claims, short_cols, short], default=str).encode()).hexdigest()
    if state.get("digest") == digest:
        return SummaryRun(state["id"], None)
    try:
        import wandb

        run = wandb_init(
            mode=mode, project=str(res.wandb_setting("project", "overparam-dist")),
            entity=str(res.wandb_setting("entity", "") or ""), group=res.group, job_type="summary",
            name=f"{res.name}-summary", run_id=state["id"], out_dir=res.dir,
            config={"sweep": res.name, "trials": len(res.trials), "axes": res.axes, "widths": res.widths,
                    "depths": res.depths})
        try:
            step = int(state.get("step", -1)) + 1
            row: dict[str, Any] = {
                RESULTS_TABLE: wandb.Table(columns=cols, data=data, allow_mixed_types=True),
                SLOPES_TABLE: wandb.Table(
                    columns=["metric", "series", "slope", "ci95_lo", "ci95_hi", "theory", "verdict", "why", "seeds",
                             "method"], data=slopes, allow_mixed_types=True),
                "results_short": wandb.Table(columns=short_cols, data=short, allow_mixed_types=True),
            }
            if claims:
                row[CLAIM_TABLE] = wandb.Table(columns=["quantity", "paper", "measured", "verdict", "why"],
                                               data=claims, allow_mixed_types=True)
            for fig in report.figures:
                if fig.path is not None:
                    row[IMAGE_PREFIX + fig.name] = wandb.Image(str(fig.path), caption=fig.title)
            run.log(row, step=step, commit=True)
            for f in fits:
                if f.slope is not None:
                    run.summary[f"slope/{f.metric}/{f.series}"] = f.slope
        finally:
            run.finish()
        atomic_write(res.dir / SUMMARY_RUN_FILE, json.dumps({"id": state["id"], "step": step, "digest": digest}) + "\n")
        return SummaryRun(state["id"], step)
    except Exception as exc:
        warn_wandb("W&B summary run not logged", exc)
        return None


def _cell(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    if isinstance(v, float) and v != v:
        return None
    return v


# -------------------------------------------------------------------------------------------- W&B Report


def build_wandb_report(res: SweepResults, entity: str, project: str, title: str | None = None):
    """The W&B Report object (wandb-workspaces): built offline; saving it needs a login."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    group = res.group
    runset = wr.Runset(entity=entity, project=project, name=f"sweep {group}",
                       filters=expr.And(expr.Metric("Group") == group))

    def layout(i: int, w: int = 8, h: int = 7) -> Any:
        return wr.Layout(x=(i % 3) * 8, y=(i // 3) * h, w=w, h=h)

    panels: list[Any] = []
    for key in LINE_METRICS:
        panels.append(wr.LinePlot(
            title=f"{key} by width", x="Step", y=[key], groupby=wr.Config(WIDTH), groupby_aggfunc="mean",
            groupby_rangefunc="minmax", log_y=key == names.TRAIN_LOSS, layout=layout(len(panels))))
    for key in SCATTER_METRICS:
        panels.append(wr.ScatterPlot(
            title=f"final {key} against width", x=wr.Config(WIDTH), y=wr.SummaryMetric(key), log_x=True,
            log_y=True, layout=layout(len(panels))))
    panels.append(wr.ScatterPlot(title=f"{names.CONV_STEPS_TO_FIT} against width", x=wr.Config(WIDTH),
                                 y=wr.SummaryMetric(names.CONV_STEPS_TO_FIT), log_x=True, layout=layout(len(panels))))
    rows = (len(panels) + 2) // 3
    table = wr.WeavePanelSummaryTable(table_name=RESULTS_TABLE, layout=wr.Layout(x=0, y=rows * 7, w=24, h=12))
    media = wr.MediaBrowser(title="report figures (matplotlib, with fitted slopes)",
                            media_keys=[IMAGE_PREFIX + n for n in ("drift_weight_abs", "drift_weight_rel",
                                                                   "ntk_rel_drift", "loss_curves")],
                            num_columns=2, layout=wr.Layout(x=0, y=rows * 7 + 12, w=24, h=14))
    widths = ", ".join(map(str, res.widths))
    depths = ", ".join(map(str, res.depths))
    blocks = [
        wr.P(f"Sweep {res.name}: {len(res.trials)} trials, widths {widths}, depths {depths}. Runs of W&B group "
             f"'{group}' (job_type trial: one per trial; job_type summary: the report's figures and tables)."),
        wr.H2("Training and drift from initialisation, grouped by width"),
        wr.PanelGrid(runsets=[runset], panels=panels + [table, media]),
        wr.P("Theory (Allen-Zhu, Li & Song 2018): ‖θ_t − θ_0‖_F and the NTK drift fall like m^-1/2; with the "
             "paper's init ‖θ_0‖_F grows like √m, so drift/weight_rel falls like m^-1. The fitted slopes with 95% "
             "intervals over seeds are in the summary run's 'slopes' table and figures."),
    ]
    return wr.Report(entity=entity, project=project, title=(title or f"overparam-dist sweep {res.name}")[:128],
                     description=f"width x depth sweep {res.name} (W&B group {group})", blocks=blocks)


def report_spec(report) -> dict:
    """The report's saved form (`ReportViewspec`: title, project, spec with blocks/panels/run sets), without a
    login: run sets are converted with their project left out (that lookup needs the server), then named by
    entity/project. Panel and run-set content is exactly what `save()` uploads."""
    import wandb_workspaces.reports.v2 as wr

    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    saved = [(rs, rs.entity, rs.project) for g in grids for rs in g.runsets]
    try:
        for rs, _, _ in saved:
            rs.project = ""
        model = report._to_model()
    finally:
        for rs, entity, project in saved:
            rs.project = project
    spec = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    it = iter(saved)
    for block in spec.get("spec", {}).get("blocks", []):
        for rs in block.get("metadata", {}).get("runSets", []) if isinstance(block, dict) else []:
            _, entity, project = next(it)
            rs["project"] = {"entityName": entity, "name": project}
    return spec


def write_spec(report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, json.dumps(report_spec(report), indent=1) + "\n")


def wandb_logged_in() -> bool:
    """Whether W&B credentials are configured here (WANDB_API_KEY, an identity token, or a .netrc entry for the W&B
    host), checked without a network call and without ever prompting."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
        return bool(auth and auth[2])
    except (OSError, netrc.NetrcParseError):
        return False


def save_wandb_report(report) -> str:
    """Save (needs a login and the network) and return the report's URL."""
    report.save()
    return report.url

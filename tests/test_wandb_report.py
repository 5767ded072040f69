"""W&B logging (offline files read back), the sweep report (plots checked by their data, index.html), the summary
run, the W&B Report spec and `wandb sync`. No Ray: the finished sweep is built with run_trial directly."""

import csv
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, kill_after_checkpoint, read_rows, read_summary

from overparam_dist.config import flatten, load_config, to_dict
from overparam_dist.sinks import WandbWarning, wandb_history_steps, wandb_mode
from overparam_dist.train import run_trial

FAKE_KEY = "fake-key-1234567890abcdef"
WANDB = str(Path(sys.executable).with_name("wandb"))
WIDTHS, DEPTHS, SEEDS = [16, 32, 64], [1, 2], [0, 1]
# lr_scale 0.4: well inside the stability edge at every width (lr * lambda_max(Theta_0) / n = 0.4), so every trial
# is inside its regime and in every fit.
TINY = ["data.n=16", "train.steps=20", "metrics.every=5", "train.stop_at_fit=false", "checkpoint.every=0",
        "run.quiet=true", "train.lr_scale=0.4"]
REPORT_PNGS = ["loss_curves", "drift_weight_abs", "drift_weight_rel", "ntk_rel_drift", "ntk_init_gap", "ntk_lambda_min",
               "act_flips", "ntk_lin_gap", "drift_neuron_max", "steps_to_fit", "critical_width"]


# ---------------------------------------------------------------------------------------------- helpers


def records(wandb_file: Path | None) -> list[dict]:
    """Every record of a .wandb transaction log, via `wandb leet inspect --json` ([] for no file)."""
    if wandb_file is None:
        return []
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(wandb_file)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_file(offline_run: Path) -> Path | None:
    files = list(offline_run.glob("run-*.wandb"))
    assert len(files) <= 1, files
    return files[0] if files else None


def history(recs: list[dict]) -> dict[int, dict]:
    return {int(r["history"]["step"]["num"]): r["history"]["item"] for r in recs if r["type"] == "history"}


def final_summary(recs: list[dict]) -> dict:
    out: dict = {}
    for r in recs:
        if r["type"] == "summary":
            out.update(r["summary"].get("update", {}))
    return out


def run_record(recs: list[dict]) -> dict:
    (run,) = [r["run"] for r in recs if r["type"] == "run"]
    return run


def sub_env(**extra: str) -> dict:
    """The environment for a subprocess: without WANDB_SERVICE, which an in-process wandb.init of an earlier test
    exports (a child would otherwise use this process's W&B service, which outlives it and writes lazily)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(extra)
    return env


def flush_wandb() -> None:
    """Make this process's W&B service write everything out (run.finish() leaves a shared service running)."""
    import wandb

    wandb.teardown()


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m launcher.report ...` (the report/wandb subcommands; `overparam report` once wired in cli.py)."""
    return subprocess.run([sys.executable, "-m", "launcher.report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env if env is not None else sub_env())


def no_login_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in sub_env().items() if k not in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_CONFIG_DIR=str(home / ".config" / "wandb"))
    return env


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _write_results(sweep_dir: Path, rows: list[dict]) -> None:
    """results.csv as the sweep driver writes it (trial, status, flattened config, summary columns)."""
    from overparam_dist.analysis.results import write_results

    write_results(sweep_dir, rows)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A finished 3 widths x 2 depths x 2 seeds sweep (plus a critical-width table), W&B left at its default
    (offline) in the configs but disabled through WANDB_MODE while training, for speed."""
    sdir = tmp_path_factory.mktemp("runs") / "tiny"
    sdir.mkdir()
    old = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "disabled"
    rows = []
    try:
        for w in WIDTHS:
            for d in DEPTHS:
                for s in SEEDS:
                    name = f"w{w}-d{d}-s{s}"
                    cfg = load_config(None, [f"model.width={w}", f"model.depth={d}", f"seed={s}",
                                             f"run.dir={sdir / name}", f"run.name={name}", "wandb.group=tiny", *TINY])
                    summary = run_trial(cfg)
                    row = {"trial": name, "status": summary["status"], **flatten(to_dict(cfg))}
                    row.update({k: v for k, v in summary.items() if k not in row and k != "status"})
                    rows.append(row)
    finally:
        if old is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = old
    _write_results(sdir, rows)
    # A critical-width table in launcher/critical_width.py's layout: one row per cell (here: depth).
    with open(sdir / "critical_width.csv", "w", newline="") as f:
        cols = ["model.depth", "m_star", "status", "trial", "steps_to_fit", "smaller_width", "smaller_reached",
                "probes", "probed_widths"]
        wr = csv.DictWriter(f, fieldnames=cols)
        wr.writeheader()
        for d, m_star, probed in [(1, 32, {"16": False, "32": True}), (2, 64, {"16": False, "32": False, "64": True})]:
            wr.writerow({"model.depth": d, "m_star": m_star, "status": "found", "trial": f"w{m_star}-d{d}-s0",
                         "steps_to_fit": 10, "smaller_width": m_star // 2, "smaller_reached": False,
                         "probes": len(probed), "probed_widths": json.dumps(probed)})
    return sdir


def _summaries(sdir: Path) -> dict[tuple, dict]:
    out = {}
    for w in WIDTHS:
        for d in DEPTHS:
            for s in SEEDS:
                out[(w, d, s)] = read_summary(sdir / f"w{w}-d{d}-s{s}")
    return out


# ---------------------------------------------------------------------------------------------- report


def test_report_plots_hold_the_sweep_data(sweep_dir, tmp_path):
    from matplotlib.image import imread

    from overparam_dist.analysis.report import build_local_report

    out = tmp_path / "report"
    rep = build_local_report(sweep_dir, out)
    figs = {f.name: f for f in rep.figures}
    assert sorted(figs) == sorted(REPORT_PNGS)
    for name in REPORT_PNGS:
        img = imread(out / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, name
        assert float(img[..., :3].std()) > 0.01, f"{name}.png is blank"

    summaries = _summaries(sweep_dir)
    for name, key, ref in [("drift_weight_rel", "drift/weight_rel", -1.0),
                           ("drift_weight_abs", "drift/weight_abs", -0.5), ("ntk_rel_drift", "ntk/rel_drift", -0.5),
                           ("ntk_init_gap", "ntk/init_gap", -0.5), ("ntk_lin_gap", "ntk/lin_gap", -0.5),
                           ("drift_neuron_max", "drift/neuron_max", -1.0)]:
        (panel,) = figs[name].panels
        assert panel.xlog and panel.ylog
        assert [s.label for s in panel.series] == [f"L={d}" for d in DEPTHS], name  # one series per depth
        for d, s in zip(DEPTHS, panel.series):
            # A point per width, but for ntk/lin_gap where the linearisation was unstable: there the trials logged
            # none and say why, and the report leaves that width out (none is, at TINY's step).
            widths = [w for w in WIDTHS if all(summaries[(w, d, seed)].get(key) is not None for seed in SEEDS)]
            stable = [w for w in WIDTHS if all(summaries[(w, d, seed)]["lin_gap_off"] is None for seed in SEEDS)]
            assert widths == (stable if key == "ntk/lin_gap" else WIDTHS) and len(widths) >= 2, (name, widths)
            assert s.x == widths, name
            want = [np.mean([summaries[(w, d, seed)][key] for seed in SEEDS]) for w in widths]
            assert s.y == pytest.approx(want, rel=1e-12), name
            # The fitted slope: least squares per seed in log-log, mean over seeds, t-interval around it.
            fit = s.meta["fit"]
            per_seed = [np.polyfit(np.log(widths), np.log([summaries[(w, d, seed)][key] for w in widths]), 1)[0]
                        for seed in SEEDS]
            assert fit.slope == pytest.approx(np.mean(per_seed), rel=1e-9)
            assert fit.ci95[0] < fit.slope < fit.ci95[1] and fit.reference == ref
        (line,) = panel.references  # the theory line has the theory's slope
        slope = math.log(line.y[1] / line.y[0]) / math.log(line.x[1] / line.x[0])
        assert slope == pytest.approx(ref)
        assert figs[name].fits and all(f.metric == key for f in figs[name].fits)

    for name in ("ntk_lambda_min", "act_flips"):
        (panel,) = figs[name].panels
        assert len(panel.series) == len(DEPTHS) and all(s.x == WIDTHS for s in panel.series), name
    extra = figs["ntk_lambda_min"].panels[0].extra  # the init values per depth, then K_inf's per depth
    assert [len(s.x) for s in extra] == [len(WIDTHS)] * 2 * len(DEPTHS)
    for d, s in zip(DEPTHS, extra[len(DEPTHS):]):
        assert s.meta["infinite_width"] and s.y == pytest.approx(
            [np.mean([summaries[(w, d, seed)]["ntk/lambda_min_inf"] for seed in SEEDS]) for w in WIDTHS], rel=1e-12)

    # Loss curves: a panel per depth, a line per trial, its points exactly the metrics.jsonl rows.
    loss = figs["loss_curves"]
    assert [p.title for p in loss.panels] == [f"L={d}" for d in DEPTHS]
    for d, p in zip(DEPTHS, loss.panels):
        assert len(p.series) == len(WIDTHS) * len(SEEDS)
        for s in p.series:
            rows = read_rows(sweep_dir / s.meta["trial"])
            assert s.x == [r["step"] for r in rows] and s.y == [r["train/loss"] for r in rows]
            assert f"-d{d}-" in s.meta["trial"]

    steps = figs["steps_to_fit"]
    heat = steps.panels[1].heatmap
    assert heat["x"] == WIDTHS and heat["y"] == ["L=1", "L=2"]
    for i, d in enumerate(DEPTHS):
        for j, w in enumerate(WIDTHS):
            vals = [v for seed in SEEDS if (v := summaries[(w, d, seed)]["conv/steps_to_fit"]) is not None]
            assert (heat["z"][i][j] == pytest.approx(np.mean(vals))) if vals else math.isnan(heat["z"][i][j])

    (cw,) = figs["critical_width"].panels
    assert cw.series[0].x == [1, 2] and cw.series[0].y == [32, 64]
    assert sorted(cw.series[0].meta["fit_failed"]) == [(1, 16), (2, 16), (2, 32)]

    # index.html shows every image and the results table; figures.json holds the same data.
    page = (out / "index.html").read_text()
    assert set(re.findall(r"<img src='([^']+)'", page)) == {f"{n}.png" for n in REPORT_PNGS}
    assert page.count("<tr>") >= len(summaries) + 1 and "w64-d2-s1" in page
    data = json.loads((out / "figures.json").read_text())
    assert {d["name"] for d in data} == set(REPORT_PNGS)
    # The slopes table gives each theory slope its verdict: two seeds are never enough for one.
    fits = [f for fig in rep.figures for f in fig.fits if f.reference is not None]
    words = re.findall(r"<td class='t verdict'>(supported|contradicted|inconclusive)</td>", page)
    assert words == [f.verdict.word for f in fits] == ["inconclusive"] * len(fits)


def test_reference_lines_only_where_the_theory_applies(sweep_dir):
    """paper: m^-1/2 absolute drift; ntk: O(1) absolute drift, m^-1 relative; standard and mixed sweeps: none."""
    from overparam_dist.analysis.figures import figures
    from overparam_dist.analysis.results import load_sweep

    res = load_sweep(sweep_dir)
    want = {"paper": {"drift_weight_abs": -0.5, "drift_weight_rel": -1.0, "ntk_rel_drift": -0.5, "ntk_init_gap": -0.5},
            "ntk": {"drift_weight_abs": 0.0, "drift_weight_rel": -1.0, "ntk_rel_drift": -0.5, "ntk_init_gap": -0.5},
            "standard": {}, "mup": {}}
    for param, slopes in [*want.items(), ("mixed", {})]:
        for i, t in enumerate(res.trials):
            t.row["model.param"] = ("paper", "ntk")[i % 2] if param == "mixed" else param
        figs = {f.name: f for f in figures(res)}
        for name in ("drift_weight_abs", "drift_weight_rel", "ntk_rel_drift", "ntk_init_gap", "act_flips"):
            refs = figs[name].panels[0].references
            if name in slopes:
                (line,) = refs
                assert line.meta["slope"] == slopes[name] and "Dashed: the theory's slope" in figs[name].caption
                assert all(f.reference == slopes[name] for f in figs[name].fits)
            else:
                assert refs == [] and "No reference line" in figs[name].caption, (param, name)
                assert all(f.reference is None for f in figs[name].fits)


def test_report_cli_writes_report_dir_and_bad_dir_is_exit_2(sweep_dir, tmp_path):
    res = cli("report", str(sweep_dir))
    assert res.returncode == 0, res.stderr
    rdir = sweep_dir / "report"
    assert {p.name for p in rdir.glob("*.png")} == {f"{n}.png" for n in REPORT_PNGS}
    assert str(rdir / "index.html") in res.stdout
    bad = cli("report", str(tmp_path / "nope"))
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.slow
def test_summary_run_logs_figures_and_table_in_the_group(sweep_dir, tmp_path, monkeypatch):
    import io

    from launcher.report import report_to_summary_run
    from overparam_dist.analysis.report import build_local_report
    from overparam_dist.analysis.wandb_report import SummaryRun, log_summary_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    rep = build_local_report(sweep_dir, tmp_path / "report")
    first = log_summary_run(rep)
    assert first is not None and first.step == 0
    run_id = first.id
    flush_wandb()
    (run,) = offline_runs(sweep_dir)
    recs = records(wandb_file(run))
    meta = run_record(recs)
    assert meta["run_group"] == "tiny" and meta["job_type"] == "summary" and meta["run_id"] == run_id
    (row,) = history(recs).values()
    for name in REPORT_PNGS:
        assert row[f"report/{name}._type"] == "image-file"
        assert (run / "files" / row[f"report/{name}.path"]).is_file()
    assert row["results._type"] == "table-file" and row["results.nrows"] == len(WIDTHS) * len(DEPTHS) * len(SEEDS)
    table = json.loads((run / "files" / row["results.path"]).read_text())
    assert "model.width" in table["columns"] and "drift/weight_rel" in table["columns"]
    slopes = json.loads((run / "files" / row["slopes.path"]).read_text())  # each theory slope with its verdict
    verdicts = [r[slopes["columns"].index("verdict")] for r in slopes["data"]]
    want = [f.verdict.word if f.verdict else None for fig in rep.figures for f in fig.fits]
    assert verdicts == want and "inconclusive" in verdicts  # two seeds: never more
    # The same report again (a second `make demo`) logs nothing: no duplicate step, no new table version.
    assert log_summary_run(rep) == SummaryRun(run_id, None)
    said = io.StringIO()
    report_to_summary_run(rep, said)  # what the end of a sweep prints
    assert said.getvalue().endswith(f"summary run {run_id} (group tiny, under {sweep_dir / 'wandb'}/): unchanged "
                                     "since its last step, nothing logged\n"), said.getvalue()
    flush_wandb()
    assert offline_runs(sweep_dir) == [run]
    # A changed one continues the same run at the next step.
    rep.results.trials[0].row["train/loss"] = 123.0
    assert log_summary_run(rep) == SummaryRun(run_id, 1)
    flush_wandb()
    runs = offline_runs(sweep_dir)
    assert len(runs) == 2 and list(history(records(wandb_file(runs[1])))) == [1]
    assert files_containing(sweep_dir, FAKE_KEY.encode()) == []


def test_wandb_report_spec_offline(sweep_dir):
    from overparam_dist.analysis.results import load_sweep
    from overparam_dist.analysis.wandb_report import build_wandb_report, report_spec

    report = build_wandb_report(load_sweep(sweep_dir), "my-team", "my-proj")
    spec = report_spec(report)
    assert spec["project"] == {"name": "my-proj", "entityName": "my-team"}
    (grid,) = [b for b in spec["spec"]["blocks"] if b["type"] == "panel-grid"]
    (runset,) = grid["metadata"]["runSets"]
    assert runset["project"] == {"entityName": "my-team", "name": "my-proj"}
    assert runset["filters"]["filters"] == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": "tiny", "disabled": False}]
    panels = grid["metadata"]["panelBankSectionConfig"]["panels"]
    lines = {p["config"]["metrics"][0]: p["config"] for p in panels if p["viewType"] == "Run History Line Plot"}
    for key in ("train/loss", "ntk/rel_drift"):
        assert lines[key]["groupBy"] == "model.value.width" and lines[key]["aggregate"]
    scatters = [p["config"] for p in panels if p["viewType"] == "Scatter Plot"]
    assert any(c["xAxis"] == "config:model.value.width" and c["yAxis"] == "summary:drift/weight_rel" for c in scatters)
    assert any(p["viewType"] == "Weave" and '"results"' in json.dumps(p["config"]) for p in panels)


@pytest.mark.slow
def test_wandb_report_without_login_writes_spec_and_exits_2(sweep_dir, tmp_path):
    spec_file = sweep_dir / "report" / "wandb_report.json"
    spec_file.unlink(missing_ok=True)
    res = cli("report", str(sweep_dir), "--wandb", "--entity", "my-team", "--project", "my-proj",
              env=no_login_env(tmp_path))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not logged in" in lines[0] and str(spec_file) in lines[0], res.stderr
    spec = json.loads(spec_file.read_text())
    assert spec["displayName"].endswith("tiny") and spec["spec"]["blocks"]


# ---------------------------------------------------------------------------------------------- trials


@pytest.mark.slow
def test_offline_trial_file_holds_metrics_config_summary_and_no_api_key(tmp_path):
    run_dir = tmp_path / "runs" / "g" / "t1"
    env = sub_env(WANDB_MODE="offline", WANDB_API_KEY=FAKE_KEY)
    res = subprocess.run([sys.executable, "-m", "launcher", "train", "--quiet", f"run.dir={run_dir}", "wandb.group=g",
                          "run.name=t1", "model.width=32", *[a for a in TINY if a != "run.quiet=true"]],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (run,) = offline_runs(run_dir)
    recs = records(wandb_file(run))
    meta = run_record(recs)
    assert meta["run_group"] == "g" and meta["job_type"] == "trial"
    assert meta["run_id"] == (run_dir / "wandb_id").read_text().strip()
    # Named <sweep>/<trial>, tagged to sort and filter by sweep, architecture, parameterization, depth, width
    assert meta["display_name"] == "g/t1", meta
    assert meta["tags"] == ["sweep:g", "arch:fc", "param:paper", "depth:2", "width:32"], meta
    config = dict(meta["config"]["update"])
    config.pop("_wandb", None)
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    # The resolved config (+ derived), except that train.lr is the step size used, not "auto"
    assert written["train"]["lr"] == "auto" and config["train"]["lr_rule"] == "auto"
    assert config["train"]["lr"] == written["derived"]["lr"]["lr"] > 0
    config["train"] = {k: v for k, v in config["train"].items() if k != "lr_rule"} | {"lr": "auto"}
    assert config == written
    assert config["derived"]["lr"]["rule"] == "auto" and config["derived"]["lr"]["kernel"] == "max"
    assert config["derived"]["lr"]["lambda_max_init"] > 0  # the step's kernel reaches W&B too

    hist = history(recs)
    rows = read_rows(run_dir)
    assert sorted(hist) == [r["step"] for r in rows] == list(range(0, 21, 5))
    for r in rows:
        got = {k: v for k, v in hist[r["step"]].items() if not k.startswith("_")}
        want = {k: v for k, v in r.items() if k != "step" and v is not None}
        assert got.keys() == want.keys(), r["step"]
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=0), (r["step"], k)

    summary = final_summary(recs)
    facts = summary.pop("run")  # the trial's facts apart from its metrics
    for k, v in read_summary(run_dir).items():
        if v is not None:
            got = summary[k] if "/" in k else facts[k]
            assert got == (pytest.approx(v, rel=1e-12) if isinstance(v, float) else v), k
    assert all("/" in k for k in summary if not k.startswith("_")), summary.keys()  # only metrics at the top
    assert facts["status"] == "completed" and facts["dp"] == 1 and facts["tp"] == 1 and facts["wall_s"] > 0
    assert files_containing(tmp_path, FAKE_KEY.encode()) == []


@pytest.mark.slow
def test_killed_and_retried_trial_continues_the_same_offline_run(tmp_path):
    run_dir = tmp_path / "retry"
    args = [sys.executable, "-m", "launcher", "train", "--quiet", f"run.dir={run_dir}", "data.target=regression",
            "train.steps=100", "metrics.every=5", "checkpoint.every=20", "model.width=256", "model.depth=2"]
    env = sub_env(WANDB_MODE="offline")
    kill_after_checkpoint(args, run_dir, 40, env=env)
    assert not (run_dir / "summary.json").exists()
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr

    first, second = offline_runs(run_dir)  # one offline piece per process, both of the trial's one run id
    run_id = (run_dir / "wandb_id").read_text().strip()
    assert first.name.endswith("-" + run_id) and second.name.endswith("-" + run_id)
    recs1, recs2 = records(wandb_file(first)), records(wandb_file(second))
    assert run_record(recs2)["run_id"] == run_id and run_record(recs2)["resume"]
    if any(r["type"] == "run" for r in recs1):  # a killed process may have written no records, or no file
        assert run_record(recs1)["run_id"] == run_id
    steps1, steps2 = sorted(history(recs1)), sorted(history(recs2))
    assert steps1 == list(range(0, 5 * len(steps1), 5))
    # The second process resumed at the checkpoint (step 40). Rows the killed process's W&B service never wrote
    # (it dies with it) are logged again from metrics.jsonl, so the two pieces hold every step exactly once.
    assert steps2[0] <= 40 and sorted(steps1 + steps2) == list(range(0, 101, 5)), (steps1, steps2)
    if wandb_file(first) is not None:  # our reader of the torn file agrees with wandb's
        assert wandb_history_steps(wandb_file(first)) == steps1
    assert wandb_history_steps(wandb_file(second)) == steps2  # a complete file over more than one 32 KiB block
    jsonl = {r["step"]: r for r in read_rows(run_dir)}
    assert sorted(jsonl) == list(range(0, 101, 5))
    for step, item in {**history(recs1), **history(recs2)}.items():
        assert item["train/loss"] == pytest.approx(jsonl[step]["train/loss"], rel=1e-12)
    s2 = final_summary(recs2)
    assert s2["run"]["resumed_from_step"] == 40 and s2["run"]["status"] == "completed" and s2["run"]["steps"] == 100

    # `overparam wandb sync` uploads both pieces, oldest first; without a login it refuses in one line.
    dry = cli("wandb", "sync", str(tmp_path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    listed = re.findall(r"(offline-run-[^/\s]+)/run-[^/\s]+\.wandb", dry.stdout + dry.stderr)
    uploadable = [d.name for d in (first, second) if (f := wandb_file(d)) is not None and f.stat().st_size > 7]
    assert listed == uploadable and second.name in listed, dry.stdout + dry.stderr  # a header-only piece is skipped
    nologin = cli("wandb", "sync", str(tmp_path), env=no_login_env(tmp_path))
    assert nologin.returncode == 2 and "not logged in" in nologin.stderr
    assert len(nologin.stderr.strip().splitlines()) == 1, nologin.stderr


def _bad_env(run_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "bogus")  # not a wandb mode: wandb.init raises


def _bad_dir(run_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir.mkdir(parents=True)
    cfg = load_config(None, [f"run.dir={run_dir}", "model.width=32", *TINY])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))  # the same trial, not yet run
    (run_dir / "wandb").write_text("a file where W&B wants its directory\n")


@pytest.mark.parametrize("breakage", [_bad_env, _bad_dir], ids=["invalid-mode", "bad-directory"])
def test_wandb_failure_is_one_warning_and_training_completes(tmp_path, monkeypatch, breakage):
    run_dir = tmp_path / "t"
    breakage(run_dir, monkeypatch)
    cfg = load_config(None, [f"run.dir={run_dir}", "model.width=32", *TINY])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_trial(cfg)
    w = [c for c in caught if issubclass(c.category, WandbWarning)]
    assert len(w) == 1, [str(c.message) for c in caught]
    assert "W&B disabled for this trial" in str(w[0].message)
    assert summary["status"] == "completed"
    assert [r["step"] for r in read_rows(run_dir)] == list(range(0, 21, 5))
    assert read_summary(run_dir)["steps"] == 20


def test_wandb_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode("offline") == "offline" and wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode("offline") == "online"  # the environment wins over the default
    assert wandb_mode("disabled") == "disabled"  # an explicit config value is kept
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("offline") == "disabled" and wandb_mode("online") == "online"


@pytest.mark.slow
def test_wandb_osh_is_triggered_when_installed(tmp_path, monkeypatch):
    import types

    calls = []

    class Hook:
        def __init__(self, communication_dir=None):
            calls.append(("init", communication_dir))

        def __call__(self, logdir=None):
            calls.append(("sync", Path(logdir)))

    mod = types.ModuleType("wandb_osh.hooks")
    mod.TriggerWandbSyncHook = Hook
    monkeypatch.setitem(sys.modules, "wandb_osh", types.ModuleType("wandb_osh"))
    monkeypatch.setitem(sys.modules, "wandb_osh.hooks", mod)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_OSH_COMMAND_DIR", str(tmp_path / "osh"))
    run_dir = tmp_path / "t"
    run_trial(load_config(None, [f"run.dir={run_dir}", "model.width=16", *TINY]))
    (run,) = offline_runs(run_dir)
    assert calls[0] == ("init", str(tmp_path / "osh"))
    syncs = [c[1] for c in calls if c[0] == "sync"]
    assert len(syncs) >= 2 and all(p.resolve() == run.resolve() for p in syncs)  # first row, then after finish


@pytest.mark.slow
def test_history_reader_agrees_with_wandb_over_several_blocks(tmp_path, monkeypatch):
    from overparam_dist.sinks import wandb_init

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb_init(mode="offline", project="p", entity="", group="g", job_type="trial", name="n", run_id="reader1",
                     out_dir=tmp_path, config={})
    for step in range(0, 600, 2):
        run.log({f"m/{i}": step * 0.001 + i for i in range(12)}, step=step, commit=True)
    run.finish()
    flush_wandb()
    f = wandb_file(offline_runs(tmp_path)[0])
    assert f.stat().st_size > 3 * 32768
    assert wandb_history_steps(f) == sorted(history(records(f))) == list(range(0, 600, 2))

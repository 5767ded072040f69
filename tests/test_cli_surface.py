"""Issue 15, in part: flags and key=value overrides in any order, in every subcommand that takes overrides (item 1);
`train --print-config` (item 2); presets by name and `overparam presets` (item 3); --version and a --help that says
where the keys are documented (item 5); best and worst over finished trials in the progress line (item 6)."""

import csv
import http.client
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, read_rows, run_cli

from overparam_dist.config import load_config, to_dict


def test_print_config_is_the_resolved_config_and_runs_nothing(tmp_path):
    mixed = run_cli("train", "model.width=32", "--quiet", "seed=1", "--print-config", f"run.dir={tmp_path / 'r'}",
                    cwd=tmp_path)
    assert mixed.returncode == 0, mixed.stderr
    printed = yaml.safe_load(mixed.stdout)
    want = to_dict(load_config(None, ["model.width=32", "seed=1", f"run.dir={tmp_path / 'r'}", "run.quiet=true"]))
    assert printed == want and printed["model"]["width"] == 32 and printed["seed"] == 1
    assert not (tmp_path / "r").exists() and list(tmp_path.iterdir()) == []  # nothing written
    ordered = run_cli("train", "--quiet", "--print-config", "model.width=32", "seed=1", f"run.dir={tmp_path / 'r'}",
                      cwd=tmp_path)
    assert ordered.stdout == mixed.stdout


def test_overrides_after_a_flag_reach_every_subcommand(tmp_path):
    # sweep: an override after --runs-dir is read (a bad one is refused, naming it, before Ray starts)
    res = run_cli("sweep", "--config", str(ROOT / "configs/sweep/quickstart.yaml"), "train.steps=5",
                  "--runs-dir", str(tmp_path), "model.widht=3", cwd=tmp_path)
    assert res.returncode == 2 and "model.widht" in res.stderr and "Traceback" not in res.stderr, res.stderr
    # submit slurm --trial --dry-run: both overrides are in the script it would submit
    res = run_cli("submit", "slurm", "--trial", "model.width=48", "--dry-run", "seed=7", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "model.width=48" in res.stdout and "seed=7" in res.stdout
    # a word that is neither a flag nor key=value is still refused in one line
    res = run_cli("train", "--quiet", "model.width=32", "--bogus", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == "overparam: error: unrecognized arguments: --bogus"


def test_version_and_help():
    res = run_cli("--version")
    assert res.returncode == 0 and re.fullmatch(r"overparam \d+\.\d+\.\d+\n", res.stdout), res.stdout
    res = run_cli("--help")
    assert res.returncode == 0 and "Configuration reference" in res.stdout and "overparam_dist/schema.py" in res.stdout
    examples = res.stdout.split("examples:")[1].strip().splitlines()
    assert len(examples) == 3 and all(line.strip().startswith("overparam ") for line in examples)


def test_progress_line_ranks_finished_trials_only(tmp_path):
    import io

    from launcher.sweep.progress import Book
    from launcher.sweep.spec import load_sweep

    sweep = load_sweep(str(ROOT / "configs/sweep/quickstart.yaml"), [], runs_dir=str(tmp_path))
    a, b, c = (t.name for t in sweep.trials[:3])
    sweep.dir.mkdir(parents=True)
    book = Book(sweep, out=io.StringIO())
    book.started(a)
    book.result(a, {"train/loss": 0.01})
    assert "loss best" not in book.line()  # nothing finished yet
    book.finished(b, {"status": "completed", "train/loss": 0.5})
    book.finished(c, {"status": "completed", "train/loss": 0.2})
    book.started(sweep.trials[3].name)
    book.result(sweep.trials[3].name, {"train/loss": 99.0})  # just started: neither best nor worst
    assert book.line().endswith(f"loss best 0.2 ({c}) worst 0.5 ({b})"), book.line()


def test_presets_by_name(tmp_path):
    by_path = run_cli("train", "--config", str(ROOT / "configs/experiment/paper_fc.yaml"), "--print-config")
    assert by_path.returncode == 0, by_path.stderr
    for name in ("experiment/paper_fc", "paper_fc", "paper_fc.yaml"):
        res = run_cli("train", "--config", name, "--print-config", cwd=tmp_path)
        assert res.returncode == 0 and res.stdout == by_path.stdout, (name, res.stderr)
    res = run_cli("submit", "slurm", "--config", "quickstart", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0 and f"--config {ROOT / 'configs/sweep/quickstart.yaml'}" in res.stdout, res.stderr
    res = run_cli("train", "--config", "nothere", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--config 'nothere'" in res.stderr, res.stderr
    listing = run_cli("presets").stdout.splitlines()
    names = {line.split()[0] for line in listing[:-1]}
    assert names == {str(p.relative_to(ROOT / "configs").with_suffix("")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert "sweep/quickstart" in names and all(len(line.split(None, 1)) == 2 for line in listing[:-1])


def test_sweep_dry_run_prints_the_trials_and_touches_nothing(tmp_path):
    before = set(Path("/tmp").glob("opr-*"))
    res = run_cli("sweep", "model.width=32,64,128", "model.depth=1,2", "--dry-run", "train.steps=50",
                  "parallel.dp=2", "--address", "127.0.0.1:1", cwd=tmp_path)  # never reached: no Ray
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert re.match(r"sweep multirun-w-d-[0-9a-f]{6}: 6 trial\(s\)", lines[0]) and "nothing written" in lines[0]
    assert lines[1].split() == ["trial", "model.width", "model.depth", "processes", "cpus", "gpus", "steps"]
    assert lines[2].split() == ["w32-d1", "32", "1", "2", "2", "0", "50"]
    assert lines[-1].split() == ["total", "12", "300"]
    assert list(tmp_path.iterdir()) == [] and set(Path("/tmp").glob("opr-*")) == before


def test_multirun_without_a_file_runs_the_grid(tmp_path, ray_address):
    res = run_cli("sweep", "model.width=16,32", "--runs-dir", str(tmp_path), "train.steps=2", "data.n=8",
                  "metrics.every=1", "wandb.mode=disabled", "--address", ray_address, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    [sdir] = [p for p in tmp_path.iterdir() if p.name.startswith("multirun-w-")]  # named by its axes and identity
    with open(sdir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["trial"], r["model.width"], r["status"]) for r in rows) == [
        ("w16", "16", "completed"), ("w32", "32", "completed")]
    # The same sweep as pandas DataFrames (issue 15, item 9)
    from overparam_dist.analysis import load_sweep

    trials, metrics = load_sweep(sdir)
    assert sorted(trials["trial"]) == ["w16", "w32"] and sorted(trials["model.width"]) == [16, 32]
    for name in ("w16", "w32"):
        want = read_rows(sdir / name)
        got = metrics[metrics["trial"] == name]
        assert list(got["step"]) == [r["step"] for r in want] == [0, 1, 2]
        assert list(got["train/loss"]) == [r["train/loss"] for r in want]
    # The issue-28 sequence: another multirun, then a --resume of it under the first one's name with another grid
    before = {p: p.read_bytes() for p in sorted(sdir.rglob("*")) if p.is_file()}
    common = ["sweep", "--runs-dir", str(tmp_path), "train.steps=1", "data.n=8", "wandb.mode=disabled", "--address",
              ray_address]
    res = run_cli(*common, "model.depth=1,2", f"name={sdir.name}", "--resume", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "holds another sweep (grid.model.depth: absent there, [1, 2] here)" in res.stderr, res.stderr
    assert "name=" in res.stderr and "--extend" in res.stderr
    assert {p: p.read_bytes() for p in sorted(sdir.rglob("*")) if p.is_file()} == before  # nothing touched
    # An experiment file as --config is the multirun's base
    res = run_cli("sweep", "--config", "paper_fc", "model.width=64,128", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0 and [ln.split()[0] for ln in res.stdout.splitlines()[2:4]] == ["w64", "w128"]


def test_sweeps_guide_quotes_the_quickstart_sweep_file_verbatim():
    assert (ROOT / "configs/sweep/quickstart.yaml").read_text() in (ROOT / "docs/guides/sweeps.md").read_text()


def test_python_api_runs_a_trial(tmp_path):
    from overparam_dist import load_config, run_trial

    cfg = load_config(None, ["model.width=16", "data.n=8", "train.steps=3", "metrics.every=1",
                             "wandb.mode=disabled", f"run.dir={tmp_path / 'api'}", "run.quiet=true"])
    summary = run_trial(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert [r["step"] for r in read_rows(tmp_path / "api")] == [0, 1, 2, 3]
    assert summary["train/loss"] == read_rows(tmp_path / "api")[-1]["train/loss"]


def _sweep_file(tmp_path, name: str, seeds: list[int], steps: int = 400) -> Path:
    spec = {"name": name, "grid": {"seed": seeds},
            "overrides": {"model.width": 32, "data.n": 16, "data.target": "regression", "train.steps": steps,
                          "train.stop_at_fit": False, "metrics.every": 10, "checkpoint.every": 0}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_progress_is_a_live_table_on_a_terminal_and_plain_lines_otherwise(tmp_path, ray_address):
    import os
    import pty
    import subprocess
    import sys

    args = [sys.executable, "-m", "launcher", "sweep", "--runs-dir", str(tmp_path / "runs"), "--address",
            ray_address, "--progress-every", "1"]
    main, sub = pty.openpty()
    proc = subprocess.Popen([*args, "--config", str(_sweep_file(tmp_path, "tty", [0, 1], 1500))], cwd=ROOT, stdin=sub,
                            stdout=sub, stderr=sub, close_fds=True)
    os.close(sub)
    screen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    assert proc.wait(timeout=60) == 0, screen[-3000:]
    text = screen.decode(errors="replace")
    redraws = text.split("\x1b[")
    assert len(redraws) > 2 and all(re.match(r"\d+F", r) for r in redraws[1::2]), text[-2000:]  # redrawn in place
    assert re.search(r"trial\s+step/steps\s+loss\s+steps/s", text), text[-2000:]
    # Long enough (1500 steps) that a redraw falls while both run: two trials of 400 steps once ended within one tick
    rows = re.findall(r"\n(s[01])\s+(\d+)/1500\s+(\S+)\s+(\S+)", text)  # a running trial: step of steps, loss, rate
    assert any(0 < int(step) < 1500 and rate != "-" and float(rate) > 0 for _, step, _, rate in rows), rows
    assert re.search(r"running \d \| pending \d \| ETA \d\d:\d\d", text), text[-2000:]
    assert "done 2/2 (diverged 0, failed 0)" in text.rsplit("\x1b[J", 1)[-1]  # the table left on the screen

    # Not a terminal (a log file, Ray Jobs, Slurm): plain lines, no escape codes, no table.
    res = subprocess.run([*args, "--config", str(_sweep_file(tmp_path, "plain", [0]))], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # 120 s ran out on a loaded machine
    assert res.returncode == 0, res.stderr
    assert "\x1b[" not in res.stdout + res.stderr and "step/steps" not in res.stdout
    assert re.search(r"\[plain \d\d:\d\d\] done 1/1 \(diverged 0, failed 0\)", res.stdout), res.stdout


def test_single_trial_report_draws_curves_and_the_spectrum_from_the_run_files(tmp_path):
    import json

    from overparam_dist.train import run_trial

    trial = tmp_path / "t"
    run_trial(load_config(None, [f"run.dir={trial}", "model.width=64", "data.n=16", "train.steps=40",
                                 "metrics.every=5", "train.stop_at_fit=false", "run.quiet=true",
                                 "metrics.hessian=true"]))
    res = run_cli("report", str(trial))
    assert res.returncode == 0, res.stderr
    out = trial / "report"
    figures = ("loss", "drift", "ntk", "sharpness", "features", "ntk_spectrum")  # each as a PNG and a PDF
    assert {p.name for p in out.iterdir()} == {f"{f}.{ext}" for f in figures for ext in ("png", "pdf")} | {
        "figures.json", "index.html"}
    rows = read_rows(trial)
    figs = {f["name"]: f for f in json.loads((out / "figures.json").read_text())}
    assert all(f["footer"].endswith(" · 1 seed") and "config.yaml sha256 " in f["footer"] for f in figs.values())
    (loss,) = figs["loss"]["panels"][0]["series"]
    assert loss["x"] == [r["step"] for r in rows] and loss["y"] == [r["train/loss"] for r in rows]
    kernel = {s["label"]: s for s in figs["ntk"]["panels"][0]["series"]}
    assert kernel["ntk/rel_drift"]["y"] == [r["ntk/rel_drift"] for r in rows if r["ntk/rel_drift"] > 0]
    # Sharpness against the edge (one step for every trained parameter here: 2/eta drawn from train/lr), and each
    # ReLU layer's feature movement
    edge, top = figs["sharpness"]["panels"]
    assert edge["series"][0]["y"] == [r["hessian/edge_ratio"] for r in rows] and edge["series"][1]["y"] == [2.0, 2.0]
    lines = {s["label"]: s["y"] for s in top["series"]}
    assert lines["hessian/lambda_max"] == [r["hessian/lambda_max"] for r in rows]
    assert lines["2/η"] == [2 / r["train/lr"] for r in rows]
    moved = {s["label"]: s["y"] for s in figs["features"]["panels"][0]["series"]}
    assert set(moved) == {f"feature/delta_rms/{k}" for k in ("hidden.0", "hidden.1")}, moved  # paper: A is fixed
    assert moved["feature/delta_rms/hidden.1"] == [r["feature/delta_rms/hidden.1"] for r in rows[1:]]
    # The spectrum file agrees with the metrics logged from their own eigen-decompositions, at init and at the end
    spec = json.loads((trial / "ntk_spectrum.json").read_text())
    assert spec["step_end"] == 40 == rows[-1]["step"] and len(spec["init"]) == len(spec["end"]) == 16
    assert spec["init"][0] == pytest.approx(rows[0]["ntk/lambda_min"], rel=1e-9)
    assert sum(spec["init"]) == pytest.approx(rows[0]["ntk/trace"], rel=1e-9)
    assert spec["end"][0] == pytest.approx(rows[-1]["ntk/lambda_min"], rel=1e-9)
    assert spec["end"][-1] == pytest.approx(rows[-1]["ntk/lambda_max"], rel=1e-9)
    assert spec["infinite"][0] == pytest.approx(rows[0]["ntk/lambda_min_inf"], rel=1e-9)
    curves = {s["label"]: s["y"] for s in figs["ntk_spectrum"]["panels"][0]["series"]}
    assert curves["at init (K_0)"] == sorted(spec["init"], reverse=True)
    assert curves["at the end (step 40)"] == sorted(spec["end"], reverse=True)
    assert curves["infinite width (K_inf)"] == sorted(spec["infinite"], reverse=True)
    assert "Trial <code>t</code>" in (out / "index.html").read_text()
    bad = run_cli("report", str(trial), "--wandb")
    assert bad.returncode == 2 and "not a trial's" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.services
def test_dashboard_names_each_trial_actor_and_its_log_shows_progress(tmp_path):
    """Through the Ray dashboard's REST API during a sweep on its private Ray: one actor per trial, its repr
    <sweep>/<trial>; its log holds that trial's progress and no wandb teardown traceback."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    spec = {"name": "dash", "grid": {"seed": [0, 1]}, "resources": {"cpus": 2},  # one at a time on 2 CPUs
            "reuse_actors": False,  # auto would reuse them on a private Ray (tune.actors_reused)
            "batch_seeds": False,  # auto would train the two seeds as one trial (seed_groups.py)
            "overrides": {"model.width": 32, "data.n": 16, "data.target": "regression", "train.steps": 200,
                          "train.stop_at_fit": False, "metrics.every": 20, "checkpoint.every": 0}}
    (tmp_path / "dash.yaml").write_text(yaml.safe_dump(spec))
    log = tmp_path / "sweep.log"
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "sweep", "--config", str(tmp_path / "dash.yaml"),
                             "--runs-dir", str(tmp_path / "runs")], cwd=ROOT, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "offline"})

    def get(path: str):
        with urllib.request.urlopen(url + path, timeout=10) as r:
            return r.read().decode()

    url, actors, logs = None, {}, {}
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            if url is None:
                found = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", log.read_text())
                url = found.group(1) if found else None
                continue
            try:
                listed = json.loads(get("/api/v0/actors?detail=1&limit=100"))["data"]["result"]["result"]
                for a in listed:
                    actors[a["actor_id"]] = a
                for aid, a in actors.items():  # a trial's actor that has ended: its whole log
                    if a["state"] == "DEAD" and a.get("repr_name", "").startswith("dash/") and aid not in logs:
                        logs[aid] = {s: get(f"/api/v0/logs/file?actor_id={aid}&suffix={s}&lines=5000")
                                     for s in ("out", "err")}
            except (OSError, http.client.HTTPException):  # the dashboard starting, or stopping mid-answer
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, log.read_text()[-3000:]
    trial_actors = {a["repr_name"]: aid for aid, a in actors.items() if a.get("repr_name", "").startswith("dash/")}
    assert set(trial_actors) == {"dash/s0", "dash/s1"}, [a.get("repr_name") for a in actors.values()]
    aid = trial_actors["dash/s0"]
    assert aid in logs, "s0's actor ended before s1's, while the dashboard still ran"
    steps = [int(s) for s in re.findall(r"^\[dash/s0\] step (\d+)/200 train/loss \S+$", logs[aid]["out"], re.M)]
    assert steps == list(range(0, 201, 20)) and "[dash/s0] ended" in logs[aid]["out"], logs[aid]["out"][-2000:]
    assert "Traceback" not in logs[aid]["err"] and "ConnectionResetError" not in logs[aid]["err"], logs[aid]["err"]

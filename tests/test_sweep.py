"""Sweeps on Ray: spec and CLI rules, bad input, the quickstart, 2-worker trials, critical-width search.

The Ray tests share one private local Ray (the session fixture `ray_address` in conftest.py).
"""

import csv
import http.server
import json
import math
import socket
import threading
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, read_rows, run_cli

from launcher.sweep.driver import run_sweep
from launcher.sweep.plans import FINISHED, CriticalWidthPlan, fit_power_law, reached
from launcher.sweep.spec import load_sweep
from overparam_dist.config import ConfigError
from overparam_dist.train import run_trial

QUICKSTART = ROOT / "configs" / "sweep" / "quickstart.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(tmp_path: Path, spec: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _results(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ no Ray needed


def test_sweep_file_and_command_line_rules(tmp_path):
    spec = _write(tmp_path, {"base": "experiment/paper_fc.yaml", "overrides": {"data.n": 16},
                             "grid": {"model": {"width": [64, 128]}, "model.depth": [1, 2], "seed": [0]}})
    s = load_sweep(spec, ["name=foo", "grid.model.width=[8,16]", "train.steps=7", "resources.cpus=0.5",
                          "train.lr=1e-3"], runs_dir=tmp_path / "runs")
    assert s.name == "foo" and s.resources == {"cpus": 0.5, "gpus": 0}
    assert [t.name for t in s.trials] == ["w8-d1", "w8-d2", "w16-d1", "w16-d2"]  # seed does not vary
    t = s.trials[2]
    assert (t.cfg.model.width, t.cfg.model.depth, t.cfg.data.n, t.cfg.train.steps) == (16, 1, 16, 7)
    assert t.cfg.train.lr == 1e-3 and t.cfg.model.param == "paper"  # from the base preset
    assert Path(t.cfg.run.dir) == (tmp_path / "runs" / "foo" / "w16-d1").absolute()
    assert t.cfg.wandb.group == "foo" and t.cfg.run.quiet and t.cfg.run.name == "w16-d1"
    with pytest.raises(ConfigError, match="grid axis"):
        load_sweep(spec, ["model.depth=3"])
    cw = load_sweep(spec, ["grid.model.width=null", "search=critical_width", "search.widths=[4,8,16]"])
    assert cw.kind == "critical_width" and len(cw.trials) == 2 * 3 and cw.trials[0].name == "d1-w4"
    # reuse_actors: auto (None) unless told; the copy kept in the sweep's directory says so
    assert s.reuse_actors is None and s.to_yaml_dict()["reuse_actors"] == "auto"
    reuse = [load_sweep(spec, [f"reuse_actors={v}"]).reuse_actors for v in ("true", "false", "auto")]
    assert reuse == [True, False, None]


@pytest.mark.parametrize("case", ["unknown_sweep_key", "unknown_config_key", "bad_value", "grid_axis_override",
                                  "bad_search", "bad_reuse_actors", "unreachable_address", "unreachable_dashboard"])
def test_bad_sweep_input_is_one_line_exit_2(tmp_path, case):
    spec = {"grid": {"model.width": [16, 32]}, "overrides": {"train.steps": 2}}
    args = []
    if case == "unknown_sweep_key":
        spec["grdi"] = spec.pop("grid")
    elif case == "unknown_config_key":
        args = ["grid.model.widht=[1]"]
    elif case == "bad_value":
        args = ["grid.model.width=[64,0]"]
    elif case == "grid_axis_override":
        args = ["model.width=3"]
    elif case == "bad_search":
        args = ["search.kind=critical_width", "grid.model.width=null", "search.k=1"]
    elif case == "bad_reuse_actors":
        spec["reuse_actors"] = "sometimes"
    path = _write(tmp_path, spec)
    runs = tmp_path / "runs"
    if case == "unreachable_dashboard":
        cmd = ["submit", "ray", "--address", f"http://127.0.0.1:{_free_port()}", "--config", str(QUICKSTART)]
    else:
        cmd = ["sweep", "--config", str(path), "--runs-dir", str(runs), *args]
        if case == "unreachable_address":
            cmd += ["--address", f"127.0.0.1:{_free_port()}"]
    res = run_cli(*cmd, env={"RAY_ADDRESS": ""})
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("overparam: error:")
    expect = {"unknown_sweep_key": "grdi", "unknown_config_key": "widht", "bad_value": "model.width",
              "grid_axis_override": "grid axis", "bad_search": "search.k",
              "bad_reuse_actors": "'reuse_actors' = 'sometimes' must be true, false or auto",
              "unreachable_address": "cannot reach",
              "unreachable_dashboard": "cannot reach"}[case]
    assert expect in lines[0]
    if case != "unreachable_address":
        assert not runs.exists()


def test_missing_token_auth_is_one_clear_line():
    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # what a Ray dashboard with token auth answers a request without a token
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b"Unauthorized: Missing authentication token")

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        res = run_cli("jobs", "status", "raysubmit_abc", "--address", f"http://127.0.0.1:{server.server_port}",
                      env={"RAY_AUTH_MODE": "disabled"})
    finally:
        server.shutdown()
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "requires token authentication" in lines[0] and "RAY_AUTH_MODE" in lines[0]


def _simulate(plan: CriticalWidthPlan, truth, slots: int) -> int:
    """Run the plan against a monotone oracle with `slots` parallel workers; return the number of rounds."""
    rounds, running = 0, []
    while True:
        while len(running) < slots:
            t = plan.next_trial()
            if t in (None, FINISHED):
                break
            running.append(t)
        if not running:
            assert plan.next_trial() == FINISHED
            return rounds
        rounds += 1
        for t in running:
            ok = t.cfg.model.width >= truth[t.cfg.data.n]
            plan.complete(t.name, {"status": "completed", "conv/steps_to_fit": 3 if ok else None})
        running = []


@pytest.mark.parametrize("slots,k", [(1, 0), (2, 0), (8, 0), (8, 2), (16, 3)])
def test_critical_width_plan_is_a_parallel_k_ary_search(slots, k):
    widths = [4, 8, 16, 32, 64, 128, 256]
    truth = {8: 4, 16: 64, 32: 256, 64: 10 ** 6}  # the last cell never fits
    sweep = load_sweep(None, ["grid.data.n=[8,16,32,64]", "search.kind=critical_width", "data.target=labels",
                              f"search.widths={widths}", f"search.k={k}"])
    plan = CriticalWidthPlan(sweep, {})
    rounds = _simulate(plan, truth, slots)
    rows = {r["data.n"]: r for r in plan.rows()}
    for n, m in truth.items():
        want = m if m <= widths[-1] else None
        assert rows[n]["m_star"] == want, (n, rows[n])
        if want and want > widths[0]:
            assert rows[n]["smaller_width"] == widths[widths.index(want) - 1] and rows[n]["smaller_reached"] is False
    probes = sum(r["probes"] for r in plan.rows())
    assert probes <= 4 * len(widths)
    if slots == 1:
        assert rounds == probes  # serial: one probe at a time
    if slots >= 8 and k == 0:
        assert rounds == 2  # free slots split each interval several ways: bisection needs 3 rounds for 7 widths
    if k == 2:
        assert rounds == 3  # at most one probe per cell in flight: a bisection


def test_critical_width_plan_reuses_finished_trials():
    sweep = load_sweep(None, ["grid.data.n=[8]", "search.kind=critical_width", "search.widths=[4,8,16,32]",
                              "data.target=labels"])
    by_width = {t.cfg.model.width: t.name for t in sweep.trials}
    done = {by_width[8]: {"status": "completed", "conv/steps_to_fit": None},
            by_width[16]: {"status": "completed", "conv/steps_to_fit": 5}}
    plan = CriticalWidthPlan(sweep, done)
    assert plan.resolved() and plan.rows()[0]["m_star"] == 16 and plan.next_trial() == FINISHED


def test_power_law_fit_recovers_exponents():
    import numpy as np

    noise = iter(np.exp(np.random.default_rng(0).normal(0, 0.03, 12)))
    rows = [{"data.n": n, "model.depth": L, "m_star": 3.0 * n ** 1.5 * L ** 0.5 * next(noise)}
            for n in (8, 16, 32, 64) for L in (1, 2, 4)]
    fit = fit_power_law(rows)
    assert fit["a"] == pytest.approx(1.5, abs=0.02) and fit["b"] == pytest.approx(0.5, abs=0.02)
    assert fit["a_ci95"][0] < 1.5 < fit["a_ci95"][1] and fit["b_ci95"][0] < 0.5 < fit["b_ci95"][1]
    one_axis = fit_power_law([r for r in rows if r["model.depth"] == 1])
    assert one_axis["b"] is None and one_axis["a"] == pytest.approx(1.5, abs=0.02)


# ------------------------------------------------------------------------------------ real Ray (shared)


@pytest.mark.slow
def test_quickstart_sweep(ray_address, tmp_path):
    from launcher.demo import width_table

    # Its three seeds of each cell train as one batched trial (batch_seeds: auto); depth 2 alone, half the time.
    sweep = load_sweep(QUICKSTART, ["grid.model.depth=[2]"], runs_dir=tmp_path / "runs")
    outcome = run_sweep(sweep, progress_every=30)
    assert outcome.counts["completed"] == 12 and not outcome.failed
    rows = _results(sweep.dir)
    assert len(rows) == 12
    grid = yaml.safe_load(QUICKSTART.read_text())["grid"]
    assert {(int(r["model.width"]), int(r["seed"])) for r in rows} == {
        (w, s) for w in grid["model.width"] for s in grid["seed"]}
    for r in rows:
        assert r["trial"] == f"w{r['model.width']}-s{r['seed']}" and r["status"] == "completed"
        assert r["data.n"] == "32" and r["wandb.group"] == "quickstart" and r["steps"] == "200"
        for key in ("train/loss", "drift/weight_rel", "train/acc"):
            assert math.isfinite(float(r[key])), (r["trial"], key)
        if "ntk/rel_drift" in r:
            assert math.isfinite(float(r["ntk/rel_drift"]))
    table = width_table(sweep.dir)
    assert "slope" in table and "drift/weight_rel" in table
    assert "supported (O(m^-1))" in table, table  # three seeds: an interval, so a verdict
    # One process per cell, named by its group; each seed's rows are those of the seed trained alone
    pids = {w: (sweep.dir / ".workers" / f"w{w}-s0+2seeds.pid").read_text() for w in grid["model.width"]}
    assert len(set(pids.values())) == 4
    alone = sweep.trials[1].cfg
    alone.run.dir = str(tmp_path / "alone")
    run_trial(alone)
    from test_seeds import assert_same_runs

    assert_same_runs(tmp_path / "alone", sweep.dir / sweep.trials[1].name, 1e-6)


@pytest.mark.slow
@pytest.mark.services
def test_reuse_actors_auto_reuses_them_on_the_private_ray(tmp_path):
    """On the private Ray a sweep starts, `reuse_actors: auto` runs trial after trial in one actor: each new actor
    would import Ray Tune and torch again (tune.actors_reused). Issue 31: on a machine where Ray never ran, whose
    temp roots (RAY_TMPDIR, TMPDIR) do not exist yet; the sweep creates nothing there."""
    spec = _write(tmp_path, {"name": "auto", "grid": {"seed": [0, 1, 2]}, "resources": {"cpus": 2},  # one at a time
                             "batch_seeds": False,  # three trials, not one batch of three seeds
                             "overrides": {"model.width": 16, "data.n": 8, "train.steps": 5, "metrics.every": 5,
                                           "checkpoint.every": 0}})
    no_root = tmp_path / "no-such-root"
    env = {"RAY_ADDRESS": "", "RAY_TMPDIR": str(no_root / "ray"), "TMPDIR": str(no_root / "tmp")}
    res = run_cli("sweep", "--config", str(spec), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not no_root.exists()  # nothing depends on, or is left in, Ray's default temp root
    rows = list(csv.DictReader((tmp_path / "runs" / "auto" / "results.csv").open()))
    assert sorted((r["trial"], r["status"]) for r in rows) == [(f"s{i}", "completed") for i in range(3)]
    assert "(private, stopped at the end); actors reused trial after trial" in res.stdout, res.stdout
    pids = {(tmp_path / "runs" / "auto" / ".workers" / f"s{i}.pid").read_text() for i in range(3)}
    assert len(pids) == 1, pids


def _loss_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_rows(run_dir)]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["local", "worker_group"])
def test_two_worker_trial_matches_overparam_train(ray_address, tmp_path, monkeypatch, path):
    """A trial that fits one node runs as local processes in its Tune trial; one that does not (forced here: the
    driver decides) as a Ray Train worker group. Both give `overparam train`'s numbers and stream rows to Tune."""
    if path == "worker_group":
        monkeypatch.setattr("launcher.sweep.tune.fits_one_node", lambda cpus, gpus: False)
    common = {"data.target": "regression", "train.steps": 20, "metrics.every": 1, "model.width": 256,
              "checkpoint.every": 10}
    spec = _write(tmp_path, {"name": "dp2", "overrides": common, "grid": {"parallel.dp": [2]}})
    sweep = load_sweep(spec, [], runs_dir=tmp_path / "runs")
    outcome = run_sweep(sweep, progress_every=30)
    assert outcome.counts["completed"] == 1, outcome.states
    (trial,) = sweep.trials
    assert trial.workers == 2 and json.loads((trial.run_dir / "summary.json").read_text())["dp"] == 2
    assert (sweep.dir / "_ray" / "train").is_dir() == (path == "worker_group")  # Train's storage: its path only
    nodes = yaml.safe_load((trial.run_dir / "config.yaml").read_text())["derived"]["world"]["nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 1  # both ranks on this one node, named by Ray's node id there
    assert nodes[0].startswith("ray-")

    ref = tmp_path / "ref"
    res = run_cli("train", "--quiet", f"run.dir={ref}", "parallel.dp=2", "wandb.mode=disabled",
                  *[f"{k}={v}" for k, v in common.items()])
    assert res.returncode == 0, res.stderr
    got, want = _loss_rows(trial.run_dir), _loss_rows(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(21))
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for k, v in w.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-5, abs=1e-9), (g["step"], k)
    # Rank 0 forwarded every logged row to Tune (the dashboard's trial table), then the final summary.
    (tune_result,) = list((sweep.dir / "_ray" / "tune").glob(f"*/{trial.name}/result.json"))
    reported = [json.loads(line) for line in tune_result.read_text().splitlines() if line.strip()]
    assert [r["step"] for r in reported if "summary_json" not in r] == list(range(21))
    assert "summary_json" in reported[-1]


@pytest.mark.slow
def test_critical_width_search_tiny(ray_address, tmp_path):
    widths = [4, 8, 16, 32, 64, 128, 256]
    spec = _write(tmp_path, {"name": "cw", "grid": {"data.n": [8, 16]},
                             "overrides": {"model.depth": 2, "train.steps": 100, "metrics.every": 20,
                                           "checkpoint.every": 0, "metrics.ntk": False, "data.target": "labels"},
                             "search": {"kind": "critical_width", "widths": widths}})
    sweep = load_sweep(spec, [], runs_dir=tmp_path / "runs")
    outcome = run_sweep(sweep, progress_every=30)
    assert not outcome.failed
    by_trial = {r["trial"]: r for r in _results(sweep.dir)}
    cells = list(csv.DictReader(open(sweep.dir / "critical_width.csv")))
    assert [int(c["data.n"]) for c in cells] == [8, 16]
    for c in cells:
        assert c["status"] in ("found", "at_min"), c
        m = int(c["m_star"])
        trial = by_trial[f"n{c['data.n']}-w{m}"]
        assert reached(json.loads((Path(trial["run.dir"]) / "summary.json").read_text()))
        if m > widths[0]:
            smaller = by_trial[f"n{c['data.n']}-w{widths[widths.index(m) - 1]}"]
            assert not reached(json.loads((Path(smaller["run.dir"]) / "summary.json").read_text()))
    assert len(by_trial) < 2 * len(widths)  # a search, not the whole grid
    fit = json.loads((sweep.dir / "critical_width_fit.json").read_text())
    assert fit["b"] is None and fit["cells"] == 2  # depth does not vary; 2 cells leave no dof for a CI


def test_a_requested_exit_inside_a_callback_leaves_no_traceback_in_the_trial_log():
    """Ray's SIGTERM handler raising SystemExit inside a weakref callback (the actor being ended after its trial) is
    not reported; any other exception raised where Python cannot raise it still is, with its traceback."""
    import subprocess
    import sys

    script = """
import sys, weakref
from launcher.sweep.trial_log import quiet_requested_exits
quiet_requested_exits(); quiet_requested_exits()  # once per process, however often asked
class Obj: pass
def callback(exc):
    def fire(_):
        raise exc
    return fire
a, b = Obj(), Obj()
ra, rb = weakref.ref(a, callback(SystemExit(1))), weakref.ref(b, callback(ValueError("a real error")))
del a, b
print("still running")
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "still running\n", res.stderr
    assert "SystemExit" not in res.stderr and res.stderr.count("Traceback") == 1, res.stderr
    assert "ValueError: a real error" in res.stderr, res.stderr


def test_a_critical_width_search_needs_a_fit_to_reach(tmp_path):
    """Regression targets with no train.target_loss can never fit: the search would probe every width for nothing."""
    spec = {"grid": {"data.n": [8]}, "search": {"kind": "critical_width", "widths": [4, 8]}}
    with pytest.raises(ConfigError, match="a critical_width search needs a fit to reach: data.target=labels .*, "
                                          "train.target_loss > 0 or train.target_ratio > 0; w4 has "
                                          "data.target=regression"):
        load_sweep(_write(tmp_path, spec))
    assert len(load_sweep(_write(tmp_path, {**spec, "overrides": {"train.target_loss": 0.01}})).trials) == 2
    assert len(load_sweep(_write(tmp_path, {**spec, "overrides": {"train.target_ratio": 0.01}})).trials) == 2
    assert len(load_sweep(_write(tmp_path, {**spec, "overrides": {"data.target": "labels"}})).trials) == 2


def test_critical_width_trials_equal_a_full_merge_and_expand_fast(tmp_path):
    """A critical-width search merges each cell's config once and sets the width on copies: every trial equals its
    own full load_config, and the allen-zhu file's 1215 candidates expand in seconds (half a minute before)."""
    import time

    from overparam_dist.config import load_config

    start = time.perf_counter()
    sweep = load_sweep(ROOT / "configs" / "repro" / "allenzhu2018_critical_width.yaml", runs_dir=tmp_path)
    assert len(sweep.trials) == 1215 and time.perf_counter() - start < 10
    for t in sweep.trials[::97]:
        full = load_config(sweep.base, settings={**sweep.overrides, **t.point})
        full.run.dir, full.run.name, full.run.quiet = t.cfg.run.dir, t.cfg.run.name, True
        full.run.preempt_file, full.wandb.group = t.cfg.run.preempt_file, t.cfg.wandb.group
        assert t.cfg == full and t.cfg.model.width == t.point["model.width"]
    with pytest.raises(ConfigError, match="grid point .*parallel.tp"):  # each width is still validated
        load_sweep(_write(tmp_path, {"grid": {"data.n": [8]}, "overrides": {"parallel.tp": 2, "data.target": "labels"},
                                     "search": {"kind": "critical_width", "widths": [4, 5]}}))

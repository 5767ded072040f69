"""Issue 23, items 3 and 4: the command line answers without importing torch, Ray or wandb (validation, --help,
--version, presets, --print-config, sweep --dry-run and every one-line error for bad input), and
`--print-config --resolved` adds what needs the model, equal to what a trial records. The times themselves are
measured by bench/cli_latency.py, not asserted here."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, run_cli

from overparam_dist.config import load_config
from overparam_dist.train import run_trial

# Runs `overparam ARGS` in this interpreter, then prints the exit code and which heavy packages got imported.
_PROBE = """
import json, sys
from launcher.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
heavy = sorted(m for m in ("torch", "ray", "wandb") if m in sys.modules)
print("PROBE " + json.dumps({"rc": rc, "heavy": heavy}))
"""

# (arguments, expected exit code). Every path the issue names: validation of a config or sweep file,
# --print-config, sweep --dry-run (grid and multirun), presets, --help, --version, and one-line errors.
FAST_PATHS = [
    (["--help"], 0),
    (["--version"], 0),
    (["train", "--help"], 0),
    (["sweep", "--help"], 0),
    (["presets"], 0),
    (["train", "--print-config"], 0),
    (["train", "--config", "paper_fc", "model.width=64", "--print-config"], 0),
    (["sweep", "--config", "quickstart", "--dry-run"], 0),
    (["sweep", "model.width=32,64", "model.depth=1,2", "--dry-run"], 0),
    (["sweep", "--config", "repro/allenzhu2018_critical_width", "--dry-run"], 0),
    (["submit", "slurm", "--config", "quickstart", "--dry-run"], 0),
    (["submit", "slurm", "--trial", "model.width=48", "--dry-run"], 0),
    (["train", "model.widht=3"], 2),                                   # a typo in a key
    (["train", "model.width=-3"], 2),                                  # a bad value
    (["train", "model.width=abc"], 2),                                 # a bad type
    (["train", "--config", "nothere.yaml"], 2),                        # a missing file
    (["train", "--config", "configs/experiment/paper_resnet.yaml", "data.name=digits"], 2),  # preset vs override
    (["train", "data.name=mnist", "data.root=/nonexistent"], 2),       # missing data
    (["sweep", "--config", "quickstart", "model.widht=3"], 2),         # a bad trial key in a sweep
    (["sweep", "--config", "quickstart", "grid.model.width=[0]"], 2),  # a bad grid point
    (["sweep", "--config", "quickstart", "reuse_actors=sometimes"], 2),
    (["submit", "slurm", "--config", "quickstart", "--time", "soon"], 2),
    (["train", "--resolved"], 2),                                      # --resolved without --print-config
]


@pytest.mark.parametrize("args,code", FAST_PATHS, ids=[" ".join(a) for a, _ in FAST_PATHS])
def test_fast_paths_import_no_torch_ray_or_wandb(args, code, tmp_path):
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = next(x for x in res.stdout.splitlines() if x.startswith("PROBE "))
    probe = json.loads(line[len("PROBE "):])
    assert probe["rc"] == code, res.stdout + res.stderr
    assert probe["heavy"] == [], f"{' '.join(args)} imported {probe['heavy']}"
    if code == 2:  # one line naming what is wrong, no traceback
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("overparam: error:") and "Traceback" not in res.stderr, \
            res.stderr


@pytest.mark.parametrize("overrides", [
    ["model.width=32", "data.n=16", "train.lr=auto"],                                       # K_inf (paper fc)
    ["model.width=32", "data.n=16", "train.lr=auto", "model.param=standard", "model.depth=1"],  # empirical K_0
])
def test_print_config_resolved_is_what_the_trial_records(overrides, tmp_path):
    run = [*overrides, f"run.dir={tmp_path / 'r'}", "train.steps=1", "wandb.mode=disabled"]
    res = run_cli("train", "--print-config", "--resolved", *run, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    printed = yaml.safe_load(res.stdout)
    assert "# --resolved added (computed from the model at init): derived.train_outer, derived.lr" in res.stdout
    assert not (tmp_path / "r").exists()  # nothing written, nothing trained
    run_trial(load_config(None, [*run, "run.quiet=true"]))
    recorded = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["derived"]
    got = printed["derived"]
    assert set(got) == {"train_outer", "lr", "lin_gap", "effective_lr", "data"}
    for key in ("train_outer", "lin_gap", "data"):
        assert got[key] == recorded[key], key
    assert got["lr"]["set_by"] == recorded["lr"]["set_by"] and got["lr"]["samples"] == recorded["lr"]["samples"]
    for key in ("lr", "lambda_max_init", "edge_ratio"):
        assert got["lr"][key] == pytest.approx(recorded["lr"][key], rel=1e-9), key
    assert got["effective_lr"] == pytest.approx(recorded["effective_lr"], rel=1e-9)
    assert got["lr"]["rule"] == "auto" and got["lr"]["lr"] > 0
    plain = run_cli("train", "--print-config", *run, cwd=tmp_path)
    assert "derived" not in yaml.safe_load(plain.stdout)  # without --resolved: only what is known before training

"""Issue 28, item 0: inputs past their type or wrongly accepted are one line naming the key and what is allowed (exit 2
from the CLI, no traceback), before anything runs; a file that is not a config is never echoed."""

import pytest
from conftest import ROOT, run_cli

from launcher.presets import resolve
from launcher.sweep.spec import load_sweep
from overparam_dist.config import ConfigError, load_config
from overparam_dist.rundir import check_run_dir


@pytest.mark.parametrize("override, says", [
    ("model.width=100000000000000000000000", "'model.width' = 100000000000000000000000: must be at most 2147483647"),
    ("seed=100000000000000000000000", "'seed' = 100000000000000000000000: must be at most 9223372036854775807"),
    ("seed=-3", "'seed' = -3: must be >= 0"),
    ("train.steps=10000000000000000", "'train.steps' = 10000000000000000: must be at most 1000000000000"),
    ("train.lr_scale=1e308", "'train.lr_scale' = 1e+308: must be a positive number up to 1e+06"),
    ("train.target_loss=nan", "'train.target_loss' = nan: must be a finite number >= 0"),
    ("metrics.ntk_probe=alll", "'metrics.ntk_probe' = 'alll': must be an integer from 1 to 100000000, or all"),
])
def test_numbers_past_their_type_are_one_line(override, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_run_directory_whose_config_is_not_a_mapping_is_one_line(tmp_path):
    for text, says in (("- a\n- b\n", "is a list, not a mapping"), ("model: [unclosed\n", "cannot be read as YAML")):
        run = tmp_path / f"r{len(text)}"
        run.mkdir()
        (run / "config.yaml").write_text(text)
        with pytest.raises(ConfigError, match=says):
            check_run_dir(load_config(None, [f"run.dir={run}"]))


def test_sweep_words_and_grids_that_cannot_be_meant(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.width=32,': an empty value"):
        from launcher.sweep.multirun import sweep_args

        sweep_args(None, ["model.width=32,"])
    spec = tmp_path / "big.yaml"
    spec.write_text("grid: {model.width: [8, 16, 32], seed: [0, 1, 2, 3]}\nmax_trials: 10\n")
    with pytest.raises(ConfigError, match=r"the grid has 12 trials \(3 x 4\), more than max_trials = 10; pass "
                                          r"max_trials=12"):
        load_sweep(spec, runs_dir=tmp_path)
    assert len(load_sweep(spec, ["max_trials=12"], runs_dir=tmp_path).trials) == 12


def test_a_preset_name_stays_under_configs_and_a_foreign_file_is_not_echoed(tmp_path):
    import os

    from launcher.sweep.spec import CONFIGS

    (tmp_path / "outside.yaml").write_text("model: {width: 8}\n")
    name = os.path.relpath(tmp_path / "outside", CONFIGS)  # ../../../tmp/.../outside: configs/<name>.yaml climbs out
    assert not os.path.exists(name) and (CONFIGS / f"{name}.yaml").is_file()
    with pytest.raises(ConfigError, match="no such file, and no preset"):
        resolve(name, "trial")
    secret = tmp_path / "notes.txt"
    secret.write_text("the user's private notes, one long line that is not a config at all " * 3 + "\n")
    for args in (["train", "--config", str(secret), "--print-config"], ["sweep", "--dry-run", "--config", str(secret)]):
        res = run_cli(*args, cwd=ROOT)
        assert res.returncode == 2 and "private notes" not in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert "not shown" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cuda_without_a_device_is_one_line(tmp_path):
    res = run_cli("train", "--quiet", "train.device=cuda", f"run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip() == ("overparam: error: config key 'train.device' = 'cuda': no CUDA device is available "
                                  "to this process; use train.device=auto or cpu")


def test_a_slurm_count_past_its_type_is_one_line(tmp_path):
    res = run_cli("submit", "slurm", "--trial", "--dry-run", "--nodes", "99999999999999999999", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == ("overparam: error: --nodes must be an integer from 1 to "
                                                          "1000000, got 99999999999999999999"), res.stderr

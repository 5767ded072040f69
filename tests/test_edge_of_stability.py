"""The edge of stability's check (analysis/edge_of_stability.py) on synthetic runs built to pass and to fail: the
second-half sharpness must land within the band around 2/η at every step size, so a lazy run (sharpness stays where
it started) or one that overshoots contradicts it, and two seeds give no verdict. tests/test_repro.py runs the real
reproduction's --quick variant; tests/test_regime.py the regime rule that uses the same band."""

import json
import math

import pytest
import yaml

from overparam_dist.analysis.edge_of_stability import eos_findings, late_sharpness, loss_fall, sharpened
from overparam_dist.analysis.results import load_sweep, write_results
from overparam_dist.metrics import names
from overparam_dist.metrics.regime_rules import EOS_BAND, eos_share, second_half

LRS = (0.5, 1.0, 2.0)


def _results(tmp_path, level: float, seeds=(0, 1, 2), tag: str = "") -> object:
    """Full-batch runs of 400 steps, logged every 5: the sharpness starts at 0.2 and, unless level is None (lazy),
    rises by step 150 to `level` x 2/η, then oscillates around it while the loss falls in a sawtooth."""
    sdir = tmp_path / f"eos{level}{tag}"
    sdir.mkdir()
    rows = []
    for s in seeds:
        for lr in LRS:
            name = f"lr{lr:g}-s{s}"
            (sdir / name).mkdir()
            hist = []
            for step in range(0, 401, 5):
                top = 2 / lr * (level or 0) * (1 + 0.03 * s) * (1 + 0.05 * math.sin(step))
                lam = 0.2 if level is None else 0.2 + (top - 0.2) * min(1.0, step / 150)
                loss = 0.5 * math.exp(-step / 200) * (1 + 0.1 * (step % 15 == 10))
                hist.append({"step": step, names.TRAIN_LOSS: loss, names.HESSIAN_LAMBDA_MAX: lam,
                             names.HESSIAN_EDGE_RATIO: lr * lam})
            (sdir / name / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
            rows.append({"trial": name, "status": "completed", "seed": s, "train.lr": lr})
    write_results(sdir, rows)
    (sdir / "sweep.yaml").write_text(yaml.safe_dump({"name": "e", "reproduces": "cohen2021_edge_of_stability"}))
    return load_sweep(sdir)


def test_at_the_edge_at_every_step_size_is_supported(tmp_path):
    res = _results(tmp_path, 1.05)
    t = res.trials[0]
    assert late_sharpness(t) == pytest.approx(1.05, rel=0.06) and sharpened(t)
    fell, rises = loss_fall(t)
    assert fell and rises == pytest.approx(27 / 80)  # the sawtooth: a rise at every third of 81 logged rows
    first, second, third = eos_findings(res)[0]
    assert first.verdict.word == "supported", first
    for lr in LRS:
        v = first.values[f"{lr:g}"]
        assert EOS_BAND[0] <= v["ci95"][0] <= v["mean"] <= v["ci95"][1] <= EOS_BAND[1] and v["seeds"] == 3
    assert second.verdict.word == "supported" and third.verdict.word == "supported"


def test_a_lazy_run_and_an_overshoot_contradict_it(tmp_path):
    lazy = eos_findings(_results(tmp_path, None))[0]
    assert lazy[0].verdict.word == "contradicted", lazy[0]
    assert lazy[1].verdict.word == "contradicted"  # no sharpening: 0 of 9
    over = eos_findings(_results(tmp_path, 1.6))[0][0]
    assert over.verdict.word == "contradicted" and over.values["2"]["ci95"][0] > EOS_BAND[1], over
    assert eos_findings(_results(tmp_path, 1.05, seeds=(0, 1), tag="two"))[0][0].verdict.word == "inconclusive"


def test_second_half_and_the_share_at_the_edge():
    points = [(0, 0.1), (50, 1.0), (100, 2.0), (150, 2.2), (200, 3.0)]
    assert second_half(points, 200) == [2.0, 2.2, 3.0]
    assert eos_share([2.0, 2.2, 3.0, 1.0]) == 0.5  # 1.0 and 1.1 in units of 2/η are in, 1.5 and 0.5 out
    assert eos_share([2.0, 2.0, 2.0]) is None  # fewer than EOS_MIN_ROWS: no call

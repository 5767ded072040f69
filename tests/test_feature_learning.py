"""Feature learning's check (analysis/feature_learning.py) on synthetic coordinate checks built to pass and to fail:
ntk's change must fall as m^-1/2, mup's stay flat, standard's step edge grow as m; swapping the laws contradicts each.
tests/test_repro.py runs the real reproduction's --quick variant."""

import json

import yaml

from overparam_dist.analysis.feature_learning import feature_findings, layers, slope
from overparam_dist.analysis.results import load_sweep, write_results
from overparam_dist.metrics import names

WIDTHS = (64, 256, 1024, 4096)
LAYERS = ("input", "hidden.0")


def _results(tmp_path, exps: dict[str, float], edge_exp: float, tag: str, seeds=(0, 1, 2), diverge_at=None):
    """Five logged steps per trial: feature/delta_rms/<layer> = 0.01 t m^e (1 + 3% per seed, a little per layer),
    regime/edge_ratio_init = 0.001 m^edge_exp under standard."""
    sdir = tmp_path / tag
    sdir.mkdir()
    rows = []
    for param, e in exps.items():
        for m in WIDTHS:
            for s in seeds:
                name = f"{param}-w{m}-s{s}"
                (sdir / name).mkdir()
                hist = [{"step": t, names.TRAIN_LOSS: 0.5, **{
                    names.feature_delta_rms(layer): 0.01 * t * m ** (e + 0.02 * i) * (1 + 0.03 * s)
                    for i, layer in enumerate(LAYERS)}} for t in range(6)]
                (sdir / name / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
                status = "diverged" if diverge_at and param == "standard" and m >= diverge_at else "completed"
                rows.append({"trial": name, "status": status, "seed": s, "model.width": m, "model.param": param,
                             names.REGIME_EDGE_RATIO_INIT: 0.001 * m ** edge_exp * (1 + 0.05 * s)
                             if param == "standard" else 0.2})
    write_results(sdir, rows)
    (sdir / "sweep.yaml").write_text(yaml.safe_dump({"name": tag, "reproduces": "yang2021_feature_learning"}))
    return load_sweep(sdir)


def test_the_laws_as_claimed_are_supported(tmp_path):
    res = _results(tmp_path, {"standard": 0.3, "ntk": -0.5, "mup": 0.0}, 1.0, "pass")
    assert layers(res.trials) == ["input", "hidden.0"]
    assert abs(slope([(64, 1.0), (4096, 8.0)]) - 0.5) < 1e-12 and slope([(64, 1.0)]) is None
    ntk, mup, standard = feature_findings(res)[0]
    assert ntk.verdict.word == "supported" and abs(ntk.values["input"]["estimate"] + 0.5) < 1e-9, ntk
    assert mup.verdict.word == "supported" and mup.values["hidden.0"]["ci95"][0] < 0.02 + 1e-9, mup
    assert standard.verdict.word == "supported" and abs(standard.values["edge_slope"] - 1.0) < 1e-9, standard
    panels = feature_findings(res)[1]
    assert [len(p.series) for p in panels] == [5, 5, 5]  # one line per step t = 1..5, per parameterisation


def test_swapped_laws_are_contradicted_and_divergence_supports_standard(tmp_path):
    res = _results(tmp_path, {"standard": 0.0, "ntk": 0.0, "mup": -0.5}, 0.0, "fail")
    ntk, mup, standard = feature_findings(res)[0]
    assert ntk.verdict.word == "contradicted" and mup.verdict.word == "contradicted", (ntk, mup)
    assert standard.verdict.word == "contradicted", standard  # a step edge flat in width: no need to shrink
    blown = _results(tmp_path, {"standard": 0.0, "ntk": -0.5, "mup": 0.0}, 0.0, "blown", diverge_at=1024)
    standard = feature_findings(blown)[0][2]
    assert standard.verdict.word == "supported" and standard.values["diverged_widths"] == [1024, 4096], standard
    two = _results(tmp_path, {"ntk": -0.5, "mup": 0.0}, 1.0, "two", seeds=(0, 1))
    assert [f.verdict.word for f in feature_findings(two)[0][:2]] == ["inconclusive", "inconclusive"]

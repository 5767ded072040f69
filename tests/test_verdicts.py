"""Issue 24, item 1: verdicts that can fail. Synthetic results built to be supported, contradicted and inconclusive,
through the verdict functions and through a whole report (terminal lines, index.html, claim.json, the demo's
table); trials outside their regime drawn hollow and left out of every fit."""

import hashlib
import json
import math
import re

import numpy as np
import pytest
import yaml

from overparam_dist.analysis import verdicts
from overparam_dist.analysis.results import write_results
from overparam_dist.analysis.verdicts import CONTRADICTED, INCONCLUSIVE, SUPPORTED, ordering, width_law

WIDTHS = [64, 128, 256, 512]


def _slopes(values):
    return dict(enumerate(values))


def test_width_law_verdicts():
    # Built to pass: three seeds around -0.5, tight.
    v = width_law(_slopes([-0.52, -0.47, -0.50]), -0.5)
    assert v.word == SUPPORTED and v.ci95[1] < 0 and v.seeds == 3
    mean = np.mean([-0.52, -0.47, -0.50])
    half = 4.302652729911275 * np.std([-0.52, -0.47, -0.50], ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert v.estimate == pytest.approx(mean) and v.ci95 == pytest.approx((mean - half, mean + half))
    # Built to fail: a tight interval far from the exponent (and from its tolerance band).
    assert width_law(_slopes([-1.02, -0.98, -1.0]), -0.5).word == CONTRADICTED
    assert width_law(_slopes([-0.05, 0.02, 0.0]), -0.5).word == CONTRADICTED  # no dependence on width at all
    # An interval that contains 0 supports no law, even around the exponent (the lee2019 --quick case).
    v = width_law(_slopes([-0.86, 0.18, -0.34]), -0.5)
    assert v.word == INCONCLUSIVE and v.ci95[0] < 0 < v.ci95[1] and "contains 0" in v.reason
    # Two seeds are never enough, however tight; one seed has no interval at all.
    assert width_law(_slopes([-0.50, -0.51]), -0.5).word == INCONCLUSIVE
    v = width_law(_slopes([-0.5]), -0.5)
    assert v.word == INCONCLUSIVE and v.ci95 is None
    # Within the stated tolerance: an interval that does not contain -0.5 but comes within 0.2 of it.
    assert width_law(_slopes([-0.62, -0.66, -0.68]), -0.5).word == SUPPORTED
    assert width_law(_slopes([-0.62, -0.66, -0.68]), -0.5, tol=0.05).word == CONTRADICTED
    # An upper bound O(m^-1/2): falling faster is consistent with it; only a slower fall (beyond the tolerance) or no
    # fall contradicts it.
    assert width_law(_slopes([-1.02, -0.98, -1.0]), -0.5, bound=True).word == SUPPORTED
    v = width_law(_slopes([-0.05, 0.02, 0.0]), -0.5, bound=True)
    assert v.word == CONTRADICTED and "slower than O(m^-0.5)" in v.reason
    assert width_law(_slopes([-0.86, 0.18, -0.34]), -0.5, bound=True).word == INCONCLUSIVE  # contains 0
    assert width_law(_slopes([0.01, -0.02, 0.0]), 0.0, bound=True).word == SUPPORTED  # O(1)
    assert width_law(_slopes([0.5, 0.52, 0.49]), 0.0, bound=True).word == CONTRADICTED  # grows
    # Exponent 0 (no change with width): supported only inside the band.
    assert width_law(_slopes([0.01, -0.02, 0.0]), 0.0).word == SUPPORTED
    assert width_law(_slopes([-0.5, -0.52, -0.49]), 0.0).word == CONTRADICTED
    assert width_law(_slopes([-0.3, 0.2, 0.05]), 0.0).word == INCONCLUSIVE
    # Positive exponents: the interval must lie above 0.
    assert width_law(_slopes([0.48, 0.52, 0.5]), 0.5).word == SUPPORTED
    assert width_law({}, -0.5).word == INCONCLUSIVE


def test_ordering_verdicts():
    # Grows by far more than the seeds' spread at every step.
    grows = {x: {s: 10 * x + 0.1 * s for s in range(3)} for x in (0.0, 0.5, 1.0)}
    assert ordering(grows, +1).word == SUPPORTED
    assert ordering(grows, -1).word == CONTRADICTED  # the claim "falls" on data that grows
    # Means that move the right way at every step, by less than the seeds disagree: inconclusive, not supported.
    noisy = {0.0: {0: 1.0, 1: 3.0, 2: 2.0}, 0.5: {0: 2.9, 1: 1.2, 2: 2.1}, 1.0: {0: 1.5, 1: 2.4, 2: 2.5}}
    means = [np.mean(list(v.values())) for v in noisy.values()]
    assert means[0] < means[1] < means[2]
    v = ordering(noisy, +1)
    assert v.word == INCONCLUSIVE and v.ci95[0] < 0 < v.ci95[1]
    # Up end to end, but one step goes clearly down for every seed: contradicted.
    dip = {0.0: {s: 1.0 + 0.01 * s for s in range(3)}, 0.5: {s: 0.5 + 0.01 * s for s in range(3)},
           1.0: {s: 2.0 + 0.01 * s for s in range(3)}}
    v = ordering(dip, +1)
    assert v.word == CONTRADICTED and "0→0.5" in v.reason
    # A long flat stretch whose steps wobble within the seeds' spread contradicts nothing (Bonferroni over steps).
    rng = np.random.default_rng(3)
    flat = {x: {s: (x > 8) * 5.0 + rng.normal(0, 0.3) for s in range(3)} for x in range(10)}
    assert ordering(flat, +1).word == SUPPORTED
    # Two seeds: inconclusive whatever the values.
    assert ordering({x: {s: 10 * x + s for s in range(2)} for x in (0, 1)}, +1).word == INCONCLUSIVE
    # The estimate is the measured end-to-end change, signed as measured, with its interval.
    v = ordering({0: {0: 3.0, 1: 3.1, 2: 2.9}, 1: {0: 1.0, 1: 1.2, 2: 0.9}}, -1)
    assert v.word == SUPPORTED and v.estimate == pytest.approx(-1.9667, abs=1e-3) and v.ci95[1] < 0


def test_every_trial_verdicts():
    assert verdicts.every_trial(9, 9, 3, "fit").word == SUPPORTED
    assert verdicts.every_trial(8, 9, 3, "fit").word == CONTRADICTED
    assert verdicts.every_trial(9, 9, 1, "fit").word == INCONCLUSIVE
    assert verdicts.every_trial(0, 0, 3, "fit").word == INCONCLUSIVE


def _sweep(tmp_path, slopes_by_seed: dict[int, float], flagged: dict[tuple, str] | None = None,
           reproduces: str | None = None, extra=None):
    """A finished sweep's results.csv: ntk/rel_drift = c_s * m^slope_s per seed, drift/weight_rel ~ m^-1."""
    rows = []
    rng = np.random.default_rng(0)
    for s, slope in slopes_by_seed.items():
        for w in WIDTHS:
            regime = (flagged or {}).get((w, s), "lazy")
            rows.append({"trial": f"w{w}-s{s}", "status": "completed", "model.width": w, "model.depth": 1,
                         "seed": s, "model.param": "ntk", "regime": regime,
                         "ntk/rel_drift": (1e3 if regime != "lazy" else 1.0) * (1 + 0.1 * s) * w ** slope,
                         "drift/weight_rel": 2.0 * w ** -1.0 * math.exp(rng.normal(0, 0.01)),
                         "train/loss": 0.01, **(extra(w, s) if extra else {})})
    sdir = tmp_path / "sweep"
    sdir.mkdir()
    write_results(sdir, rows)
    spec = {"name": "synthetic", **({"reproduces": reproduces} if reproduces else {})}
    (sdir / "sweep.yaml").write_text(yaml.safe_dump(spec))
    return sdir


@pytest.mark.parametrize("slopes,word", [({0: -0.5, 1: -0.48, 2: -0.53}, SUPPORTED),
                                         ({0: -0.05, 1: 0.0, 2: 0.05}, CONTRADICTED),  # O(m^-0.5): no fall
                                         ({0: -0.9, 1: 0.3, 2: -0.3}, INCONCLUSIVE),
                                         ({0: -0.5, 1: -0.5}, INCONCLUSIVE)])
def test_report_says_each_verdict(tmp_path, slopes, word):
    from launcher.demo import width_table
    from overparam_dist.analysis.report import build_local_report, verdict_lines

    rep = build_local_report(_sweep(tmp_path, slopes))
    (fit,) = next(f for f in rep.figures if f.name == "ntk_rel_drift").fits
    assert fit.slope == pytest.approx(np.mean(list(slopes.values())), abs=1e-9) and fit.verdict.word == word
    lines = verdict_lines(rep)
    assert any(line.startswith("  ntk/rel_drift (L=1): slope") and line.endswith(f"{word} against O(m^-0.5)")
               for line in lines), lines
    page = (rep.dir / "index.html").read_text()
    assert f"<td class='t verdict'>{word}</td>" in page
    figures = json.loads((rep.dir / "figures.json").read_text())
    (saved,) = next(f for f in figures if f["name"] == "ntk_rel_drift")["fits"]
    assert saved["verdict"]["word"] == word and saved["verdict"]["seeds"] == len(slopes)
    table = width_table(rep.results.dir)
    assert f"{word} (O(m^-0.5))" in table and "seeds)" in table


def test_flagged_trials_are_hollow_and_left_out_of_fits(tmp_path):
    from overparam_dist.analysis.report import build_local_report

    flagged = {(64, 0): "catapult", (64, 1): "dead"}
    rep = build_local_report(_sweep(tmp_path, {0: -0.5, 1: -0.5, 2: -0.5}, flagged))
    fig = next(f for f in rep.figures if f.name == "ntk_rel_drift")
    (series,) = fig.panels[0].series
    # The 1e3 values of the flagged trials are in no mean and no fit: the slope is exactly -0.5 for every seed.
    assert series.y[0] == pytest.approx(1.2 * 64 ** -0.5)  # seed 2 alone at m = 64
    (fit,) = fig.fits
    assert fit.per_seed == pytest.approx({0: -0.5, 1: -0.5, 2: -0.5}) and fit.verdict.word == SUPPORTED
    (hollow,) = [s for s in fig.panels[0].extra if s.meta.get("hollow")]
    assert hollow.x == [64, 64] and min(hollow.y) > 100
    assert "2 trials outside the regime" in fig.caption and "w64-s0 (catapult)" in fig.caption
    assert "w64-s1 (dead)" in (rep.dir / "index.html").read_text()


def test_report_figures_carry_seed_intervals_a_pdf_and_a_footer(tmp_path):
    """Issue 25 item 5, figures a paper could use: each mean over seeds carries its 95% Student-t interval over seeds
    (verdicts.seed_interval; none from one seed) and each seed's value into figures.json, each figure is a PNG and a
    PDF of the same name, and its footer gives the code's commit, the hash of sweep.yaml and the seed count."""
    from overparam_dist.analysis.plots import from_seeds
    from overparam_dist.analysis.provenance import code_commit
    from overparam_dist.analysis.report import build_local_report

    slopes = {0: -0.5, 1: -0.45, 2: -0.55}
    sdir = _sweep(tmp_path, slopes)
    rep = build_local_report(sdir)
    figures = {f["name"]: f for f in json.loads((rep.dir / "figures.json").read_text())}
    (series,) = figures["ntk_rel_drift"]["panels"][0]["series"]
    assert series["x"] == WIDTHS and series["n_seeds"] == [3] * len(WIDTHS)
    for i, w in enumerate(WIDTHS):
        values = [(1 + 0.1 * s) * w ** slope for s, slope in slopes.items()]  # what _sweep wrote, seed by seed
        mean, ci = verdicts.seed_interval(values)
        assert series["y"][i] == pytest.approx(mean, rel=1e-12)
        assert (series["lo"][i], series["hi"][i]) == pytest.approx(ci, rel=1e-12) and ci[0] < mean < ci[1]
        at_w = sorted(v for pts in series["per_seed"].values() for x, v in pts if x == w)
        assert at_w == pytest.approx(sorted(values), rel=1e-12)
    digest = hashlib.sha256((sdir / "sweep.yaml").read_bytes()).hexdigest()[:12]
    assert re.fullmatch(r"[0-9a-f]{4,40}|unknown", code_commit())
    for f in figures.values():
        assert f["footer"] == f"code {code_commit()} · sweep.yaml sha256 {digest} · 3 seeds", f["name"]
        assert (rep.dir / f["file"]).read_bytes()[:4] == b"\x89PNG" and (rep.dir / f["pdf"]).read_bytes()[:4] == b"%PDF"
    assert "<a href='ntk_rel_drift.pdf'>PDF</a>" in (rep.dir / "index.html").read_text()
    # One seed at a point: no interval there (no bar drawn).
    one = from_seeds("s", {0: [(64, 1.0), (128, 2.0)], 1: [(64, 3.0)]})
    assert one.x == [64, 128] and one.lo[1] is one.hi[1] is None and one.meta["n_seeds"] == [2, 1]
    assert (one.lo[0], one.hi[0]) == pytest.approx(verdicts.seed_interval([1.0, 3.0])[1])
    # repro.py's panels against another axis (label noise) are built the same way
    s = from_seeds("r", {0: [(0.0, 1.0), (1.0, 4.0)], 1: [(0.0, 3.0), (1.0, 6.0)]})
    assert s.y == [2.0, 5.0] and (s.lo[1], s.hi[1]) == pytest.approx(verdicts.seed_interval([4.0, 6.0])[1])


def test_claim_json_carries_verdicts_and_what_was_left_out(tmp_path):
    from overparam_dist.analysis.report import build_local_report

    flagged = {(256, 2): "diverged"}  # not at an end of the axis: 3 seeds span it
    rep = build_local_report(_sweep(tmp_path, {0: -0.5, 1: -0.48, 2: -0.52}, flagged, reproduces="jacot2018_kernel"))
    claim = json.loads((rep.dir / "claim.json").read_text())
    found = {f["quantity"]: f for f in claim["findings"]}
    assert found["relative change of the NTK in training"]["verdict"]["word"] == SUPPORTED
    assert found["|K_T − K_0| / |K_0| by width"]["verdict"]["word"] == SUPPORTED  # falls, for every seed
    # No ntk/init_gap values: inconclusive, never "holds".
    assert found["distance of K_0 from K∞"]["verdict"]["word"] == INCONCLUSIVE
    assert claim["left_out"] == {"w256-s2": "diverged"}


@pytest.mark.parametrize("at_top,word", [(0.1, SUPPORTED), (0.5, CONTRADICTED)])
def test_held_out_accuracy_must_reach_chance(tmp_path, at_top, word):
    """Zhang et al.'s held-out claim: accuracy falls with the label noise *to chance*. A sweep whose accuracy falls
    only to 50% at noise 1 contradicts it, however clearly it falls."""
    from overparam_dist.analysis.repro import findings
    from overparam_dist.analysis.results import load_sweep

    rows = [{"trial": f"n{x}-s{s}", "status": "completed", "seed": s, "data.label_noise": x, "data.classes": 10,
             "model.width": 512, "regime": "rich", "conv/steps_to_fit": 100 + 500 * x + s,
             "test/acc": 0.9 - (0.9 - at_top) * x + 0.01 * (s - 1)}
            for x in (0.0, 0.5, 1.0) for s in range(3)]
    sdir = tmp_path / "zhang"
    sdir.mkdir()
    write_results(sdir, rows)
    (sdir / "sweep.yaml").write_text(yaml.safe_dump({"name": "z", "reproduces": "zhang2017_random_labels"}))
    found = {f.quantity: f for f in findings(load_sweep(sdir))}
    held = found["held-out accuracy (test/acc), by label noise"]
    assert held.verdict.word == word and held.verdict.seeds == 3, held.verdict
    assert found["steps to fit (100% train accuracy), by label noise (mean)"].verdict.word == SUPPORTED

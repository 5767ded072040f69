"""The catapult's phase from behaviour (analysis/catapult.py): the lazy-catapult boundary is read from what trials
did, never from their step, so it can land away from η_crit = 2, and the verdict says so. Synthetic results built to
pass and to fail; tests/test_repro.py runs the real reproduction's --quick variant."""

import yaml

from overparam_dist.analysis.catapult import BAND, boundaries, catapult_findings, phase
from overparam_dist.analysis.results import load_sweep, write_results
from overparam_dist.metrics import names


def _results(tmp_path, onset: float, seeds=(0, 1, 2)):
    """Steps 0.5 .. 16 at width 1024; trials at or past `onset` spike and end with a smaller kernel below 2, those
    past 12 die."""
    rows = []
    for s in seeds:
        for x in (0.5, 1.0, 1.2, 1.5, 1.8, 2.1, 2.4, 3.0, 5.0, 16.0):
            x = x * (1 + 0.01 * s)  # each seed's measured edge ratio differs a little
            cat = x >= onset
            rows.append({"trial": f"x{x:g}-s{s}", "status": "completed", "seed": s, "model.width": 1024,
                         "data.n": 32, "data.classes": 1, names.REGIME_EDGE_RATIO_INIT: x,
                         names.REGIME_EDGE_RATIO: 0.8 if cat else x * 1.001,
                         names.REGIME_LOSS_RISE: 5.0 if cat else 1.0,
                         names.REGIME: "dead" if x > 12 else ("catapult" if x >= 2 else "lazy")})
    sdir = tmp_path / f"onset{onset}-{len(seeds)}"
    sdir.mkdir()
    write_results(sdir, rows)
    (sdir / "sweep.yaml").write_text(yaml.safe_dump({"name": "c", "reproduces": "lewkowycz2020_catapult"}))
    return load_sweep(sdir)


def test_the_boundary_is_read_from_behaviour_and_can_miss_two(tmp_path):
    res = _results(tmp_path, onset=2.0)
    assert [phase(t) for t in res.trials[:10]] == ["lazy"] * 5 + ["catapult"] * 4 + ["diverged"]
    found = boundaries(res.trials)
    assert found[0] == (1.8 * 2.1) ** 0.5  # the geometric middle of the bracket (1.8, 2.1]
    first, second, third = catapult_findings(res)[0]
    assert first.verdict.word == "supported" and BAND[0] <= first.verdict.ci95[0] <= first.verdict.ci95[1] <= BAND[1]
    assert second.verdict.word == "supported" and "between 5" in third.measured
    # Built to fail: the same regime labels (set by the step alone), but the behaviour starts at 1.2
    early = catapult_findings(_results(tmp_path, onset=1.2))[0][0]
    assert early.verdict.word == "contradicted" and early.verdict.ci95[1] < BAND[0], early.verdict
    # Two seeds: no verdict
    assert catapult_findings(_results(tmp_path, onset=2.0, seeds=(0, 1)))[0][0].verdict.word == "inconclusive"

"""Issue 28, items 1-2: a sweep has an identity (its grid, overrides, base, search and claim, hashed into its
directory), a --resume of another sweep under the same name is refused before anything is touched, --extend adds
to it, a multirun's default name carries its identity, and a trial that trained part of its steps is reported as
partial. tests/test_cli_surface.py runs the whole sequence on Ray."""

import json

import pytest
import yaml

from launcher.sweep import identity
from launcher.sweep.driver import prepare
from launcher.sweep.progress import Book, trial_table
from launcher.sweep.spec import load_sweep
from overparam_dist.analysis.results import load_sweep as load_results
from overparam_dist.config import ConfigError


def _sweep(tmp_path, *cli):
    return load_sweep(None, ["name=s", "train.steps=300", *cli], runs_dir=tmp_path)


def _started(sweep):
    """The directory a first run leaves before any trial ends: sweep.yaml and identity.json."""
    sweep.dir.mkdir(parents=True)
    (sweep.dir / "sweep.yaml").write_text(yaml.safe_dump(sweep.to_yaml_dict(), sort_keys=False))
    identity.record(sweep.dir, sweep.to_yaml_dict())


def test_a_resume_of_another_sweep_is_refused_and_extend_adds_to_it(tmp_path):
    first = _sweep(tmp_path, "grid.model.width=[64,128]")
    _started(first)
    before = {p.name: p.read_bytes() for p in first.dir.iterdir()}
    again = _sweep(tmp_path, "grid.model.width=[64,128]", "resources.cpus=0.5")  # operational knobs: the same sweep
    assert prepare(again, resume=True) == {}
    other = _sweep(tmp_path, "grid.model.depth=[1,2]")
    with pytest.raises(ConfigError) as err:
        prepare(other, resume=True)
    assert "holds another sweep (grid.model.depth: absent there, [1, 2] here)" in str(err.value)
    assert "name=" in str(err.value) and "--extend" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="pass --resume to continue that same sweep"):
        prepare(first, resume=False)
    assert prepare(other, resume=False, extend=True) == {}
    assert {p.name: p.read_bytes() for p in first.dir.iterdir()} == before  # checks only read
    identity.record(other.dir, other.to_yaml_dict())
    data = json.loads((first.dir / "identity.json").read_text())
    assert len(data["sweeps"]) == len(data["sha256"]) == 2
    assert prepare(other, resume=True) == {} and prepare(first, resume=True) == {}  # both now belong here


def test_a_directory_from_before_identities_is_judged_by_its_sweep_yaml(tmp_path):
    first = _sweep(tmp_path, "grid.seed=[0,1]")
    first.dir.mkdir(parents=True)
    (first.dir / "sweep.yaml").write_text(yaml.safe_dump(first.to_yaml_dict(), sort_keys=False))
    assert prepare(_sweep(tmp_path, "grid.seed=[0,1]"), resume=True) == {}
    with pytest.raises(ConfigError, match=r"overrides.train.steps: 300 there, 50 here"):
        prepare(load_sweep(None, ["name=s", "train.steps=50", "grid.seed=[0,1]"], runs_dir=tmp_path), resume=True)


def test_multirun_names_carry_the_identity():
    a = load_sweep(None, ["grid.model.width=[64,128]", "train.steps=50"])
    b = load_sweep(None, ["grid.model.depth=[1,2]", "train.steps=5"])
    c = load_sweep(None, ["grid.model.width=[64,128]", "train.steps=50"])
    assert a.name.startswith("multirun-w-") and b.name.startswith("multirun-d-") and a.name == c.name
    assert a.name != load_sweep(None, ["grid.model.width=[64,128]", "train.steps=51"]).name


def test_a_trial_that_trained_part_of_its_steps_is_partial(tmp_path):
    sweep = _sweep(tmp_path, "grid.seed=[0,1]")
    (sweep.dir / "s0").mkdir(parents=True)
    (sweep.dir / "s0" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "train/loss": 1.0 / (s + 1)}) + "\n" for s in (0, 100, 200)))
    book = Book(sweep)
    assert book.rows() == []  # while the sweep runs, no trial's file is read
    rows = book.rows(final=True)
    assert [(r["trial"], r["status"], r["steps"], r["requested_steps"]) for r in rows] == [("s0", "partial", 200, 300)]
    assert "partial" in trial_table(book) and book.partial_step("s1") is None
    book.write(final=True)
    [t] = load_results(sweep.dir).trials
    assert t.status == "partial" and t.flag == "partial"  # drawn hollow, in no fit


def test_an_extension_keeps_the_first_sweeps_rows_as_they_were(tmp_path):
    """--extend writes results.csv as the first sweep's rows, cell for cell, then its own."""
    from overparam_dist.analysis.results import write_results

    first = _sweep(tmp_path, "grid.model.width=[64,128]")
    first.dir.mkdir(parents=True)
    write_results(first.dir, [{"trial": "w64", "status": "completed", "train/loss": 0.1234567890123},
                              {"trial": "w128", "status": "diverged", "train/loss": None}])
    before = (first.dir / "results.csv").read_text().splitlines()
    other = _sweep(tmp_path, "grid.model.depth=[1,2]")
    book = Book(other)
    book.finished("d1", {"status": "completed", "steps": 300})
    lines = (other.dir / "results.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["w64", "w128", "d1"]
    rows = {t.name: t.row for t in load_results(other.dir).trials}
    assert rows["w64"]["train/loss"] == 0.1234567890123 and rows["w128"]["status"] == "diverged"
    assert lines[0].startswith(before[0].split(",")[0])  # the header grows; the first sweep's cells are unchanged

"""The sweep key `batch_seeds`: the seeds of one cell (trials that differ only in `seed`) run as one Tune trial, whose
process trains them together as one batched model (overparam_dist/seeds.py). Each seed keeps its own run directory,
rows and summary; the sweep's book, results.csv and report see the seeds as the trials they are.

A group is a Trial whose `members` are the seeds' trials: Tune runs it like any other (one actor, one process), its
rows and final summaries carry MEMBER_KEY, and the callbacks hand them to the member's name.
"""

from __future__ import annotations

from overparam_dist.config import ConfigError, from_dict, to_dict
from overparam_dist.seed_cells import batch_reason, cell_key

from .spec import Sweep, Trial

MEMBER_KEY = "seed_member"  # in a group's Tune results: the member (trial name) that a row or summary is from


def _cells(trials: list[Trial]) -> list[list[Trial]]:
    """The trials by cell, in the order of each cell's first trial."""
    cells: dict[tuple, list[Trial]] = {}
    for t in trials:
        cells.setdefault(cell_key(t.cfg), []).append(t)
    return list(cells.values())


def group_seeds(trials: list[Trial], batch_seeds: bool | None) -> list[Trial]:
    """`trials` with the seeds of each cell replaced by one group trial where batch_seeds allows (None: auto, where
    seeds.batch_reason finds it exact; false: never)."""
    if batch_seeds is False:
        return list(trials)
    out: list[Trial] = []
    for members in _cells(trials):
        if len(members) > 1 and batch_reason([m.cfg for m in members]) is None:
            first = members[0]
            out.append(Trial(f"{first.name}+{len(members) - 1}seeds", first.point, first.cfg, tuple(members)))
        else:
            out.extend(members)
    return out


def describe(planned: list[Trial]) -> str:
    """How many trials `planned` (group_seeds' output) runs, and how many of them in batches of seeds."""
    groups = [t for t in planned if t.members]
    seeds = sum(len(t.members) for t in groups)
    text = f"{len(planned) - len(groups) + seeds} trial(s)"
    return f"{text}, {seeds} of them as {len(groups)} batch(es) of seeds (batch_seeds)" if groups else text


def check_batchable(sweep: Sweep) -> None:
    """batch_seeds: true refuses, in one line, a sweep with a cell of several seeds that cannot be batched exactly."""
    if sweep.batch_seeds is not True or sweep.kind != "grid":
        return
    where = f"sweep file '{sweep.file}'" if sweep.file is not None else "sweep"
    for members in _cells(sweep.trials):
        if len(members) > 1 and (reason := batch_reason([m.cfg for m in members])) is not None:
            raise ConfigError(f"{where}: batch_seeds: true, but the seeds of {members[0].name} cannot be batched: "
                              f"{reason}; set batch_seeds: auto (batch where exact) or false")


def member_names(config: dict) -> list[str]:
    """The trials a Tune trial's config runs: its members, or itself."""
    return [m["trial"] for m in config.get("members", ())] or [config["trial"]]


def member_configs(t: Trial) -> list[dict]:
    return [{"trial": m.name, "cfg": to_dict(m.cfg)} for m in t.members]


def run_group(config: dict, report, printer) -> list[dict]:
    """The trainable of a group: every member's rows go to `report` (Tune) marked with MEMBER_KEY, through
    `printer(member config, report)` (the per-row log line); returns the members' summaries, in order."""
    members = config["members"]

    def marked(name: str):
        return lambda row: report({**row, MEMBER_KEY: name})

    on_logs = [printer({**config, **m}, marked(m["trial"])) for m in members]
    from overparam_dist.train import run_seeds  # torch: only in the trial's process

    return run_seeds([from_dict(m["cfg"]) for m in members], on_logs)

"""The sweep file's schema, kept apart from what a sweep does (spec.py reads it, driver.py runs it): OmegaConf
checks the types against these dataclasses (one line naming the key), spec.py the meaning."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

SEARCH_KINDS = ("grid", "critical_width")
DEFAULT_WIDTHS = [2 ** i for i in range(2, 11)]  # 4 .. 1024


@dataclass
class ResourcesConfig:
    cpus: float = 1.0  # per process of a trial (a trial has parallel.dp x parallel.tp processes)
    gpus: float = 0.0  # per process of a trial (0: CPU only)


@dataclass
class SearchConfig:
    kind: str = "grid"  # grid | critical_width
    widths: list[int] = field(default_factory=lambda: list(DEFAULT_WIDTHS))  # critical_width candidates
    k: int = 0  # critical_width: probes in flight per cell + 1 (0: as many as there are free slots)


@dataclass
class SweepConfig:
    name: Optional[str] = None  # default: the file's stem
    base: Optional[str] = None  # an experiment preset, relative to configs/
    overrides: dict[str, Any] = field(default_factory=dict)  # config key -> value, for every trial
    grid: dict[str, Any] = field(default_factory=dict)  # config key -> list of values
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_failures: int = 2  # retries of a failed trial (each resumes from its checkpoint)
    max_trials: int = 10000  # a grid of more trials is refused in one line (a typo, more often than not); raise it
    # false: one Ray actor per trial, named <sweep>/<trial> on the dashboard; true: actors run trial after trial,
    # which saves their start (imports of Ray Tune and torch: 7 s per trial on 2 cores); None (`auto`, the
    # default): true on the private Ray a sweep starts, false on a cluster it connects to (tune.actors_reused)
    reuse_actors: Optional[bool] = None
    # The seeds of one cell (trials that differ only in `seed`) as one batched model in one trial process
    # (overparam_dist/seeds.py), each seed still with its own run directory: None (`auto`, the default) where that
    # is exact (one process per trial, no torch.compile, no bf16); true also refuses a sweep where it is not
    batch_seeds: Optional[bool] = None
    search: SearchConfig = field(default_factory=SearchConfig)
    reproduces: Optional[str] = None  # a claim of overparam_dist/analysis/claims.py: the report sets it beside ours
    quick: dict[str, Any] = field(default_factory=dict)  # sweep key -> value, applied by --quick


SWEEP_KEYS = tuple(f.name for f in fields(SweepConfig))

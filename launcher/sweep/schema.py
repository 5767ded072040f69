"""The sweep file's schema, kept apart from what a sweep does (spec.py reads it, driver.py runs it): OmegaConf
checks the types against these dataclasses (one line naming the key), and the functions below the values a type
cannot (`auto`, the search's forms and bounds); spec.py the meaning of a sweep as a whole."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from overparam_dist.config import ConfigError, describe_omegaconf_error, shorten

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


def unknown_key(what: str, key: str, allowed: tuple[str, ...] | list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{what}: unknown key {shorten(repr(str(key)))}{hint}; allowed: {', '.join(allowed)}")


def auto_bool(raw: dict[str, Any], key: str, where: str) -> bool | None:
    value = raw.get(key, "auto")
    if value == "auto" or value is None:
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: '{key}' = {value!r} must be true, false or auto")
    return value


def typed_sections(where: str, sections: dict[str, Any]) -> SweepConfig:
    """The sections merged into the schema: a wrong type or an unknown key is one line naming the key."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepConfig), sections))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {describe_omegaconf_error(exc, 'sweep key')}") from None


def normalise_search(search: Any, where: str) -> dict[str, Any]:
    """`search: critical_width` and a mapping without `kind` (which means the critical-width search) -> a mapping."""
    if search is None or search == "grid":
        return {"kind": "grid"}
    if isinstance(search, str):
        search = {"kind": search}
    if not isinstance(search, dict):
        raise ConfigError(f"{where}: 'search' must be one of {', '.join(SEARCH_KINDS)} or a mapping with 'kind'")
    search = {"kind": "critical_width", **search}
    if search["kind"] not in SEARCH_KINDS:
        raise ConfigError(f"{where}: 'search.kind' = {search['kind']!r}: allowed values are {', '.join(SEARCH_KINDS)}")
    if search["kind"] == "grid" and set(search) - {"kind"}:
        raise unknown_key(f"{where}, search", sorted(set(search) - {"kind"})[0], ("kind",))
    return search


def check_search(search: SearchConfig, where: str) -> dict[str, Any]:
    if search.kind == "grid":
        return {"kind": "grid"}
    widths = list(search.widths)
    if len(widths) < 1 or any(w < 1 for w in widths):
        raise ConfigError(f"{where}: 'search.widths' must be a list of positive integers")
    if sorted(set(widths)) != widths:
        raise ConfigError(f"{where}: 'search.widths' must be strictly increasing")
    if search.k < 0 or search.k == 1:
        raise ConfigError(f"{where}: 'search.k' = {search.k!r} must be 0 (use the free slots) or an integer >= 2")
    return {"kind": "critical_width", "widths": widths, "k": search.k}

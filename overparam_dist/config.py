"""Loading and validating a Config, whose schema (nested dataclasses with defaults) lives in schema.py.

Resolution order: schema defaults <- YAML file (`--config`) <- `key=value` overrides.
`load_config` merges and validates; every problem is raised as `ConfigError` with one line that
names the key and what is allowed, before any process starts.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .schema import (
    ANALYTIC_PARAMS,
    AUTO,
    CHOICES,
    INT_MAX,
    LAMBDA_MIN,
    LAMBDA_MIN_SAMPLES,
    LR_RULES,
    MAX_LR_SCALE,
    MAX_NAME_BYTES,
    MAX_SAMPLES,
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    MetricsConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
    WandbConfig,
    kernel_is_known,
)

__all__ = [
    "ANALYTIC_PARAMS",
    "AUTO",
    "CHOICES",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "LAMBDA_MIN",
    "LAMBDA_MIN_SAMPLES",
    "LR_RULES",
    "INT_MAX",
    "MAX_LR_SCALE",
    "MAX_NAME_BYTES",
    "MAX_SAMPLES",
    "MetricsConfig",
    "ModelConfig",
    "ParallelConfig",
    "RunConfig",
    "TrainConfig",
    "WandbConfig",
    "kernel_is_known",
]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def describe_omegaconf_error(exc: OmegaConfBaseException, what: str = "config key") -> str:
    """One line naming the key of an OmegaConf error (also used for the sweep file's schema)."""
    key = getattr(exc, "full_key", None)
    msg = getattr(exc, "msg", None) or _first_line(exc)
    msg = msg.strip().splitlines()[0]
    if key and len(str(key)) > MAX_KEY_SHOWN:  # a file that is not a config (say /etc/passwd): never echo its content
        return f"{what} {shorten(str(key))}: not a key of the schema (is the file a config?)"
    if key:
        return f"{what} '{key}': {msg}"
    return f"{what.split()[0]}: {msg}"


MAX_KEY_SHOWN = 60  # characters of an unknown key an error line repeats


def shorten(text: str) -> str:
    """`text`, or its first characters and how long it was: error lines never echo a whole file."""
    return text if len(text) <= MAX_KEY_SHOWN else f"<a name of {len(text)} characters, not shown>"


def nest(settings: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: value} (or an already nested mapping) -> a nested mapping."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        node = out
        *parents, leaf = str(key).split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}': '{part}' is not a section")
        node[leaf] = nest(value) if isinstance(value, dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                settings: dict[str, Any] | None = None) -> Config:
    """Merge defaults <- YAML <- `settings` ({dotted key: value}, typed values) <- `key=value` overrides,
    validate, and return a typed Config object."""
    schema = OmegaConf.structured(Config)
    layers = [schema]
    from_file: set[str] = set()  # keys the YAML file sets, and keys given here: a file's value an override
    given: set[str] = set(flatten(nest(settings)) if settings else {})  # contradicts is refused (_check_inherited)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml errors
            raise ConfigError(f"config file '{path}' is not valid YAML: {_first_line(exc)}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"config file '{path}' must be a mapping of sections (model:, data:, train:, ...), "
                              f"not a {'list' if loaded is not None else 'empty document'}")
        if "derived" in loaded:
            # A run's config.yaml carries derived facts (effective lrs, data info): not inputs.
            loaded.pop("derived")
        from_file = set(flatten(OmegaConf.to_container(loaded)))
        layers.append(loaded)
    if settings:
        try:
            layers.append(OmegaConf.create(nest(settings)))
        except OmegaConfBaseException as exc:
            raise ConfigError(describe_omegaconf_error(exc)) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0]
        given.add(key.lstrip("+~"))
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:  # one at a time, so a value YAML cannot parse is named
            layers.append(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(describe_omegaconf_error(exc)) from None
        except Exception as exc:
            raise ConfigError(f"config key '{key}': cannot parse the value ({_first_line(exc)})") from None
    try:
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc)) from None
    if isinstance(cfg.train.lr, str) and cfg.train.lr not in LR_RULES:
        with contextlib.suppress(ValueError):  # YAML 1.1 reads 1e-3 as a string: a number was meant
            cfg.train.lr = float(cfg.train.lr)
    _check_inherited(cfg, path, from_file, given)
    validate(cfg)
    return cfg


LABELLED_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10}  # the classes of each data set that has its own labels


def _check_inherited(cfg: Config, path: Path | None, from_file: set[str], given: set[str]) -> None:
    """data.target=auto becomes labels for a data set with its own labels, regression for synthetic data. A data set
    with its own labels, named by an override, must not silently inherit a file's data.target or data.classes made
    for another data set (one ConfigError naming both keys); data.classes not set anywhere becomes the data set's
    own count. So --print-config shows what is used."""
    d = cfg.data
    classes = LABELLED_CLASSES.get(d.name)
    if d.target == AUTO:  # cross-entropy needs labels whatever the data set
        d.target = "labels" if classes is not None or cfg.train.loss == "ce" else "regression"
    if classes is None:
        return
    if d.target == "labels" and "data.classes" not in from_file | given:
        d.classes = classes
    if "data.name" not in given:
        return  # the file chose this data set: its other values were written for it
    conflicts = []
    if d.target != "labels":
        conflicts.append(("data.target", d.target, "labels", f"it replaces {d.name}'s labels with {d.target} targets"))
    elif d.classes != classes:
        conflicts.append(("data.classes", d.classes, classes, f"{d.name} has {classes} classes"))
    for key, value, fix, why in conflicts:
        if key in from_file and key not in given:
            explicit = (f"{key}={value}" if key == "data.target" else
                        f"data.target=regression data.classes={value} for {value}-dimensional regression targets")
            raise ConfigError(f"config key '{key}' = {value!r} from '{path}' does not fit data.name={d.name} given as "
                              f"an override ({why}): pass {key}={fix} to use {d.name}'s labels, or {explicit} to ask "
                              "for it explicitly")


def from_dict(cfg_dict: dict[str, Any]) -> Config:
    """A config as `to_dict` wrote it (e.g. sent to another process) back to a validated Config."""
    return load_config(settings=cfg_dict)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def get_key(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def probe_samples(cfg: Config, n: int) -> int:
    """How many of the first training samples the NTK and activation metrics are taken on (metrics.ntk_probe)."""
    return n if cfg.metrics.ntk_probe == "all" else min(int(cfg.metrics.ntk_probe), n)


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first bad key. Checks values, not just types."""

    def bad(key: str, allowed: str) -> None:
        raise ConfigError(f"config key '{key}' = {get_key(cfg, key)!r}: {allowed}")

    for key, allowed in CHOICES.items():
        if get_key(cfg, key) not in allowed:
            bad(key, "allowed values are " + ", ".join(allowed))
    for key, most in INT_MAX.items():
        if get_key(cfg, key) > most:
            bad(key, f"must be at most {most}")
    if cfg.seed < 0:
        bad("seed", "must be >= 0")

    m, d, t = cfg.model, cfg.data, cfg.train
    if m.width < 1:
        bad("model.width", "must be a positive integer")
    if m.depth < (0 if m.arch == "fc" else 1):
        bad("model.depth", "must be >= 1 (number of hidden layers); model.arch=fc also takes 0 (y = B relu(A x))")
    if m.train_input_only and m.train_outer is not None:
        bad("model.train_outer", "must be left unset with model.train_input_only=true (which trains A alone and fixes "
                                 "B at random signs)")
    if m.depth == 0 and not (m.train_input_only or effective_train_outer(cfg)):
        bad("model.depth", "0 leaves no hidden layer to train: set model.train_input_only=true or "
                           "model.train_outer=true")
    if not (m.tau > 0 and math.isfinite(m.tau)):
        bad("model.tau", "must be a positive finite number")
    if m.kernel_size < 1 or m.kernel_size % 2 == 0:
        bad("model.kernel_size", "must be a positive odd integer")
    if d.n < 1:
        bad("data.n", "must be a positive integer")
    if d.test_n < 0:
        bad("data.test_n", "must be >= 0 (0 = no held-out set)")
    if d.dim < 2:
        bad("data.dim", "must be >= 2")
    if d.classes < 1:
        bad("data.classes", "must be >= 1")
    if d.target == "labels" and d.classes < 2:
        bad("data.classes", "must be >= 2 for label targets")
    if d.target == "labels" and d.name in LABELLED_CLASSES and d.classes != LABELLED_CLASSES[d.name]:
        bad("data.classes", f"{d.name} has {LABELLED_CLASSES[d.name]} classes (label targets use them all)")
    if t.loss == "ce" and d.target != "labels":
        bad("train.loss", "ce needs data.target=labels")
    if not 0.0 <= d.label_noise <= 1.0:
        bad("data.label_noise", "must be in [0, 1]")
    if m.arch == "cnn" and d.name == "synthetic" and math.isqrt(d.dim) ** 2 != d.dim:
        bad("data.dim", "must be a perfect square for model.arch=cnn (inputs are viewed as sqrt(d) x sqrt(d) images)")
    if t.steps < 0:
        bad("train.steps", "must be >= 0")
    if t.lr not in LR_RULES and (isinstance(t.lr, bool) or not isinstance(t.lr, (int, float))
                                 or not (t.lr > 0 and math.isfinite(t.lr))):
        bad("train.lr", f"must be '{AUTO}' (from the kernel at init), '{LAMBDA_MIN}' (from the smallest eigenvalue of "
                        "K_inf) or a positive finite number")
    if t.lr == LAMBDA_MIN and not kernel_is_known(cfg):
        bad("train.lr", f"{LAMBDA_MIN} needs the infinite-width kernel: model.arch=fc with model.param=ntk, or paper "
                        "without biases")
    if t.lr == LAMBDA_MIN and d.n > LAMBDA_MIN_SAMPLES:
        bad("train.lr", f"{LAMBDA_MIN} takes lambda_min(K_inf) over the whole training set: data.n must be <= "
                        f"{LAMBDA_MIN_SAMPLES}")
    if not (0 < t.lr_scale <= MAX_LR_SCALE):
        bad("train.lr_scale", f"must be a positive number up to {MAX_LR_SCALE:g} (1 = half the stability edge)")
    if t.lr_kernel == "infinite" and not kernel_is_known(cfg):
        bad("train.lr_kernel", "infinite needs the infinite-width kernel: model.arch=fc with model.param=ntk, or paper "
                               "without biases; use max")
    if t.batch_size < 0:
        bad("train.batch_size", "must be >= 0 (0 = full batch)")
    if t.batch_size > d.n:
        bad("train.batch_size", f"must be <= data.n ({d.n})")
    if not (t.target_loss >= 0 and math.isfinite(t.target_loss)):
        bad("train.target_loss", "must be a finite number >= 0 (0 = off)")
    if not 0 <= t.target_ratio < 1:
        bad("train.target_ratio", "must be in [0, 1): a fraction of the loss at step 0 (0 = off)")
    if t.precision != "fp32" and t.dtype == "float64":
        bad("train.precision", "must be fp32 with train.dtype=float64 (tf32 and bf16 lower float32 arithmetic)")
    if cfg.metrics.every < 0:
        bad("metrics.every", "must be >= 0 (0 = only at start and end)")
    probe = cfg.metrics.ntk_probe
    if probe != "all" and (isinstance(probe, bool) or not isinstance(probe, int) or not 1 <= probe <= MAX_SAMPLES):
        bad("metrics.ntk_probe", f"must be an integer from 1 to {MAX_SAMPLES}, or all (the whole training set)")
    if not 1 <= cfg.metrics.ntk_memory_mb <= 2**20:
        bad("metrics.ntk_memory_mb", "must be from 1 to 1048576 (MiB for two tiles' captures of the NTK)")
    if cfg.metrics.lin_max < 0:
        bad("metrics.lin_max", "must be >= 0 (0 = ntk/lin_gap off)")
    if cfg.metrics.kernel_circle < 0:
        bad("metrics.kernel_circle", "must be >= 0 (0 = off, else the number of points on the circle, e.g. 64)")
    if cfg.metrics.window < 2:
        bad("metrics.window", "must be >= 2")
    if cfg.checkpoint.every < 0:
        bad("checkpoint.every", "must be >= 0 (0 = only at the end)")
    if cfg.checkpoint.keep < 1:
        bad("checkpoint.keep", "must be >= 1")
    p = cfg.parallel
    if p.dp < 1:
        bad("parallel.dp", "must be >= 1")
    if p.tp < 1:
        bad("parallel.tp", "must be >= 1")
    batch = t.batch_size or d.n
    if batch % p.dp != 0:
        key = "train.batch_size" if t.batch_size else "data.n"
        raise ConfigError(f"config key 'parallel.dp' = {p.dp}: must divide the global batch ({key} = {batch}) "
                          "so every replica gets an equal share")
    if m.width % p.tp != 0:
        bad("parallel.tp", f"must divide model.width ({m.width})")
    if cfg.metrics.hessian and p.tp > 1:
        bad("metrics.hessian", "must be false with parallel.tp > 1 (its Hessian-vector products need whole layers)")
    if any(c in cfg.run.name for c in "/\\") or any(ord(c) < 32 for c in cfg.run.name) or cfg.run.name in (".", ".."):
        bad("run.name", "must be a plain name: not '.' or '..', no '/', '\\' or control characters")
    if len(cfg.run.name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"config key 'run.name' is {len(cfg.run.name.encode())} bytes long: at most "
                          f"{MAX_NAME_BYTES} (file names on most file systems stop at 255)")
    if any(ord(c) < 32 for c in cfg.run.dir):
        bad("run.dir", "must not contain control characters")


def effective_train_outer(cfg: Config) -> bool:
    """A and B both train (model.train_input_only trains A alone: False)."""
    if cfg.model.train_input_only:
        return False
    if cfg.model.train_outer is not None:
        return cfg.model.train_outer
    return cfg.model.param != "paper"

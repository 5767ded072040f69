"""The memory one rank of a trial needs, estimated from the config before anything is allocated.

A width, n or dim that cannot fit is then one line naming the estimate and what the machine has, not an
allocator's traceback after the processes started. The estimate is a floor, so it never refuses a trial that
fits: the parameters (sharded over tp), one gradient per trained parameter, the training set (every rank holds
all of it, see train.py), one activation per unit of each layer for a batch, and the probe set's ReLU inputs at init
and NTK kernels (ntk_bytes: with metrics.ntk_probe=all they can be the largest term). Other metrics add little.
"""

from __future__ import annotations

import math
import os

import torch

from .config import Config, ConfigError, effective_train_outer, probe_samples
from .models import skeleton
from .models.init import parameter_rules

# Real data sets as stored: (sample shape, classes, training samples); the whole file is read before sampling.
REAL_DATA = {"digits": ((1, 8, 8), 10, 1797), "mnist": ((1, 28, 28), 10, 60000), "cifar10": ((3, 32, 32), 10, 50000)}
GIB = 1024 ** 3


def _data_shape(cfg: Config) -> tuple[tuple[int, ...], int, int]:
    """(model input shape, outputs, samples held in memory while the data set is built)."""
    d, image = cfg.data, cfg.model.arch == "cnn"
    if d.name == "synthetic":
        side = math.isqrt(d.dim)
        return ((1, side, side) if image else (d.dim,)), d.classes, d.n
    shape, classes, stored = REAL_DATA[d.name]
    outputs = classes if d.target == "labels" else d.classes
    return (shape if image else (math.prod(shape),)), outputs, stored


def bytes_per_rank(cfg: Config) -> int:
    """A floor on the bytes one rank allocates for this trial."""
    shape, outputs, held = _data_shape(cfg)
    itemsize = 8 if cfg.train.dtype == "float64" else 4
    model = skeleton(cfg, shape, outputs)  # meta device: no memory
    rules = parameter_rules(model, cfg.model.param, cfg.model.width, effective_train_outer(cfg),
                            cfg.model.train_input_only)
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for n, p in model.named_parameters() if rules[n].trainable)
    tp = cfg.parallel.tp
    data = (held * math.prod(shape) + cfg.data.n * outputs) * itemsize
    batch = cfg.train.batch_size or cfg.data.n
    activations = batch * cfg.model.width * (cfg.model.depth + 1) * itemsize // tp
    return (params + trained) * itemsize // tp + data + activations + ntk_bytes(cfg, shape, outputs)


def ntk_bytes(cfg: Config, shape: tuple[int, ...], outputs: int) -> int:
    """The probe set's memory (metrics/tracker.py), p = probe samples: the ReLU inputs at init kept for the flips and
    feature/* (p x units x positions per ReLU layer); with metrics.ntk, the float64 kernels (K_0 kept beside K_t and
    the copy eigvalsh works on, 3 p^2, or at init the full (pC)^2 kernel of the label complexity with its solve
    beside K_0, whichever is more) and a tile's working memory, at most metrics.ntk_memory_mb."""
    p = probe_samples(cfg, cfg.data.n)
    itemsize = 8 if cfg.train.dtype == "float64" else 4
    positions = math.prod(shape[1:]) if cfg.model.arch == "cnn" else 1
    layers = cfg.model.depth + 1
    init_pre = p * cfg.model.width * positions * layers * itemsize // cfg.parallel.tp
    if not cfg.metrics.ntk:
        return init_pre
    per_sample = itemsize * positions * cfg.model.width * (layers + 1) * (1 + outputs)  # a capture's inputs, signals
    tile = min(cfg.metrics.ntk_memory_mb * 2**20, 3 * p * per_sample + 32 * p * p)
    return init_pre + 8 * max(3 * p * p, 2 * (p * outputs) ** 2 + p * p) + tile


def available_bytes(cfg: Config) -> tuple[int, str]:
    """(bytes one rank may use at most, and where that number comes from)."""
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        # The device's total memory: asking for the free memory would create a CUDA context here, in the
        # launching process or on the wrong device of a rank that has not chosen its own yet.
        device = int(os.environ.get("LOCAL_RANK", 0)) % max(torch.cuda.device_count(), 1)
        return torch.cuda.get_device_properties(device).total_memory, f"on CUDA device {device}"
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or 0) or (cfg.parallel.dp * cfg.parallel.tp)
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    return kib * 1024 // ranks, f"MemAvailable / {ranks} process(es) on this host"


def w0_cache_budget(cfg: Config) -> int | None:
    """Bytes the weight-drift metric may keep for an exact copy of W_0 and a buffer of D = W_t - W_0
    (metrics/drift.py): a quarter of what one rank has left after this trial's footprint floor. None where the
    free memory cannot be read (the drift metric's default then)."""
    if not os.path.isfile("/proc/meminfo") and not torch.cuda.is_available():
        return None
    have, _ = available_bytes(cfg)
    return max(0, have - bytes_per_rank(cfg)) // 4


def check_fits_memory(cfg: Config, copies: int = 1) -> None:
    """ConfigError (one line) when the floor estimate already exceeds the memory available to one rank, or when the
    device it would be on is not there. `copies`: trials held by one process at once (seeds.py)."""
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device' = 'cuda': no CUDA device is available to this process; use "
                          "train.device=auto or cpu")
    need = bytes_per_rank(cfg) * copies
    if not os.path.isfile("/proc/meminfo") and not torch.cuda.is_available():
        return  # no way to know what is free here (not Linux): the allocator will say
    have, where = available_bytes(cfg)
    if need > have:
        raise ConfigError(
            f"model.width={cfg.model.width}, model.depth={cfg.model.depth}, data.n={cfg.data.n}, "
            f"data.dim={cfg.data.dim}: one process needs at least {need / GIB:.1f} GiB (parameters, gradients, "
            f"data, activations, the probe NTK{f', for {copies} batched seeds' if copies > 1 else ''}), but only "
            f"{have / GIB:.1f} GiB is available ({where}); lower the width, n, dim or metrics.ntk_probe, or shard "
            f"the layers with parallel.tp{' (or set batch_seeds: false)' if copies > 1 else ''}")

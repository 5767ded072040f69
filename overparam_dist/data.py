"""Training data, built identically on every rank from the seed.

`synthetic` follows the theory's assumptions (Allen-Zhu et al. 2018, assumption 2.1): every input has
unit norm with last coordinate 1/sqrt(2) (which stands in for a bias), and no two inputs are closer
than delta > 0; delta is computed and reported. Real data sets are flattened / kept as images,
normalised per sample to unit norm, and subsampled to `data.n` with the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config, ConfigError
from .data_files import check_available, files_of, read_cifar_batch, read_idx, verify_files

DATA_SEED_OFFSET = 1_000_003  # data and weights use different streams of the same seed


@dataclass
class Dataset:
    x: torch.Tensor  # (n, *input_shape), float32
    y: torch.Tensor  # labels (n,) int64, or regression targets (n, C) float32
    num_outputs: int
    input_shape: tuple[int, ...]
    is_classification: bool
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]


def min_separation(x: torch.Tensor) -> float:
    """delta = min over i != j of ||x_i - x_j|| (float64)."""
    flat = x.flatten(1).double()
    n = flat.shape[0]
    if n < 2:
        return float("inf")
    best = float("inf")
    for lo in range(0, n, 1024):  # blocks of rows: O(1024 n) memory, not an n x n matrix
        d = torch.cdist(flat[lo:lo + 1024], flat)
        rows = torch.arange(d.shape[0])
        d[rows, rows + lo] = float("inf")
        best = min(best, float(d.min()))
    return best


def _synthetic_inputs(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, dim - 1, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True) / math.sqrt(2.0)
    last = torch.full((n, 1), 1.0 / math.sqrt(2.0), dtype=torch.float64)
    return torch.cat([z, last], dim=1).float()


def _teacher_targets(x: torch.Tensor, classes: int, g: torch.Generator, width: int = 64) -> torch.Tensor:
    """Outputs of a random 2-layer ReLU teacher, scaled so the mean squared target norm is 1."""
    flat = x.flatten(1).double()
    w1 = torch.randn(flat.shape[1], width, generator=g, dtype=torch.float64) * math.sqrt(2.0)
    w2 = torch.randn(width, classes, generator=g, dtype=torch.float64)
    y = torch.relu(flat @ w1) @ w2
    y = y / y.pow(2).sum(1).mean().sqrt()
    return y.float()


def _download(name: str, root: Path) -> None:
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets
    except ImportError:
        raise ConfigError(
            f"data.download=true for {name} needs torchvision (pip install torchvision), "
            f"or place the files under data.root '{root}' yourself"
        ) from None
    cls = datasets.MNIST if name == "mnist" else datasets.CIFAR10
    cls(str(root), train=True, download=True)


def _load_real(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, int]:
    name, root = cfg.data.name, Path(cfg.data.root)
    if cfg.data.download and name in ("mnist", "cifar10"):
        _download(name, root)
    check_available(cfg)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
        return x, torch.tensor(bunch.target, dtype=torch.int64), 10
    verify_files(cfg)  # again after a download: what is read is what was checked
    if name == "mnist":
        images, labels = files_of(cfg)
        return read_idx(images).float().unsqueeze(1), read_idx(labels).long(), 10
    xs, ys = zip(*(read_cifar_batch(path) for path in files_of(cfg)))
    return torch.cat(xs).float(), torch.cat(ys), 10


def build_dataset(cfg: Config, image_inputs: bool | None = None) -> Dataset:
    """The training set. `image_inputs`: keep (C, H, W) images (cnn) instead of flat vectors."""
    d = cfg.data
    if image_inputs is None:
        image_inputs = cfg.model.arch == "cnn"
    g = torch.Generator().manual_seed(cfg.seed + DATA_SEED_OFFSET)
    info: dict = {"name": d.name}

    if d.name == "synthetic":
        x = _synthetic_inputs(d.n, d.dim, g)
        classes = d.classes
        labels = torch.randint(0, classes, (d.n,), generator=g)
        if image_inputs:
            side = math.isqrt(d.dim)
            x = x.reshape(d.n, 1, side, side)
    else:
        x_all, y_all, classes = _load_real(cfg)
        if d.n > x_all.shape[0]:
            raise ConfigError(f"config key 'data.n' = {d.n}: {d.name} has only {x_all.shape[0]} training samples")
        idx = torch.randperm(x_all.shape[0], generator=g)[: d.n]
        x, labels = x_all[idx], y_all[idx]
        x = x / x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        if not image_inputs:
            x = x.flatten(1)

    if d.label_noise > 0:
        noisy = torch.rand(d.n, generator=g) < d.label_noise
        clean = labels
        labels = torch.where(noisy, torch.randint(0, classes, (d.n,), generator=g), labels)
        info["label_noise_replaced"] = int(noisy.sum())
        info["label_noise_changed"] = int((labels != clean).sum())

    if d.target == "labels":
        y, num_outputs, is_cls = labels, classes, True
    elif d.target == "regression":
        y = (torch.randn(d.n, d.classes, generator=g) / math.sqrt(d.classes)).float()
        num_outputs, is_cls = d.classes, False
    else:
        y = _teacher_targets(x, d.classes, g)
        num_outputs, is_cls = d.classes, False

    info.update({
        "n": int(x.shape[0]),
        "input_shape": list(x.shape[1:]),
        "delta": min_separation(x),
        "max_norm_error": float((x.flatten(1).double().norm(dim=1) - 1).abs().max()),
        "num_outputs": num_outputs,
    })
    return Dataset(x.contiguous(), y.contiguous(), num_outputs, tuple(x.shape[1:]), is_cls, info)

"""Training data, built identically on every rank from the seed.

`synthetic` follows the theory's assumptions (Allen-Zhu et al. 2018, assumption 2.1): every input has
unit norm with last coordinate 1/sqrt(2) (which stands in for a bias), and no two inputs are closer
than delta > 0; delta is computed and reported. Real data sets are flattened / kept as images,
normalised per sample to unit norm, and subsampled to `data.n` with the seed.

`data.test_n` adds a held-out set, built so that the training set is the same with it or without it: synthetic
inputs (and their random labels or targets) from a separate stream of the seed, teacher targets from the same
teacher; the test split of MNIST and CIFAR-10; for digits, which has no split, samples outside the training subset.
Label noise is applied to the training labels only: the test labels are the data set's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config, ConfigError
from .data_files import check_available, check_labelled, files_of, read_cifar_batch, read_idx, verify_files

DATA_SEED_OFFSET = 1_000_003  # data and weights use different streams of the same seed
TEST_SEED_OFFSET = 2_000_029  # and the held-out samples a third one


@dataclass
class Dataset:
    x: torch.Tensor  # (n, *input_shape), float32
    y: torch.Tensor  # labels (n,) int64, or regression targets (n, C) float32
    num_outputs: int
    input_shape: tuple[int, ...]
    is_classification: bool
    info: dict = field(default_factory=dict)
    x_test: torch.Tensor | None = None  # data.test_n held-out samples (None when 0), labelled like x
    y_test: torch.Tensor | None = None

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


def _teacher_targets(x: torch.Tensor, classes: int, g: torch.Generator, width: int = 64,
                     x_test: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Outputs of a random 2-layer ReLU teacher, scaled so the mean squared target norm on x is 1; the same
    teacher, with the same scale, on x_test."""
    w1 = torch.randn(x.flatten(1).shape[1], width, generator=g, dtype=torch.float64) * math.sqrt(2.0)
    w2 = torch.randn(width, classes, generator=g, dtype=torch.float64)
    y = torch.relu(x.flatten(1).double() @ w1) @ w2
    scale = y.pow(2).sum(1).mean().sqrt()
    y_test = None if x_test is None else (torch.relu(x_test.flatten(1).double() @ w1) @ w2 / scale).float()
    return (y / scale).float(), y_test


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


def _read_split(cfg: Config, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.data.name == "mnist":
        images, labels = files_of(cfg, split)
        x, y = read_idx(images), read_idx(labels).long()
        check_labelled(x, y, 10, f"'{images}', '{labels}'", 3)
        return x.float().unsqueeze(1), y
    paths = files_of(cfg, split)
    xs, ys = zip(*(read_cifar_batch(path) for path in paths))
    x, y = torch.cat(xs), torch.cat(ys)
    check_labelled(x, y, 10, ", ".join(f"'{p}'" for p in paths), 4)
    return x.float(), y


def _load_real(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, int, tuple | None]:
    """(training pool, its labels, classes, the test split or None: digits has none)."""
    name, root = cfg.data.name, Path(cfg.data.root)
    if cfg.data.download and name in ("mnist", "cifar10"):
        _download(name, root)
    check_available(cfg)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
        return x, torch.tensor(bunch.target, dtype=torch.int64), 10, None
    verify_files(cfg)  # again after a download: what is read is what was checked
    x, y = _read_split(cfg, "train")
    return x, y, 10, _read_split(cfg, "test") if cfg.data.test_n > 0 else None


def _unit_norm(x: torch.Tensor, image_inputs: bool) -> torch.Tensor:
    x = x / x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return x if image_inputs else x.flatten(1)


def _target_norm(x: torch.Tensor, how: str) -> float:
    return math.sqrt(x[0].numel()) if how == "sqrt_d" else 1.0


def _scale_inputs(x: torch.Tensor, x_test: torch.Tensor | None, how: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """data.input_norm on unit-norm inputs: `sphere` keeps them; `sqrt_d` scales them to |x|^2 = d (the scale of
    standardised inputs, Jacot's and Lee's); `standardize` gives every feature zero mean and unit variance over the
    training set (the held-out set with the training set's statistics; a constant feature is only centred)."""
    if how == "sphere":
        return x, x_test
    if how == "sqrt_d":
        c = _target_norm(x, how)
        return x * c, None if x_test is None else x_test * c
    flat = x.flatten(1).double()
    mean, sd = flat.mean(0), flat.std(0, unbiased=False)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))

    def standardize(t: torch.Tensor) -> torch.Tensor:
        return ((t.flatten(1).double() - mean) / sd).float().reshape(t.shape)

    return standardize(x), None if x_test is None else standardize(x_test)


def build_dataset(cfg: Config, image_inputs: bool | None = None) -> Dataset:
    """The training set. `image_inputs`: keep (C, H, W) images (cnn) instead of flat vectors."""
    d = cfg.data
    if image_inputs is None:
        image_inputs = cfg.model.arch == "cnn"
    g = torch.Generator().manual_seed(cfg.seed + DATA_SEED_OFFSET)
    info: dict = {"name": d.name}

    gt = torch.Generator().manual_seed(cfg.seed + TEST_SEED_OFFSET)  # the held-out stream: train stays the same
    x_test = labels_test = None
    if d.name == "synthetic":
        x = _synthetic_inputs(d.n, d.dim, g)
        classes = d.classes
        labels = torch.randint(0, classes, (d.n,), generator=g)
        if d.test_n:
            x_test = _synthetic_inputs(d.test_n, d.dim, gt)
            labels_test = torch.randint(0, classes, (d.test_n,), generator=gt)
        if image_inputs:
            side = math.isqrt(d.dim)
            x = x.reshape(d.n, 1, side, side)
            x_test = None if x_test is None else x_test.reshape(d.test_n, 1, side, side)
    else:
        x_all, y_all, classes, test_split = _load_real(cfg)
        if d.n > x_all.shape[0]:
            raise ConfigError(f"config key 'data.n' = {d.n}: {d.name} has only {x_all.shape[0]} training samples")
        perm = torch.randperm(x_all.shape[0], generator=g)
        idx = perm[: d.n]
        x, labels = _unit_norm(x_all[idx], image_inputs), y_all[idx]
        if d.test_n:
            pool_x, pool_y = test_split if test_split is not None else (x_all[perm[d.n:]], y_all[perm[d.n:]])
            if d.test_n > pool_x.shape[0]:
                where = "test split" if test_split is not None else "samples outside the training set"
                raise ConfigError(f"config key 'data.test_n' = {d.test_n}: {d.name} has only {pool_x.shape[0]} "
                                  f"{where} (data.n = {d.n})")
            pick = torch.randperm(pool_x.shape[0], generator=gt)[: d.test_n]
            x_test, labels_test = _unit_norm(pool_x[pick], image_inputs), pool_y[pick]

    if d.label_noise > 0:
        noisy = torch.rand(d.n, generator=g) < d.label_noise
        clean = labels
        labels = torch.where(noisy, torch.randint(0, classes, (d.n,), generator=g), labels)
        info["label_noise_replaced"] = int(noisy.sum())
        info["label_noise_changed"] = int((labels != clean).sum())

    x, x_test = _scale_inputs(x, x_test, d.input_norm)
    y_test = None
    if d.target == "labels":
        y, y_test, num_outputs, is_cls = labels, labels_test, classes, True
    elif d.target == "regression":
        y = (torch.randn(d.n, d.classes, generator=g) / math.sqrt(d.classes)).float()
        if d.test_n:
            y_test = (torch.randn(d.test_n, d.classes, generator=gt) / math.sqrt(d.classes)).float()
        num_outputs, is_cls = d.classes, False
    else:
        y, y_test = _teacher_targets(x, d.classes, g, x_test=x_test)
        num_outputs, is_cls = d.classes, False

    info.update({
        "n": int(x.shape[0]),
        "input_shape": list(x.shape[1:]),
        "delta": min_separation(x),
        "input_norm": d.input_norm,
        "max_norm_error": None if d.input_norm == "standardize" else float(
            (x.flatten(1).double().norm(dim=1) - _target_norm(x, d.input_norm)).abs().max()),
        "num_outputs": num_outputs,
        "test_n": 0 if x_test is None else int(x_test.shape[0]),
    })
    return Dataset(x.contiguous(), y.contiguous(), num_outputs, tuple(x.shape[1:]), is_cls, info,
                   None if x_test is None else x_test.contiguous(), None if y_test is None else y_test.contiguous())

"""MNIST and CIFAR-10 files, checked before they are read: a data file is input from outside, and a CIFAR-10
batch is a pickle, which can run any code when loaded the ordinary way.

- With `data.verify=true` (the default) every file is compared with the MD5 that its publishers (and
  torchvision) give before anything reads it; another file is one line naming it.
- Whatever `data.verify` says, a CIFAR-10 batch is unpickled by `_ArraysOnly`, which builds plain containers
  and numpy arrays and refuses every other global: a crafted pickle is an error, never code that runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config, ConfigError

if TYPE_CHECKING:  # torch is imported by the readers only: validating a config must not pay for it
    import torch

# Published checksums (the files as distributed; torchvision checks the same ones).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_HOW_TO_SKIP = "set data.verify=false to read your own copy"


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, known: dict[str, str]) -> None:
    """One ConfigError line unless `path` is the published file of its name."""
    want = known.get(path.name)
    if want is None:
        raise ConfigError(f"data file '{path}' has no published checksum (only {', '.join(sorted(known))}: keep the "
                          f"original compressed files); {_HOW_TO_SKIP}")
    got = _md5(path)
    if got != want:
        raise ConfigError(f"data file '{path}' is not the published file (MD5 {got}, published {want}); "
                          f"{_HOW_TO_SKIP}")


def read_idx(path: Path) -> torch.Tensor:
    """An unsigned-byte IDX array (MNIST), its header checked against its size."""
    import torch

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ConfigError(f"data file '{path}' cannot be read: {exc}") from None
    if len(data) < 4:
        raise ConfigError(f"data file '{path}' is not an IDX file")
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise ConfigError(f"data file '{path}' is not an unsigned-byte IDX file")
    if len(data) < 4 + 4 * ndim:
        raise ConfigError(f"data file '{path}': its IDX header is cut short ({len(data)} bytes for {ndim} "
                          "dimensions)")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != torch.Size(shape).numel():
        raise ConfigError(f"data file '{path}' holds {len(body)} bytes for an array of shape {tuple(shape)}")
    if not body:  # a zero dimension: frombuffer refuses an empty buffer
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / (stem + ".gz"), root / stem):  # the compressed original first: it has a checksum
        if candidate.is_file():
            return candidate
    return None


def _mnist_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _cifar_dir(root: Path) -> Path:
    return root / "cifar-10-batches-py"


def check_available(cfg: Config) -> None:
    """Raise ConfigError if the data set cannot be loaded (called before any process starts)."""
    name, root = cfg.data.name, Path(cfg.data.root)
    if name == "mnist" and not cfg.data.download:
        d = _mnist_dir(root)
        files = [_find(d, "train-images-idx3-ubyte"), _find(d, "train-labels-idx1-ubyte")]
        if None in files:
            raise ConfigError(
                f"data.name=mnist: no MNIST training files in '{d}' "
                "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]); set data.root, or data.download=true"
            )
        if cfg.data.test_n > 0 and None in (_find(d, "t10k-images-idx3-ubyte"), _find(d, "t10k-labels-idx1-ubyte")):
            raise ConfigError(f"data.test_n = {cfg.data.test_n}: no MNIST test files in '{d}' (t10k-images-idx3-ubyte"
                              "[.gz], t10k-labels-idx1-ubyte[.gz]); add them, set data.download=true, or data.test_n=0")
    if name == "cifar10" and not cfg.data.download:
        d = _cifar_dir(root)
        if not (d / "data_batch_1").is_file():
            raise ConfigError(
                f"data.name=cifar10: no CIFAR-10 batches in '{d}' (data_batch_1..5); "
                "set data.root, or data.download=true"
            )
        if cfg.data.test_n > 0 and not (d / "test_batch").is_file():
            raise ConfigError(f"data.test_n = {cfg.data.test_n}: no CIFAR-10 test batch in '{d}' (test_batch); add "
                              "it, set data.download=true, or data.test_n=0")
    if name == "digits":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise ConfigError("data.name=digits needs scikit-learn (pip install scikit-learn)") from None
    if not cfg.data.download:
        verify_files(cfg)


def files_of(cfg: Config, split: str = "train") -> list[Path]:
    """The files of a split ("train", or "test" for data.test_n) of mnist / cifar10."""
    root = Path(cfg.data.root)
    if cfg.data.name == "mnist":
        d, prefix = _mnist_dir(root), "train" if split == "train" else "t10k"
        return [_find(d, f"{prefix}-images-idx3-ubyte"), _find(d, f"{prefix}-labels-idx1-ubyte")]
    if cfg.data.name == "cifar10":
        d = _cifar_dir(root)
        if split == "test":
            return [d / "test_batch"]
        return [p for i in range(1, 6) if (p := d / f"data_batch_{i}").is_file()]
    return []


def verify_files(cfg: Config) -> None:
    """The files against their published checksums, before anything reads them."""
    if cfg.data.verify:
        known = MNIST_MD5 if cfg.data.name == "mnist" else CIFAR10_MD5
        for path in files_of(cfg) + (files_of(cfg, "test") if cfg.data.test_n > 0 else []):
            verify_file(path, known)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def check_labelled(images: torch.Tensor, labels: torch.Tensor, classes: int, where: str, image_dims: int) -> None:
    """One line for image and label files that do not make a labelled data set: counts that differ, an empty
    dimension, labels outside 0 .. classes - 1."""
    if images.dim() != image_dims or labels.dim() != 1 or 0 in images.shape:
        raise ConfigError(f"data files {where}: images of shape {tuple(images.shape)} and labels of shape "
                          f"{tuple(labels.shape)} are not {image_dims - 1}-D images with one label each")
    if images.shape[0] != labels.shape[0]:
        raise ConfigError(f"data files {where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ConfigError(f"data files {where}: labels from {int(labels.min())} to {int(labels.max())}, outside "
                          f"0 .. {classes - 1}")


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 32, 32) uint8, labels (N,)) of one CIFAR-10 python batch."""
    import torch

    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        data, labels = batch["data"], batch["labels"]
        return (torch.tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32),
                torch.tensor(labels, dtype=torch.int64))
    except Exception as exc:  # a crafted or damaged pickle: one line, nothing ran
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"data file '{path}' is not a CIFAR-10 batch ({msg})") from None

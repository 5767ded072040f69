import gzip
import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from overparam_dist.config import ConfigError, load_config
from overparam_dist.data import build_dataset
from overparam_dist.data_files import check_available


def test_synthetic_satisfies_the_theory_assumptions():
    ds = build_dataset(load_config(None, ["data.n=200", "data.dim=10", "data.target=labels"]))
    x = ds.x.double()
    assert torch.allclose(x.norm(dim=1), torch.ones(200, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(x[:, -1], torch.full((200,), 1 / math.sqrt(2), dtype=torch.float64), atol=1e-7)
    brute = min((x[i] - x[j]).norm().item() for i in range(200) for j in range(i))
    assert ds.info["delta"] == pytest.approx(brute, rel=1e-9)
    assert ds.info["delta"] > 0
    assert ds.y.shape == (200,) and set(ds.y.tolist()) <= {0, 1}


def test_same_seed_same_data_and_targets():
    for target in ("labels", "regression", "teacher"):
        a = build_dataset(load_config(None, [f"data.target={target}", "seed=1"]))
        b = build_dataset(load_config(None, [f"data.target={target}", "seed=1"]))
        c = build_dataset(load_config(None, [f"data.target={target}", "seed=2"]))
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert not torch.equal(a.x, c.x)
    teacher = build_dataset(load_config(None, ["data.target=teacher", "data.classes=3"]))
    assert teacher.y.shape == (64, 3) and teacher.y.pow(2).sum(1).mean().item() == pytest.approx(1, rel=1e-5)


def test_label_noise_replaces_that_fraction():
    clean = build_dataset(load_config(None, ["data.n=4000", "data.classes=10", "data.target=labels"]))
    noisy = build_dataset(load_config(None, ["data.n=4000", "data.classes=10", "data.label_noise=0.5",
                                              "data.target=labels"]))
    assert torch.equal(clean.x, noisy.x)
    assert noisy.info["label_noise_replaced"] / 4000 == pytest.approx(0.5, abs=0.03)
    changed = (clean.y != noisy.y).float().mean().item()
    assert changed == pytest.approx(0.5 * 0.9, abs=0.03)  # a random label keeps the old one 1 time in 10
    assert noisy.info["label_noise_changed"] == int((clean.y != noisy.y).sum())


def test_digits_subsample_and_normalise():
    ds = build_dataset(load_config(None, ["data.name=digits", "data.n=100"]))
    assert ds.x.shape == (100, 64) and ds.num_outputs == 10
    assert torch.allclose(ds.x.norm(dim=1), torch.ones(100), atol=1e-5)
    img = build_dataset(load_config(None, ["data.name=digits", "data.n=100", "model.arch=cnn"]))
    assert img.x.shape == (100, 1, 8, 8)


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_mnist_and_cifar_files_are_read_from_root(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = rng.integers(0, 255, (50, 28, 28))
    labels = rng.integers(0, 10, 50)
    _write_idx(raw / "train-images-idx3-ubyte.gz", images)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", labels)
    ds = build_dataset(load_config(None, ["data.name=mnist", f"data.root={tmp_path}", "data.n=50",
                                          "data.verify=false"]))  # our own copy: not the published files
    order = torch.argsort(ds.y, stable=True)
    assert ds.x.shape == (50, 784) and sorted(ds.y.tolist()) == sorted(labels.tolist())
    assert order.numel() == 50
    cif = tmp_path / "cifar-10-batches-py"
    cif.mkdir()
    with open(cif / "data_batch_1", "wb") as f:
        pickle.dump({"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}, f)
    ds = build_dataset(load_config(None, ["data.name=cifar10", f"data.root={tmp_path}", "data.n=20", "model.arch=cnn",
                                          "data.verify=false"]))
    assert ds.x.shape == (20, 3, 32, 32)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a crafted batch does: call a function of its choice while it is unpickled
        return (os.system, (f"touch {self.marker}",))


def test_data_files_are_verified_and_never_run_code(tmp_path):
    from conftest import run_cli

    rng = np.random.default_rng(1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (50, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 50))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz' is not the published file.*MD5"):
        build_dataset(load_config(None, ["data.name=mnist", f"data.root={tmp_path}", "data.n=50"]))
    (raw / "train-images-idx3-ubyte.gz").rename(raw / "train-images-idx3-ubyte")  # uncompressed: no checksum
    with pytest.raises(ConfigError, match="no published checksum"):
        build_dataset(load_config(None, ["data.name=mnist", f"data.root={tmp_path}", "data.n=50"]))

    marker = tmp_path / "pwned"
    cif = tmp_path / "cifar-10-batches-py"
    cif.mkdir()
    with open(cif / "data_batch_1", "wb") as f:
        pickle.dump({"data": _RunsCode(marker), "labels": [0]}, f)
    for verify in ("true", "false"):  # refused by its checksum, or by the loader: never executed
        res = run_cli("train", "--quiet", "data.name=cifar10", f"data.root={tmp_path}", "model.arch=cnn",
                      "data.n=1", "train.batch_size=0", f"data.verify={verify}", "wandb.mode=disabled",
                      f"run.dir={tmp_path / 'run'}", cwd=tmp_path)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and "data_batch_1" in lines[0], res.stderr
        assert ("published" if verify == "true" else "refused global") in lines[0]
        assert not marker.exists() and not (tmp_path / "run").exists()


def test_missing_dataset_is_a_clear_error(tmp_path):
    for name in ("mnist", "cifar10"):
        with pytest.raises(ConfigError, match=f"data.name={name}.*data.download=true"):
            check_available(load_config(None, [f"data.name={name}", f"data.root={tmp_path}"]))
    with pytest.raises(ConfigError, match="data.n"):
        build_dataset(load_config(None, ["data.name=digits", "data.n=5000"]))


def test_damaged_mnist_and_cifar_files_are_one_line(tmp_path):
    """Issue 28: a short IDX header, image and label counts that differ, a zero dimension, label 255, and a CIFAR
    batch with too few labels: each one line naming the files, never a traceback."""
    rng = np.random.default_rng(1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    args = ["data.name=mnist", f"data.root={tmp_path}", "data.n=8", "data.verify=false"]
    cases = [
        (rng.integers(0, 255, (20, 28, 28)), rng.integers(0, 10, 19), "20 images but 19 labels"),
        (np.zeros((20, 0, 28)), rng.integers(0, 10, 20), r"\(20, 0, 28\).*one label each"),
        (rng.integers(0, 255, (20, 28, 28)), np.full(20, 255), "labels from 255 to 255, outside 0 .. 9"),
    ]
    for images, labels, says in cases:
        _write_idx(raw / "train-images-idx3-ubyte.gz", images)
        _write_idx(raw / "train-labels-idx1-ubyte.gz", labels)
        with pytest.raises(ConfigError, match=says):
            build_dataset(load_config(None, args))
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 3) + b"\x00\x00")  # three dimensions announced, half of one given
    with pytest.raises(ConfigError, match="IDX header is cut short"):
        build_dataset(load_config(None, args))
    cif = tmp_path / "cifar-10-batches-py"
    cif.mkdir()
    with open(cif / "data_batch_1", "wb") as f:
        pickle.dump({"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), "labels": list(range(10))}, f)
    with pytest.raises(ConfigError, match="20 images but 10 labels"):
        build_dataset(load_config(None, ["data.name=cifar10", f"data.root={tmp_path}", "data.n=8",
                                         "data.verify=false"]))

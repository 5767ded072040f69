"""Issue 14, item 6: train.precision changes the training step only; metrics stay exact; train.compile."""

import pytest
import torch
from conftest import read_rows

from overparam_dist import precision
from overparam_dist.config import ConfigError, load_config
from overparam_dist.metrics import names
from overparam_dist.train import run_trial

QUIET = ["wandb.mode=disabled", "run.quiet=true", "checkpoint.every=0", "metrics.every=1"]


def _rows(tmp_path, name, *overrides):
    run_trial(load_config(None, [*QUIET, "model.width=64", "data.n=16", "train.steps=4", "train.stop_at_fit=false",
                                 f"run.dir={tmp_path / name}", *overrides]))
    return read_rows(tmp_path / name)


def test_bf16_trains_in_bfloat16_while_every_metric_stays_exact(tmp_path):
    fp32, bf16 = _rows(tmp_path, "fp32"), _rows(tmp_path, "bf16", "train.precision=bf16")
    theory = [k for k in fp32[0] if k.startswith(("ntk/", "drift/", "feature/"))]
    assert names.NTK_LAMBDA_MAX in theory and names.NTK_LABEL_COMPLEXITY in theory
    # Step 0: the same weights, so every metric is bit-identical: nothing of the metrics runs under autocast.
    assert {k: bf16[0][k] for k in theory} == {k: fp32[0][k] for k in theory}
    assert bf16[0][names.TRAIN_LOSS] != fp32[0][names.TRAIN_LOSS]  # the step's own forward did run in bf16 ...
    assert bf16[0][names.TRAIN_LOSS] == pytest.approx(fp32[0][names.TRAIN_LOSS], rel=2e-2)  # ... to bf16's accuracy
    assert bf16[-1][names.TRAIN_LOSS] == pytest.approx(fp32[-1][names.TRAIN_LOSS], rel=5e-2)


def test_tf32_is_the_fp32_step_on_cpu_and_the_settings_are_restored(tmp_path):
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    with precision.training_step("tf32", torch.device("cpu")):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        with precision.exact():  # metrics inside a step still get IEEE float32
            assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "ieee"
    with precision.training_step("bf16", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
    fp32, tf32 = _rows(tmp_path, "fp32"), _rows(tmp_path, "tf32", "train.precision=tf32")
    assert [r[names.TRAIN_LOSS] for r in tf32] == [r[names.TRAIN_LOSS] for r in fp32]  # CPU has no TF32


def test_precision_is_checked():
    with pytest.raises(ConfigError, match="'train.precision' = 'fp16'.*fp32, tf32, bf16"):
        load_config(None, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="train.precision.*must be fp32 with train.dtype=float64"):
        load_config(None, ["train.precision=bf16", "train.dtype=float64"])


@pytest.mark.slow
def test_compiled_step_equals_eager(tmp_path):
    eager, compiled = _rows(tmp_path, "eager", "metrics.ntk=false"), \
        _rows(tmp_path, "compiled", "metrics.ntk=false", "train.compile=true")
    assert [r[names.TRAIN_LOSS] for r in compiled] == pytest.approx([r[names.TRAIN_LOSS] for r in eager], rel=1e-5)

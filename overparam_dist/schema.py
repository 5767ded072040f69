"""The config schema: nested dataclasses with defaults, and the allowed values of its choice keys. The one place
config keys are defined; config.py loads and validates a Config (and re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(ValueError):
    """Bad user input (config, data, environment). The CLI prints it as one line and exits 2."""


@dataclass
class ModelConfig:
    arch: str = "fc"  # fc | cnn | resnet
    width: int = 512  # m: hidden units (fc, resnet) or channels (cnn)
    depth: int = 2  # L: number of hidden m x m layers W_1..W_L (fc may have 0: y = B relu(A x))
    param: str = "paper"  # paper | ntk | standard | mup
    bias: bool = False  # biases on every layer (paper: the theory has none)
    train_outer: Optional[bool] = None  # train A and B too; None = false for paper, true otherwise
    train_input_only: bool = False  # Du et al. 2018's net: only A trains, on the raw inputs; the read-out B is fixed
    # at random signs (their a_r = +-1, times B's scale) and any W_l at init. With depth 0: their two-layer net
    tau: float = 0.1  # resnet branch scale: h_l = relu(h_{l-1} + tau * W_l h_{l-1})
    kernel_size: int = 3  # cnn: the convolution kernel size (odd)


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | digits | mnist | cifar10
    n: int = 64  # training samples (subsampled from real data sets)
    test_n: int = 0  # held-out samples (0 = none): the same distribution for synthetic data, the test split of mnist
    # and cifar10, the samples outside the training subset for digits (it has no split); label noise never reaches it
    dim: int = 16  # synthetic input dimension d (a perfect square for cnn)
    input_norm: str = "sphere"  # sphere (|x| = 1, the theory's) | sqrt_d (|x|^2 = d) | standardize (per feature)
    classes: int = 2  # output units C
    target: str = "auto"  # auto (labels for digits, mnist, cifar10 or under ce; else regression) | labels |
    # regression | teacher
    label_noise: float = 0.0  # fraction of labels replaced by random ones, in [0, 1]
    root: str = "data"  # where mnist / cifar10 live
    download: bool = False  # allow torchvision to download mnist / cifar10 into data.root
    verify: bool = True  # check mnist / cifar10 files against their published MD5s before reading them


AUTO = "auto"  # train.lr: the step size from the kernel at init (step_size.py)
LAMBDA_MIN = "lambda_min"  # train.lr: Du et al. 2018's step from the smallest eigenvalue of K_inf (step_size.py)
LR_RULES = (AUTO, LAMBDA_MIN)  # the train.lr values resolved per trial from its kernel
LAMBDA_MIN_SAMPLES = 4096  # lambda_min of a subset is not the whole set's (interlacing): all n, at most this many
ANALYTIC_PARAMS = ("paper", "ntk")  # the parameterizations whose infinite-width kernel is known (metrics/analytic.py)


def kernel_is_known(cfg: "Config") -> bool:
    """K_inf has a closed form for this model: fc with ntk, or paper without biases."""
    m = cfg.model
    return m.arch == "fc" and m.param in ANALYTIC_PARAMS and not (m.bias and m.param == "paper")


@dataclass
class TrainConfig:
    steps: int = 300  # maximum optimizer steps
    lr: Any = AUTO  # "auto": lr_scale * n / lambda_max(K) of the kernel GD sees; "lambda_min": lr_scale * lambda_0 / n,
    # lambda_0 = lambda_min(K_inf), Du et al.'s step (both: step_size.py); or a number, scaled per layer (paper: lr / m)
    lr_scale: float = 1.0  # with lr=auto: the step as a fraction of n / lambda_max(K); 1 is half the stability edge
    lr_kernel: str = "max"  # with lr=auto: max (of K_inf and Theta_0, so lr * lambda_max(Theta_0) / n <= lr_scale) |
    # infinite (K_inf alone: one step for every width; fc with paper or ntk, trials past the edge are flagged)
    batch_size: int = 0  # 0 = full batch (gradient descent)
    loss: str = "mse"  # mse (0.5 * mean squared error summed over outputs) | ce
    target_loss: float = 0.0  # stop once the train loss is below this (0 = off)
    target_ratio: float = 0.0  # stop once the train loss is at most this fraction of its value at step 0 (0 = off).
    # A loss target (this or target_loss) is the fit of conv/steps_to_fit, in place of 100% train accuracy
    stop_at_fit: bool = True  # stop at 100% train accuracy (label targets)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | float64
    precision: str = "fp32"  # fp32 | tf32 | bf16: the training step's arithmetic; metrics stay exact (precision.py)
    compile: bool = False  # torch.compile the training forward


@dataclass
class MetricsConfig:
    every: int = 10  # log metrics every N steps (0 = only at start and end)
    ntk_probe: Any = 64  # probe samples for NTK / activation metrics: a number up to data.n, or all (the whole set)
    ntk_memory_mb: int = 256  # the NTK's working memory: tiles of samples are sized so that two tiles' captures fit
    ntk: bool = True  # track the empirical NTK on the probe set
    spectral: bool = True  # spectral norms of W_t - W_0 (each iteration regenerates W_0 once)
    window: int = 50  # trailing window (steps) for conv/rate
    lin_max: int = 2048  # ntk/lin_gap is computed when data.n x outputs <= this (mse, full batch)
    kernel_circle: int = 0  # points on a circle through x_0: its NTK row at init and end (kernel_circle.json); 0 = off
    hessian: bool = False  # hessian/*: the training loss's top Hessian eigenvalue on logged rows (costs HVPs)


@dataclass
class ParallelConfig:
    dp: int = 1  # data-parallel replicas
    tp: int = 1  # tensor-parallel shards of each wide layer
    backend: str = "auto"  # auto (gloo on CPU, nccl on CUDA) | gloo | nccl


@dataclass
class CheckpointConfig:
    every: int = 100  # steps between checkpoints (0 = only at the end)
    resume: bool = True  # resume from the latest checkpoint in run.dir
    keep: int = 2  # checkpoints kept on disk (a bad newest one falls back to the one before)


@dataclass
class RunConfig:
    dir: str = ""  # output directory; "" = runs/<run.name>
    name: str = ""  # "" = derived from the config (arch, param, width, depth, n, seed)
    quiet: bool = False  # no progress bar
    preempt_file: str = ""  # stop (checkpoint, status preempted) once this file exists; set by sweep drivers


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "overparam-dist"  # W&B project
    entity: str = ""  # W&B entity (team or user); "" = your default
    group: str = ""  # sweep name; set by the sweep launcher


@dataclass
class Config:
    seed: int = 0  # seeds the weights (tile by tile), the data and the mini-batch order
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


# Upper bounds of the integer keys (lower bounds are checked with each key's meaning in config.validate): past them a
# value is a typo, and it would overflow a tensor size, a seed or a C integer before it did anything useful.
INT_MAX = {"seed": 2**63 - 1, "model.width": 2**31 - 1, "model.depth": 10**4, "model.kernel_size": 999,
           "data.n": 10**9, "data.test_n": 10**9, "data.dim": 2**31 - 1, "data.classes": 10**6,
           "train.steps": 10**12, "train.batch_size": 10**9, "metrics.every": 10**12, "metrics.window": 10**12,
           "metrics.lin_max": 10**9, "metrics.kernel_circle": 10**6, "parallel.dp": 10**5, "parallel.tp": 10**5,
           "checkpoint.every": 10**12, "checkpoint.keep": 10**6}
MAX_LR_SCALE = 1e6  # train.lr_scale at most: a million times the stability scale is a typo
MAX_SAMPLES = 10**8  # metrics.ntk_probe at most (an n x n float64 kernel of this many samples is 80 PB: a typo)
MAX_NAME_BYTES = 200  # run.name: a directory name, with room for the suffixes we add (.slurm, .lock)
CHOICES = {
    "model.arch": ("fc", "cnn", "resnet"),
    "model.param": ("paper", "ntk", "standard", "mup"),
    "data.name": ("synthetic", "digits", "mnist", "cifar10"),
    "data.target": ("auto", "labels", "regression", "teacher"),
    "data.input_norm": ("sphere", "sqrt_d", "standardize"),
    "train.loss": ("mse", "ce"),
    "train.lr_kernel": ("max", "infinite"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.dtype": ("float32", "float64"),
    "train.precision": ("fp32", "tf32", "bf16"),
    "parallel.backend": ("auto", "gloo", "nccl"),
    "wandb.mode": ("offline", "online", "disabled"),
}

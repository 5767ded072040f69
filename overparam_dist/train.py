"""One trial: `run_trial(cfg) -> summary`. The same function runs in one process, under torch's local
launcher, torchrun, srun or a Ray Train worker; launchers only set up processes and call it.

Step semantics: row `step = s` of metrics.jsonl describes the parameters after s updates (s = 0 is
the initialisation). The loss of theta_s comes from the forward pass of update s+1, so full-batch
gradient descent pays no extra forward pass for its metrics.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from . import checkpoint
from .config import Config, ConfigError, base_lr, default_run_name, effective_train_outer, run_dir, to_dict
from .data import Dataset, build_dataset
from .metrics import names
from .metrics.convergence import ConvergenceTracker
from .metrics.tracker import TheoryMetrics, label_complexity_targets
from .models import build_model
from .parallel import mesh
from .parallel.wrap import Parallelism
from .sinks import Sinks

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
FINISHED = ("completed", "diverged")
# Keys whose change makes an existing run directory a different experiment.
IDENTITY_SECTIONS = ("seed", "model", "data", "train")
IDENTITY_EXEMPT = {"train.steps", "train.device", "train.stop_at_fit", "train.target_loss"}


def _identity(cfg_dict: dict) -> dict:
    from .config import flatten

    flat = flatten({k: cfg_dict[k] for k in IDENTITY_SECTIONS if k in cfg_dict})
    return {k: v for k, v in flat.items() if k not in IDENTITY_EXEMPT}


def check_run_dir(cfg: Config) -> None:
    """Refuse to reuse a run directory that holds a different experiment (nothing is overwritten)."""
    out = run_dir(cfg)
    cfg_file = out / CONFIG_FILE
    if not cfg_file.is_file():
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"run directory '{out}' exists and is not a run of ours; choose another run.dir")
        return
    with open(cfg_file) as f:
        old = yaml.safe_load(f) or {}
    old.pop("derived", None)
    a, b = _identity(old), _identity(to_dict(cfg))
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            raise ConfigError(
                f"run directory '{out}' holds a different run ({key}: {a.get(key)!r} there, {b.get(key)!r} now); "
                "choose another run.name or run.dir"
            )


def _targets(ds: Dataset, cfg: Config) -> torch.Tensor:
    if ds.is_classification and cfg.train.loss == "mse":
        return F.one_hot(ds.y, ds.num_outputs).float()
    return ds.y


def _loss_fn(cfg: Config):
    if cfg.train.loss == "ce":
        return lambda out, t: F.cross_entropy(out, t)
    return lambda out, t: 0.5 * (out - t).pow(2).sum(dim=1).mean()


def _batch_indices(cfg: Config, n: int, step: int) -> torch.Tensor:
    """Global indices of the mini-batch of `step`: a function of (seed, step) only, so resume is exact."""
    b = cfg.train.batch_size
    per_epoch = n // b
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    return torch.randperm(n, generator=g)[k * b:(k + 1) * b]


def _global_grad_norm(params: list[torch.nn.Parameter], par: Parallelism) -> float:
    return math.sqrt(sum((par.sq_norm(p.grad, p) for p in params if p.grad is not None), 0.0))


class Preemption:
    """A request to checkpoint at once and stop with status `preempted` (rerunning resumes the trial).

    Two ways in: SIGUSR1 (Slurm's `--signal=B:USR1@...`, forwarded to the trial by slurm/trial.sbatch),
    when the trial runs in a main thread; and the file `run.preempt_file`, which a sweep driver creates
    for trials running inside Ray workers, where no signal handler can be installed. All ranks agree on
    the step to stop at (one tiny all-reduce per step, only when a process group exists).
    """

    def __init__(self, flag_file: str):
        self.flag = False
        self.flag_file = Path(flag_file) if flag_file else None
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGUSR1, self._handle)
            self.installed = True
        except ValueError:  # not the main thread (e.g. inside a Ray Tune function trainable)
            self.installed = False

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def requested(self, pd: mesh.ParallelDims) -> bool:
        local = self.flag or (self.flag_file is not None and self.flag_file.exists())
        if pd.world == 1:
            return local
        t = torch.tensor([1.0 if local else 0.0], device=pd.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGUSR1, self.previous or signal.SIG_DFL)


def run_trial(cfg: Config) -> dict:
    pd = mesh.setup(cfg)
    try:
        return _train(cfg, pd)
    finally:
        pd.close()


def _train(cfg: Config, pd: mesh.ParallelDims) -> dict:
    out = run_dir(cfg)
    name = cfg.run.name or default_run_name(cfg)
    dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
    device = pd.device

    # Inputs first: a bad data set or a foreign run directory fails before anything is written.
    ds = build_dataset(cfg)
    check_run_dir(cfg)
    summary_path = out / SUMMARY_FILE
    if summary_path.is_file() and (out / CONFIG_FILE).is_file():
        done = json.loads(summary_path.read_text())
        if done.get("status") in FINISHED and done.get("requested_steps") == cfg.train.steps:
            return done  # this exact trial already finished: a rerun is a no-op
    pd.barrier()

    par = Parallelism(pd, cfg.model.arch, cfg.model.depth)
    model, rules = build_model(cfg, ds.input_shape, ds.num_outputs, device=device, dtype=dtype, shard=par.shard)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trained:
        raise ConfigError("no trainable parameters: model.train_outer=false leaves nothing to train")
    effective_lr = {n: base_lr(cfg) * rules[n].lr_scale for n in trained}
    hidden_lr = next((lr for n, lr in effective_lr.items() if n.startswith("hidden.")),
                     next(iter(effective_lr.values())))

    net = par.wrap(model)
    groups: dict[float, list] = {}
    for n, p in trained.items():
        groups.setdefault(effective_lr[n], []).append(p)
    optimizer = torch.optim.SGD([{"params": ps, "lr": lr} for lr, ps in groups.items()])

    conv = ConvergenceTracker(cfg.metrics.window)
    # Theory metrics record the init state (K_0, ReLU patterns, ||theta_0||) now, before any checkpoint loads.
    probe_n = min(cfg.metrics.ntk_probe, len(ds))
    probe_x = ds.x[:probe_n].to(device, dtype)
    theory = TheoryMetrics(
        model, rules, cfg.seed, probe_x,
        label_complexity_targets(ds.y[:probe_n], ds.is_classification, ds.num_outputs),
        param=cfg.model.param, width=cfg.model.width, depth=cfg.model.depth, arch=cfg.model.arch,
        bias=cfg.model.bias, train_outer=effective_train_outer(cfg), classes=ds.num_outputs,
        track_ntk=cfg.metrics.ntk, spectral=cfg.metrics.spectral, parallel=par)

    # Resume from the latest complete checkpoint.
    start_step, resumed = 0, False
    ckpt_root = out / "checkpoints"
    if cfg.checkpoint.resume and (last := checkpoint.latest(ckpt_root)) is not None:
        state = checkpoint.load(last, par.state_dict(model))
        start_step, resumed = state["step"], True
        conv.load(state["conv"])
        theory.load(state.get("theory", {}))

    # Data: every rank holds the whole (small) training set; each dp rank computes on its share.
    x_all = ds.x.to(device, dtype)
    t_all = _targets(ds, cfg).to(device)
    if t_all.is_floating_point():
        t_all = t_all.to(dtype)
    labels = ds.y.to(device) if ds.is_classification else None
    n = len(ds)
    share = n // pd.dp
    lo, hi = pd.dp_rank * share, (pd.dp_rank + 1) * share
    full_batch = cfg.train.batch_size == 0
    x_local, t_local = x_all[lo:hi], t_all[lo:hi]
    labels_local = labels[lo:hi] if labels is not None else None
    loss_fn = _loss_fn(cfg)

    if pd.is_main:
        out.mkdir(parents=True, exist_ok=True)
        derived = {
            "train_outer": effective_train_outer(cfg),
            "effective_lr": effective_lr,
            "data": ds.info,
            "world": {"dp": pd.dp, "tp": pd.tp, "device": str(device)},
        }
        with open(out / CONFIG_FILE, "w") as f:
            yaml.safe_dump({**to_dict(cfg), "derived": derived}, f, sort_keys=False)
        sinks = Sinks(cfg, out, name, start_step if resumed else None)
    else:
        sinks = None

    every = cfg.metrics.every
    bar = None
    if pd.is_main and not cfg.run.quiet:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.steps, initial=start_step, desc=name, unit="step", leave=False)

    stats = torch.zeros(2, dtype=torch.float64, device=device)
    status, step, saved_at = "completed", start_step, start_step
    preemption = Preemption(cfg.run.preempt_file)
    final_metrics: dict[str, float] = {}
    t_start = time.perf_counter()
    t_mark, steps_since = time.perf_counter(), 0

    def save_checkpoint() -> None:
        nonlocal saved_at
        state = {"step": step, "conv": conv.state(), "theory": theory.state()}
        checkpoint.save(ckpt_root, step, par.state_dict(model), state, pd)
        saved_at = step

    def evaluate() -> tuple[float, float | None]:
        """Loss and accuracy of the current parameters on the whole training set."""
        with torch.no_grad():
            o = net(x_local)
            stats[0] = loss_fn(o, t_local).double()
            stats[1] = (o.argmax(1) == labels_local).sum() if labels_local is not None else 0
        pd.all_reduce_sum(stats, "dp" if pd.world > 1 else None)
        return float(stats[0]) / pd.dp, (float(stats[1]) / n if labels_local is not None else None)

    while True:
        # The same steps are logged whether or not the trial was interrupted and resumed in between.
        log_now = step == 0 or step >= cfg.train.steps or (every > 0 and step % every == 0)
        # Forward on the batch of this update; with full batch its loss is the train loss of theta_step.
        if full_batch:
            xb, tb, lb = x_local, t_local, labels_local
        else:
            idx = _batch_indices(cfg, n, step)
            b = idx.numel() // pd.dp
            idx = idx[pd.dp_rank * b:(pd.dp_rank + 1) * b].to(device)
            xb, tb = x_all[idx], t_all[idx]
            lb = labels[idx] if labels is not None else None
        output = net(xb)
        loss = loss_fn(output, tb)

        if full_batch:
            stats[0] = loss.detach().double()
            stats[1] = (output.detach().argmax(1) == lb).sum() if lb is not None else 0
            pd.all_reduce_sum(stats, "dp" if pd.world > 1 else None)
            train_loss = float(stats[0]) / pd.dp
            train_acc = float(stats[1]) / n if lb is not None else None
        elif log_now:
            train_loss, train_acc = evaluate()
        else:
            train_loss, train_acc = float(loss.detach()), None  # batch loss: divergence check only

        diverged = not math.isfinite(train_loss)
        fitted = (train_acc is not None and train_acc >= 1.0) or (
            cfg.train.target_loss > 0 and math.isfinite(train_loss) and train_loss < cfg.train.target_loss)
        if full_batch or log_now:
            conv.update(step, train_loss, fitted)
        stop = diverged or step >= cfg.train.steps or (fitted and (cfg.train.stop_at_fit or cfg.train.target_loss > 0))
        if stop:
            log_now = True

        need_grad = not stop
        if need_grad:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()

        if log_now:
            elapsed = time.perf_counter() - t_mark
            row: dict[str, float] = {names.TRAIN_LOSS: train_loss, names.TRAIN_LR: hidden_lr}
            if train_acc is not None:
                row[names.TRAIN_ACC] = train_acc
            if need_grad:
                row[names.TRAIN_GRAD_NORM] = _global_grad_norm(list(trained.values()), par)
            if steps_since > 0:
                row[names.TIME_STEP] = elapsed / steps_since
                row[names.TIME_SAMPLES] = (cfg.train.batch_size or n) * steps_since / elapsed
            if not diverged:  # metrics of non-finite weights mean nothing (and eigensolvers reject them)
                t_metrics = time.perf_counter()
                row.update(theory.compute(first=step == 0, final=stop))
                row[names.TIME_METRICS] = time.perf_counter() - t_metrics
            if pd.is_main:
                sinks.log(step, row)
                if bar is not None:
                    bar.set_postfix(loss=f"{train_loss:.3g}", refresh=False)
            final_metrics = row
            t_mark, steps_since = time.perf_counter(), 0

        if stop:
            status = "diverged" if diverged else "completed"
            break

        optimizer.step()
        step += 1
        steps_since += 1
        if bar is not None:
            bar.update(1)
        if cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0 and step < cfg.train.steps:
            save_checkpoint()
        if preemption.requested(pd):
            if saved_at != step:
                save_checkpoint()
            status = "preempted"
            break

    preemption.restore()
    if bar is not None:
        bar.close()
    if status == "completed" and saved_at != step:
        save_checkpoint()

    summary = {
        "status": status,
        "name": name,
        "seed": cfg.seed,
        "steps": step,
        "requested_steps": cfg.train.steps,
        **{k: v for k, v in final_metrics.items() if not k.startswith("time/")},
        names.NTK_INIT_GAP: theory.init_gap,
        names.CONV_RATE: conv.rate(),
        names.CONV_STEPS_TO_FIT: conv.steps_to_fit,
        "wall_s": time.perf_counter() - t_start,
        "delta": ds.info["delta"],
        "trained_params": sum(math.prod(par.shards[n].global_shape) if n in par.shards else p.numel()
                              for n, p in trained.items()),
        "dp": pd.dp,
        "tp": pd.tp,
    }
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    if pd.is_main:
        tmp = summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, summary_path)
        sinks.finish(summary)
    pd.barrier()
    return summary


"""One trial: `run_trial(cfg, on_log=None) -> summary`. The same function runs in one process, under torch's
local launcher, torchrun, srun or a Ray Train worker; launchers only set up processes and call it. `run_seeds`
trains the seeds of one cell in one process as one batched model (seeds.py), each still a trial of its own.

The Trainer's methods are the named steps of one update (torchtitan's Trainer.train is the model): batch, forward,
measure (losses, the stopping rules), log, update (optimizer, checkpoint); loop.py runs them, with a preemption
check after each update.

Step semantics: row `step = s` of metrics.jsonl describes the parameters after s updates (s = 0 is
the initialisation). The loss of theta_s comes from the forward pass of update s+1, so full-batch
gradient descent pays no extra forward pass for its metrics.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from . import checkpoint, loop, precision, rundir
from .config import Config, ConfigError, effective_train_outer, probe_samples
from .data import Dataset, build_dataset
from .footprint import check_fits_memory, w0_cache_budget
from .metrics import names
from .metrics.convergence import ConvergenceTracker
from .metrics.hessian import Sharpness
from .metrics.kernel_circle import KernelCircle
from .metrics.label_complexity import targets as label_targets
from .metrics.linearization import LinearizationGap, lin_gap_off_reason, unstable_reason
from .metrics.regime import Regime
from .metrics.tracker import TheoryMetrics
from .models import build_model
from .objective import batch_indices, loss_fn, targets
from .parallel.distributed import World, setup
from .parallel.parallelize import Parallelism
from .rundir import default_run_name, run_dir
from .seed_cells import batch_reason
from .sinks import OnLog, Sinks
from .step_size import effective_lrs, init_facts, resolve_lr
from .trial_end import finish


def run_trial(cfg: Config, on_log: OnLog | None = None) -> dict:
    """Train one trial and return its summary. Rank 0 hands every logged row to `on_log` (a launcher's hook,
    e.g. a Ray sweep reporting to Tune); the rows always go to metrics.jsonl and W&B."""
    return _run([cfg], [on_log])[0]


def run_seeds(cfgs: list[Config], on_logs: list[OnLog | None] | None = None) -> list[dict]:
    """Train the seeds `cfgs` of one cell together, as one batched model (seeds.py; seed_cells.batch_reason must
    allow it), and return their summaries in order: each as run_trial would return it alone."""
    if (reason := batch_reason(cfgs)) is not None:
        raise ValueError(f"these seeds cannot be batched: {reason}")
    return _run(cfgs, on_logs or [None] * len(cfgs))


def _run(cfgs: list[Config], on_logs: list[OnLog | None]) -> list[dict]:
    for cfg in cfgs:  # before the process group and any allocation: one line, not an allocator's traceback
        check_fits_memory(cfg, copies=len(cfgs))
    world = setup(cfgs[0])
    try:
        # Inputs first: a bad data set or a foreign run directory fails before anything is written.
        datasets = [build_dataset(cfg) for cfg in cfgs]
        for cfg in cfgs:
            rundir.check_run_dir(cfg)
        with contextlib.ExitStack() as held:
            refused = None
            if world.is_main:  # one trainer per directory: a second process gets one line, on every rank
                try:
                    for cfg in cfgs:
                        held.enter_context(rundir.exclusive(run_dir(cfg)))
                except rundir.RunDirLocked as exc:
                    refused = exc
            if world.any_rank(refused is not None):
                raise refused or rundir.RunDirLocked(f"run directory '{run_dir(cfgs[0])}' is in use by another "
                                                     "process")
            # An exact trial that already finished is not trained again: its summary is the answer.
            summaries = [rundir.finished_summary(run_dir(cfg), cfg) for cfg in cfgs]
            todo = [i for i, s in enumerate(summaries) if s is None]
            if todo:
                world.barrier()
                # Everything but the training step itself (precision.training_step) is computed exactly.
                out = run_dir(cfgs[todo[0]]) if len(cfgs) == 1 else run_dir(cfgs[todo[0]]).parent
                with rundir.out_of_room_is_one_line(out), precision.exact():
                    trainers = [Trainer(cfgs[i], world, datasets[i], on_logs[i]) for i in todo]
                    for i, summary in zip(todo, loop.train(trainers)):
                        summaries[i] = summary
            return summaries
    finally:
        world.close()


class Trainer:
    def __init__(self, cfg: Config, world: World, ds: Dataset, on_log: OnLog | None):
        self.cfg, self.world, self.ds = cfg, world, ds
        self.out = run_dir(cfg)
        self.name = cfg.run.name or default_run_name(cfg)
        self.dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
        self.device = world.device
        self.par = Parallelism(world, cfg.model.arch, cfg.model.depth)
        self.x_all = ds.x.to(self.device, self.dtype)  # the training set: step size, lin_gap and the loop
        self._build_model_and_optimizer()
        self._build_metrics()
        self.start_step, self.resumed = self._resume()
        self._place_data()
        # The training forward is the probe's capture forward (forward()): the full batch is the probe set, the
        # forward is eager, one process, IEEE float32/64 (what the kernel's own forward computes)
        self.watch_probe = self.full_batch and not cfg.train.compile and cfg.train.precision == "fp32" \
            and world.size == 1 and self.theory.can_watch(self.x_local)
        # hessian/*: the whole training set on every rank, the unwrapped model; its warm start is not checkpointed
        self.sharpness = Sharpness(self.model, self.trained, self.x_all, self.t_all, self.loss_fn, cfg.train.loss,
                                   self.effective_lr, ds.num_outputs) if cfg.metrics.hessian else None
        self.sinks = self._open_outputs(on_log) if world.is_main else None

    # -- setup ------------------------------------------------------------------------------------------
    def _build_model_and_optimizer(self) -> None:
        cfg, ds = self.cfg, self.ds
        self.model, self.rules = build_model(cfg, ds.input_shape, ds.num_outputs, device=self.device,
                                             dtype=self.dtype, shard=self.par.shard)
        self.trained = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not self.trained:
            raise ConfigError("no trainable parameters: model.train_outer=false leaves nothing to train")
        self.net = self.par.wrap(self.model)
        self.step_net = torch.compile(self.net) if cfg.train.compile else self.net  # the training forward only
        base, self.lr_facts, self.theta0 = resolve_lr(cfg, self.model, self.rules, self.x_all, ds.num_outputs,
                                                      self.par)
        self.effective_lr = effective_lrs(base, self.rules, list(self.trained))
        self.hidden_lr = next((lr for n, lr in self.effective_lr.items() if n.startswith("hidden.")),
                              next(iter(self.effective_lr.values())))
        groups: dict[float, list] = {}
        for n, p in self.trained.items():
            groups.setdefault(self.effective_lr[n], []).append(p)
        self.optimizer = torch.optim.SGD([{"params": ps, "lr": lr} for lr, ps in groups.items()])

    def _build_metrics(self) -> None:
        cfg, ds = self.cfg, self.ds
        self.conv = ConvergenceTracker(cfg.metrics.window)
        # Theory metrics record the init state (K_0, ReLU patterns, ||theta_0||) now, before any checkpoint loads.
        probe_n = probe_samples(cfg, len(ds))
        self.theory = TheoryMetrics(
            self.model, self.rules, cfg.seed, ds.x[:probe_n].to(self.device, self.dtype),
            label_targets(ds.y[:probe_n], ds.is_classification, ds.num_outputs),
            param=cfg.model.param, width=cfg.model.width, depth=cfg.model.depth, arch=cfg.model.arch,
            bias=cfg.model.bias, train_outer=effective_train_outer(cfg), classes=ds.num_outputs,
            track_ntk=cfg.metrics.ntk, spectral=cfg.metrics.spectral, parallel=self.par,
            input_only=cfg.model.train_input_only, memory_cap=cfg.metrics.ntk_memory_mb * 2**20,
            w0_cache_bytes=w0_cache_budget(cfg))  # read now: seeds built before this one have taken theirs
        # Its init row too is taken here, from the seed's init: a resumed trial recomputes it, nothing checkpointed.
        self.circle = KernelCircle(self.model, self.x_all, cfg, ds.num_outputs, self.par) \
            if cfg.metrics.kernel_circle > 0 else None
        self.lin_off = lin_gap_off_reason(cfg, len(ds), ds.num_outputs)
        self.x_test = None if ds.x_test is None else ds.x_test.to(self.device, self.dtype)
        self.t_test = None if ds.y_test is None else targets(ds, cfg, ds.y_test).to(self.device)
        if self.t_test is not None and self.t_test.is_floating_point():
            self.t_test = self.t_test.to(self.dtype)
        # ntk/test_lin_gap takes one kernel over train and held-out samples: under the same metrics.lin_max.
        with_test = self.x_test is not None and (len(ds) + len(self.x_test)) * ds.num_outputs <= cfg.metrics.lin_max
        whole = self.theta0.shape[0] == len(ds) * ds.num_outputs  # auto's Theta_0 covers every sample: not again
        self.lin = None if self.lin_off else LinearizationGap(
            self.model, self.x_all, targets(ds, cfg), self.effective_lr, self.par,
            self.x_test if with_test else None, self.t_test if with_test else None, self.theta0 if whole else None)
        if self.lin is not None and (unstable := unstable_reason(self.lin.edge_ratio)):
            self.lin, self.lin_off = None, unstable  # never logged: the reason is in config.yaml and summary.json
        self.regime = Regime(self.model, self.x_all, ds.num_outputs, self.effective_lr, self.par, self.theta0,
                             cfg.train.loss)
        del self.theta0

    def _resume(self) -> tuple[int, bool]:
        """Load the latest complete checkpoint, if any: (step to start from, resumed)."""
        self.ckpt_root = self.out / rundir.CHECKPOINTS_DIR
        if self.cfg.checkpoint.resume and (last := checkpoint.latest(self.ckpt_root, self.world)) is not None:
            loss0 = self._loss_at_init()  # the model is still at init: for a checkpoint written before loss0 was kept
            state = checkpoint.load(last, self.par.state_dict(self.model))
            self.conv.load(state["conv"])
            self.theory.load(state.get("theory", {}))
            self.regime.load(state.get("regime", {}))
            self.regime.loss0 = loss0 if self.regime.loss0 is None else self.regime.loss0
            return state["step"], True
        return 0, False

    @torch.no_grad()
    def _loss_at_init(self) -> float:
        """The training loss of the model as built (its init), on every rank alike (train.target_ratio's base)."""
        with precision.exact():
            out = self.model(self.x_all).to(self.dtype)
            target = targets(self.ds, self.cfg).to(self.device)
            return float(loss_fn(self.cfg)(out, target.to(self.dtype) if target.is_floating_point() else target))

    def _place_data(self) -> None:
        """Every rank holds the whole (small) training set; each dp rank computes on its share."""
        ds, world = self.ds, self.world
        self.t_all = targets(ds, self.cfg).to(self.device)
        if self.t_all.is_floating_point():
            self.t_all = self.t_all.to(self.dtype)
        self.labels = ds.y.to(self.device) if ds.is_classification else None
        self.n = len(ds)
        # Contiguous near-equal shares that cover every sample, also when dp does not divide n (mini-batch SGD
        # allows that: the batch is what dp must divide). Full batch: n % dp == 0 (config.py), equal shares.
        lo = world.dp_rank * self.n // world.dp
        hi = (world.dp_rank + 1) * self.n // world.dp
        self.full_batch = self.cfg.train.batch_size == 0
        self.x_local, self.t_local = self.x_all[lo:hi], self.t_all[lo:hi]
        self.labels_local = self.labels[lo:hi] if self.labels is not None else None
        self.loss_fn = loss_fn(self.cfg)
        self.stats = torch.zeros(2, dtype=torch.float64, device=self.device)

    def _open_outputs(self, on_log: OnLog | None) -> Sinks:
        self.out.mkdir(parents=True, exist_ok=True)
        world = self.world
        rundir.write_config(self.out, self.cfg, {
            **init_facts(self.cfg, self.lr_facts, self.effective_lr, self.lin_off, self.ds.info),
            "world": {"dp": world.dp, "tp": world.tp, "device": str(self.device), "nodes": world.nodes},
        })
        return Sinks(self.cfg, self.out, self.name, self.start_step if self.resumed else None, on_log)

    # -- the named steps of one update -------------------------------------------------------------------
    def is_log_step(self, step: int) -> bool:
        # The same steps are logged whether or not the trial was interrupted and resumed in between.
        every = self.cfg.metrics.every
        return step == 0 or step >= self.cfg.train.steps or (every > 0 and step % every == 0)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs, targets, labels or None) of update `step` on this rank: its share of the training set under
        full batch, else its share of the step's mini-batch."""
        if self.full_batch:
            return self.x_local, self.t_local, self.labels_local
        world = self.world
        idx = batch_indices(self.cfg, self.n, step)
        b = idx.numel() // world.dp
        idx = idx[world.dp_rank * b:(world.dp_rank + 1) * b].to(self.device)
        return self.x_all[idx], self.t_all[idx], (self.labels[idx] if self.labels is not None else None)

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        """The training forward of one update (seeds.py batches it over seeds instead). On a logged step whose batch
        is the probe set, in exact arithmetic, it is also the probe NTK's capture forward (TheoryMetrics.watching), and
        its backward gives one output's signals: the kernel then costs C - 1 backwards alone (keeps_graph)."""
        watch = self.watch_probe and self.is_log_step(self.step)
        with precision.training_step(self.cfg.train.precision, self.device), \
                (self.theory.watching(xb.shape[0], first=self.step == 0) if watch else contextlib.nullcontext()):
            out = self.step_net(xb)
        if watch:
            self.theory.take(out)
        return out

    def measure(self, step: int, output: torch.Tensor, tb: torch.Tensor, lb: torch.Tensor | None) -> None:
        """From the forward on the batch of this update: the loss to backprop, the train loss and accuracy (with full
        batch those of theta_step; with mini-batches a logged step evaluates), and whether to stop here."""
        cfg = self.cfg
        self.log_now = self.is_log_step(step)
        output = output.to(self.dtype)  # the loss in the weights' dtype (bf16 autocast returns bfloat16)
        self.loss = self.loss_fn(output, tb)
        if self.full_batch:
            self.train_loss, self.train_acc = self._reduce_loss_acc(self.loss.detach(), output.detach(), lb)
        elif self.log_now:
            self.train_loss, self.train_acc = self.evaluate()
        else:
            self.train_loss, self.train_acc = float(self.loss.detach()), None  # batch loss: divergence check only
        self.diverged = not math.isfinite(self.train_loss)
        # Only a loss of the whole training set decides a fit (mini-batch SGD sees one on logged rows alone)
        fitted = (self.full_batch or self.log_now) and self.fitted(self.train_loss, self.train_acc)
        if self.full_batch or self.log_now:
            self.conv.update(step, self.train_loss, fitted)
            self.regime.see_loss(step, self.train_loss)
        self.stop = self.diverged or step >= cfg.train.steps or (
            fitted and (cfg.train.stop_at_fit or cfg.train.target_loss > 0 or cfg.train.target_ratio > 0))

    def _reduce_loss_acc(self, loss: torch.Tensor, output: torch.Tensor, labels) -> tuple[float, float | None]:
        """The mean loss over this rank's share -> the mean over all n samples (shares may differ by one)."""
        self.stats[0] = loss.double() * output.shape[0]
        self.stats[1] = (output.argmax(1) == labels).sum() if labels is not None else 0
        self.world.all_reduce_sum(self.stats, "dp")
        return float(self.stats[0]) / self.n, (float(self.stats[1]) / self.n if labels is not None else None)

    def evaluate(self) -> tuple[float, float | None]:
        """Loss and accuracy of the current parameters on the whole training set."""
        with torch.no_grad():
            o = self.net(self.x_local)
            return self._reduce_loss_acc(self.loss_fn(o, self.t_local), o, self.labels_local)

    def evaluate_test(self) -> dict[str, float]:
        """test/loss and test/acc on the held-out samples (every rank computes the whole, small, set)."""
        with torch.no_grad():
            o = self.model(self.x_test).to(self.dtype)
            row = {names.TEST_LOSS: float(self.loss_fn(o, self.t_test))}
            if self.ds.is_classification:
                row[names.TEST_ACC] = float((o.argmax(1) == self.ds.y_test.to(o.device)).double().mean())
        return row

    def fitted(self, train_loss: float, train_acc: float | None) -> bool:
        """A loss target (train.target_loss, or train.target_ratio of the loss at step 0, which regime.py keeps) where
        one is set, else 100% train accuracy: one definition of the fit per trial, so conv/steps_to_fit means one
        thing."""
        t = self.cfg.train
        if t.target_loss > 0 or t.target_ratio > 0:
            return math.isfinite(train_loss) and (
                (t.target_loss > 0 and train_loss < t.target_loss)
                or (t.target_ratio > 0 and self.regime.loss0 is not None
                    and train_loss <= t.target_ratio * self.regime.loss0))
        return train_acc is not None and train_acc >= 1.0

    def log(self, step: int, train_loss: float, train_acc: float | None, *, has_grad: bool, diverged: bool,
            final: bool) -> dict[str, float]:
        """Compute the row of this step (train/*, time/*, the theory metrics) and send it to the sinks."""
        elapsed = time.perf_counter() - self.t_mark
        row: dict[str, float] = {names.TRAIN_LOSS: train_loss, names.TRAIN_LR: self.hidden_lr}
        if train_acc is not None:
            row[names.TRAIN_ACC] = train_acc
        if has_grad:
            row[names.TRAIN_GRAD_NORM] = math.sqrt(sum(
                (self.par.sq_norm(p.grad, p) for p in self.trained.values() if p.grad is not None), 0.0))
        if self.steps_since > 0:
            row[names.TIME_STEP] = elapsed / self.steps_since
            row[names.TIME_SAMPLES] = (self.cfg.train.batch_size or self.n) * self.steps_since / elapsed
        if not diverged:  # metrics of non-finite weights mean nothing (and eigensolvers reject them)
            t_metrics = time.perf_counter()
            if self.x_test is not None:
                row.update(self.evaluate_test())
            row.update(self.theory.compute(first=step == 0, final=final))
            if self.lin is not None:
                row.update(self.lin.metrics(step))
            if self.sharpness is not None:
                row.update(self.sharpness.metrics())
            self.regime.see_row(step, row)
            if step == 0:
                row[names.REGIME_EDGE_RATIO] = self.regime.edge0
            if final:
                row[names.REGIME_EDGE_RATIO] = self.regime.measure_end()
            row[names.TIME_METRICS] = time.perf_counter() - t_metrics
        if self.sinks is not None:
            self.sinks.log(step, row)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{train_loss:.3g}", refresh=False)
        self.t_mark, self.steps_since = time.perf_counter(), 0
        return row

    def save_checkpoint(self, step: int) -> None:
        state = {"step": step, "conv": self.conv.state(), "theory": self.theory.state(), "regime": self.regime.state()}
        checkpoint.save(self.ckpt_root, step, self.par.state_dict(self.model), state, self.world,
                        self.cfg.checkpoint.keep)
        self.saved_at = step

    # -- the loop (loop.py runs these for one trainer, or for the seeds of one cell together) -----------------
    def begin(self) -> None:
        self.bar = None
        if self.world.is_main and not self.cfg.run.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=self.cfg.train.steps, initial=self.start_step, desc=self.name, unit="step",
                            leave=False)
        self.step = self.saved_at = self.start_step
        self.status, self.final_metrics = "completed", {}
        self.t_start = self.t_mark = time.perf_counter()
        self.steps_since = 0

    def keeps_graph(self) -> bool:
        """Whether this update's backward keeps its graph: the probe kernel's capture, taken from this forward,
        backprops through it again (TheoryMetrics.take)."""
        return self.theory is not None and self.theory.keeps_graph()

    def log_or_stop(self) -> bool:
        """After the backward of this update: its row when due; True when the trial stops at this step."""
        if self.log_now or self.stop:
            self.final_metrics = self.log(self.step, self.train_loss, self.train_acc, has_grad=not self.stop,
                                          diverged=self.diverged, final=self.stop)
        if self.stop:
            self.status = "diverged" if self.diverged else "completed"
        return self.stop

    def update(self, stepped: bool = False) -> None:
        """The optimizer's step (unless `stepped`: seeds.SeedStack.step did it for a batch of seeds), then a
        checkpoint when due."""
        if not stepped:
            self.optimizer.step()
        self.step += 1
        self.steps_since += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.cfg.checkpoint.every > 0 and self.step % self.cfg.checkpoint.every == 0 \
                and self.step < self.cfg.train.steps:
            self.save_checkpoint(self.step)

    def preempt(self) -> None:
        if self.saved_at != self.step:
            self.save_checkpoint(self.step)
        self.status = "preempted"

    def end(self) -> dict:
        if self.bar is not None:
            self.bar.close()
        if self.status == "completed" and self.saved_at != self.step:
            self.save_checkpoint(self.step)
        return finish(self, self.status, self.step, self.final_metrics)

"""The end of a trial (train.Trainer.end): its summary, the files written once at the end (summary.json, the NTK
spectrum, the kernel circle), and the sinks closed; every rank returns the summary."""

from __future__ import annotations

import math
import time

import torch

from . import rundir
from .metrics import names
from .metrics.regime import output_is_constant


def finish(t, status: str, step: int, final_metrics: dict[str, float]) -> dict:
    """Write summary.json (rank 0), close the sinks, and return the summary on every rank."""
    world = t.world
    summary = {
        "status": status,
        "name": t.name,
        "seed": t.cfg.seed,
        "steps": step,
        "requested_steps": t.cfg.train.steps,
        "stop_rules": rundir.stop_rules(t.cfg),
        **{k: v for k, v in final_metrics.items() if not k.startswith(names.TIME_PREFIX)},
        names.NTK_INIT_GAP: t.theory.init_gap,
        **t.theory.once,
        names.CONV_RATE: t.conv.rate(),
        names.CONV_STEPS_TO_FIT: t.conv.steps_to_fit,
        names.CONV_STEPS_TO_FIT_RESOLUTION: 1 if t.full_batch else (t.cfg.metrics.every or step),
        "wall_s": time.perf_counter() - t.t_start,
        "delta": t.ds.info["delta"],
        "trained_params": sum(math.prod(t.par.shards[n].global_shape) if n in t.par.shards else p.numel()
                              for n, p in t.trained.items()),
        "dp": world.dp,
        "tp": world.tp,
        "lin_gap_off": t.lin_off,
    }
    if status != "preempted":  # the regime of a finished run (a preempted one resumes)
        with torch.no_grad():  # in chunks of samples, as dead_layers
            constant = t.n > 1 and output_is_constant(torch.cat([t.model(p) for p in t.x_all.split(1024)]))
        summary.update(t.regime.summary(status, step, final_metrics.get(names.TRAIN_LOSS),
                                           t.theory.dead_layers(t.x_all), constant))
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    # Every rank computes the end row (a collective under tensor parallelism); rank 0 writes it.
    circle = t.circle.record(step, diverged=status == "diverged") if t.circle is not None else None
    if t.sinks is not None:
        if t.theory.track_ntk:
            rundir.write_spectrum(t.out, step, t.theory.spectrum)
        if circle is not None:
            rundir.write_kernel_circle(t.out, circle)
        # The sinks (metrics.jsonl, W&B's offline file) are flushed and closed before summary.json marks the trial
        # finished: a process killed in between would otherwise leave W&B short of the last rows for good, as a
        # rerun returns a finished trial untouched (found by tests/chaos.py's seeded kills)
        t.sinks.finish(summary)
        rundir.write_summary(t.out, summary)
    world.barrier()
    return summary

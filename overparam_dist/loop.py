"""The training loop: the named steps of train.Trainer (torchtitan's Trainer.train is the model), for one trial or
for the seeds of one cell trained together as one batched model (seeds.py).

One update: the batch, the forward, measure (losses, the stopping rules), the backward, log (the row when due, or
the last one), update (the optimizer, a checkpoint when due), then a preemption check. Seeds that stop (a fit, a
divergence, the last step) leave the batch and the others go on; seeds resumed from different steps are stepped
lowest first, so each sees the same updates as when trained alone.
"""

from __future__ import annotations

import torch

from . import precision
from .preemption import Preemption
from .seeds import SeedStack


def train(trainers: list) -> list[dict]:
    """Train every train.Trainer in `trainers` to its end and return their summaries, in order. One trainer's own
    forward (data parallel, tensor parallel, compiled) is its step; several, the seeds of one cell, are batched by a
    seeds.SeedStack. (Untyped: train.py imports this module.)"""
    stack = SeedStack(trainers) if len(trainers) > 1 else None
    for t in trainers:
        t.begin()
    first = trainers[0]
    preemption = Preemption(first.cfg.run.preempt_file)
    active = list(trainers)
    try:
        while active:
            step = min(t.step for t in active)
            group = [t for t in active if t.step == step]
            batches = [t.batch(step) for t in group]
            if stack is None:
                outputs = [first.forward(batches[0][0])]
            else:
                outputs = stack.forward(group, [b[0] for b in batches])
            for t, (_, tb, lb), out in zip(group, batches, outputs):
                t.measure(step, out, tb, lb)
            going = [t for t in group if not t.stop]
            loss = None
            if going:
                for t in going:
                    t.optimizer.zero_grad(set_to_none=True)
                loss = going[0].loss if len(going) == 1 else torch.stack([t.loss for t in going]).sum()
                with precision.backward_step(first.cfg.train.precision):
                    # kept where a row's probe kernel backprops again through this graph (Trainer.keeps_graph)
                    loss.backward(retain_graph=any(t.keeps_graph() for t in going))
                if stack is not None:
                    stack.scatter_grads(going)
            del outputs, loss
            for t in group:
                t.loss = None  # the graph goes now, not at the next update
                if t.log_or_stop():
                    active.remove(t)
            stepped = stack is not None and bool(going) and stack.step(going)
            for t in going:
                t.update(stepped)
            if going and preemption.requested(first.world):
                for t in active:
                    t.preempt()
                break
    finally:
        preemption.restore()
    return [t.end() for t in trainers]

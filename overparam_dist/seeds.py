"""The seeds of one cell trained in one process as one batched model (train.run_seeds, loop.py): SeedStack.

A cell of k seeds as k trials costs k process starts, k model builds and k sets of small matrix products that
leave the cores idle at small widths. Here each seed still has its own Trainer (train.py): its own run directory,
metrics.jsonl, checkpoints, W&B run, theory metrics and summary, all computed on its own model. Only the training
step is shared: every model's parameters are rows of one stacked tensor per parameter (SeedStack), the forward is
one `torch.func.vmap` of the model over (parameters, inputs), and one backward of the summed losses gives every
seed's gradient, which its own optimizer applies to its row. So a seed's update is the one it gets alone, up to the
rounding of a batched matrix product (tests/test_seeds.py: 1e-6 in float32, 1e-12 in float64).

seed_cells.batch_reason says which configs can be batched so.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, vmap

from . import precision


class SeedStack:
    """The models of k trainers as one: each parameter and buffer is stacked into a (k, ...) tensor, and each
    model's own tensor becomes an alias of its row (p.data = stacked[i]), so its optimizer updates the stack in
    place and its metrics read the stack's row."""

    def __init__(self, trainers):
        self.template = trainers[0].model  # the architecture; functional_call swaps its tensors per call
        self.row = {id(t): i for i, t in enumerate(trainers)}
        self.stacked: dict[str, torch.Tensor] = {}
        for name, _ in self.template.named_parameters():
            tensors = [dict(t.model.named_parameters())[name] for t in trainers]
            self.stacked[name] = torch.stack([p.detach() for p in tensors])
            for i, p in enumerate(tensors):
                p.data = self.stacked[name][i]
        for name, _ in self.template.named_buffers():
            tensors = [dict(t.model.named_buffers())[name] for t in trainers]
            self.stacked[name] = torch.stack(tensors)
            for i, b in enumerate(tensors):
                b.data = self.stacked[name][i]
        self.trained = {n for n, p in self.template.named_parameters() if p.requires_grad}
        self.leaves: dict[str, torch.Tensor] = {}

    def forward(self, group, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each trainer's training output on its inputs, from one vmapped forward with a graph to the stack (to
        the rows of `group` only, when some seeds have stopped or lag behind)."""
        rows = [self.row[id(t)] for t in group]
        self.position = {row: j for j, row in enumerate(rows)}  # row of the stack -> row of this forward's leaves
        whole = rows == list(range(len(self.row)))
        index = torch.tensor(rows, device=inputs[0].device)
        self.leaves = {}
        for n, s in self.stacked.items():
            leaf = (s if whole else s.index_select(0, index)).detach()
            self.leaves[n] = leaf.requires_grad_(True) if n in self.trained else leaf

        def one(tensors, x):
            return functional_call(self.template, tensors, (x,))

        with precision.training_step(group[0].cfg.train.precision, inputs[0].device):
            out = vmap(one)(self.leaves, torch.stack(inputs))
        return list(out.unbind(0))

    def scatter_grads(self, going) -> None:
        """Hand each trainer the gradient of its row (one backward of the summed losses gave them all)."""
        for t in going:
            j = self.position[self.row[id(t)]]
            for n, p in t.model.named_parameters():
                if n in self.trained:
                    p.grad = self.leaves[n].grad[j]

    def step(self, going) -> bool:
        """The SGD update of every seed at once, when every seed is in this update with the same step sizes: the
        elementwise p - lr g of each row, as each optimizer would compute it. False: each optimizer steps."""
        lrs = going[0].effective_lr
        if len(going) != len(self.row) or len(self.position) != len(self.row) \
                or any(t.effective_lr != lrs for t in going):
            return False
        with torch.no_grad():
            for n in self.trained:
                self.stacked[n].add_(self.leaves[n].grad, alpha=-lrs[n])
        return True

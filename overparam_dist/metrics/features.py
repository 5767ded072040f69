"""Feature movement: how far each ReLU layer's pre-activations on the probe set moved from init (names.py).

h_l is the input of ReLU layer l (ActivationPattern.preactivations), dh_l = h_l(t) - h_l(0):
feature/delta_rms/<layer> = sqrt(mean dh_l^2) over every coordinate (probe sample, unit[, position]), mup's
coordinate check; feature/delta_rel/<layer> = ||dh_l||_F / ||h_l(0)||_F; feature/delta_rel pools the latter over
the trained layers. Sums are float64; a layer whose activations are tensor-parallel shards sums its squares and
coordinate counts over tp (`reduce_tp`, in place, as for the flip counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from . import names


def _sums(init: torch.Tensor, now: torch.Tensor) -> torch.Tensor:
    """[||dh||^2, ||h(0)||^2, coordinates] in float64."""
    h0 = init.double()
    delta = now.double() - h0
    return torch.stack([delta.pow(2).sum(), h0.pow(2).sum(),
                        torch.tensor(float(h0.numel()), dtype=torch.float64, device=h0.device)])


def feature_movement(init: dict[str, torch.Tensor], now: dict[str, torch.Tensor], trained: Iterable[str],
                     sharded: Iterable[str] = (),
                     reduce_tp: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """The feature/* metrics of one row from the init and current pre-activations (layer -> tensor).

    `trained`: the layers the pooled ratio covers; `sharded`: the layers whose tensors are local tp shards, summed
    by `reduce_tp`."""
    trained, sharded = set(trained), set(sharded)
    out: dict[str, float] = {}
    moved_total, init_total = 0.0, 0.0
    for layer, h in now.items():
        sums = _sums(init[layer], h)
        if layer in sharded:
            if reduce_tp is None:
                raise ValueError(f"layer {layer!r} is sharded but no reduce_tp was given")
            reduce_tp(sums)
        moved, size, count = (float(v) for v in sums)
        out[names.feature_delta_rms(layer)] = math.sqrt(moved / count)
        if size > 0:
            out[names.feature_delta_rel(layer)] = math.sqrt(moved / size)
        if layer in trained:
            moved_total += moved
            init_total += size
    if init_total > 0:
        out[names.FEATURE_DELTA_REL] = math.sqrt(moved_total / init_total)
    return out

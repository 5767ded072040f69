"""Parameterizations (init distribution, forward multiplier, per-layer learning rate, trainability)
and deterministic, shard-friendly weight generation.

Every weight is generated in fixed TILE x TILE tiles of its 2-D view (out, in * k * k); each tile has
its own generator seeded from (seed, parameter name, tile index). So the initial value of any entry
depends only on the seed - never on the number of processes or on how a layer is sharded - and any
block of a weight (a tensor-parallel shard, or a chunk of W_0 for drift metrics) can be regenerated
without materialising the whole matrix.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import nn

TILE = 1024


@dataclass(frozen=True)
class Rule:
    dist: str  # normal | uniform | sign (+-scale, each with probability 1/2) | zeros
    scale: float  # std (normal) or bound (uniform)
    multiplier: float = 1.0  # forward multiplier on W x (weights only)
    lr_scale: float = 1.0  # effective lr = train.lr * lr_scale
    trainable: bool = True


def role_of(module_name: str) -> str | None:
    """Roles of the layers of our models: input (A), hidden (W_l), output (B)."""
    if module_name == "input":
        return "input"
    if module_name.startswith("hidden."):
        return "hidden"
    if module_name == "output":
        return "output"
    return None


def fans(module: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) counting kernel positions, as torch.nn.init does."""
    w = module.weight
    receptive = w[0, 0].numel() if w.dim() > 2 else 1
    return w.shape[1] * receptive, w.shape[0] * receptive


def rules_for(param: str, role: str, module: nn.Module, width: int, train_outer: bool,
              input_only: bool = False) -> tuple[Rule, Rule]:
    """(weight rule, bias rule) for one layer. input_only (model.train_input_only): A alone trains, and B is fixed at
    random signs of its parameterization's scale (Du et al. 2018's a_r = +-1)."""
    w, b = _rules(param, role, module, width, role == "input" if input_only else
                  train_outer or role not in ("input", "output"))
    if input_only and role == "output":
        w = Rule("sign", w.scale, w.multiplier, w.lr_scale, False)
    return w, b


def _rules(param: str, role: str, module: nn.Module, width: int, trainable: bool) -> tuple[Rule, Rule]:
    fan_in, fan_out = fans(module)
    if param == "paper":
        # A, W_l ~ N(0, 2/m) (m = the layer's output units), B ~ N(0, 1/d_out); step = lr / m.
        std = math.sqrt(1.0 / module.weight.shape[0]) if role == "output" else math.sqrt(2.0 / fan_out)
        lr = 1.0 / width
        return Rule("normal", std, 1.0, lr, trainable), Rule("zeros", 0.0, 1.0, lr, trainable)
    if param == "ntk":
        gain = 1.0 if role == "output" else 2.0
        return (Rule("normal", 1.0, math.sqrt(gain / fan_in), 1.0, trainable),
                Rule("zeros", 0.0, 1.0, 1.0, trainable))
    if param == "standard":
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear / nn.Conv2d defaults
        return Rule("uniform", bound, 1.0, 1.0, trainable), Rule("uniform", bound, 1.0, 1.0, trainable)
    if param == "mup":
        # Tensor Programs V, table 3 (SGD): input weights and *all* biases: lr * fan_out; hidden weights var
        # 1/fan_in, lr; output weights var 1/fan_in^2, lr / fan_in. So every bias moves at lr * fan_out: m for the
        # input and hidden layers, d_out for the output layer (microsoft/mup's MuSGD: vector-like parameters get
        # the width multiplier; the output bias, of finite size, is not scaled down). ReLU gain 2 on input and
        # hidden layers; biases start at zero.
        if role == "input":
            w = Rule("normal", math.sqrt(2.0 / fan_in), 1.0, float(width), trainable)
        elif role == "hidden":
            w = Rule("normal", math.sqrt(2.0 / fan_in), 1.0, 1.0, trainable)
        else:
            w = Rule("normal", 1.0 / fan_in, 1.0, 1.0 / width, trainable)
        return w, Rule("zeros", 0.0, 1.0, float(module.weight.shape[0]), trainable)
    raise ValueError(f"unknown parameterization {param!r}")


def _tile_seed(seed: int, name: str, ti: int, tj: int) -> int:
    digest = hashlib.blake2b(f"{seed}|{name}|{ti}|{tj}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _tile(rule: Rule, seed: int, name: str, ti: int, tj: int, rows: int, cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_tile_seed(seed, name, ti, tj))
    tile = torch.empty(rows, cols, dtype=torch.float32)
    if rule.dist == "normal":
        return tile.normal_(0.0, rule.scale, generator=g)
    if rule.dist == "sign":
        return tile.bernoulli_(0.5, generator=g).mul_(2.0 * rule.scale).sub_(rule.scale)
    return tile.uniform_(-rule.scale, rule.scale, generator=g)


def generate_block(rule: Rule, seed: int, name: str, shape2d: tuple[int, int],
                   rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """Rows [r0, r1) x cols [c0, c1) of the initial value of parameter `name` (2-D view), float32, CPU."""
    (r0, r1), (c0, c1) = rows, cols
    if rule.dist == "zeros":
        return torch.zeros(r1 - r0, c1 - c0, dtype=torch.float32)
    n_rows, n_cols = shape2d
    tiles_r = range(r0 // TILE, (r1 - 1) // TILE + 1)
    tiles_c = range(c0 // TILE, (c1 - 1) // TILE + 1)
    out = None
    for ti in tiles_r:
        tr0, tr1 = ti * TILE, min((ti + 1) * TILE, n_rows)
        for tj in tiles_c:
            tc0, tc1 = tj * TILE, min((tj + 1) * TILE, n_cols)
            tile = _tile(rule, seed, name, ti, tj, tr1 - tr0, tc1 - tc0)
            if (tr0, tr1, tc0, tc1) == (r0, r1, c0, c1):
                return tile  # the block is exactly one tile: no copy
            if out is None:
                out = torch.empty(r1 - r0, c1 - c0, dtype=torch.float32)
            a0, a1 = max(r0, tr0), min(r1, tr1)
            b0, b1 = max(c0, tc0), min(c1, tc1)
            out[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = tile[a0 - tr0:a1 - tr0, b0 - tc0:b1 - tc0]
    return out


def shape2d(shape: torch.Size) -> tuple[int, int]:
    return (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (shape[0], 1)


def generate_full(rule: Rule, seed: int, name: str, shape: torch.Size) -> torch.Tensor:
    rows, cols = shape2d(shape)
    return generate_block(rule, seed, name, (rows, cols), (0, rows), (0, cols)).reshape(shape)


def parameter_rules(model: nn.Module, param: str, width: int, train_outer: bool,
                    input_only: bool = False) -> dict[str, Rule]:
    """Rule for every parameter of one of our models, keyed by parameter name."""
    out: dict[str, Rule] = {}
    for mod_name, module in model.named_modules():
        role = role_of(mod_name)
        if role is None:
            continue
        w_rule, b_rule = rules_for(param, role, module, width, train_outer, input_only)
        out[f"{mod_name}.weight"] = w_rule
        if getattr(module, "bias", None) is not None:
            out[f"{mod_name}.bias"] = b_rule
    missing = {n for n, _ in model.named_parameters()} - set(out)
    if missing:
        raise ValueError(f"no parameterization rule for parameters {sorted(missing)}")
    return out


@torch.no_grad()
def apply_parameterization(model: nn.Module, rules: dict[str, Rule], seed: int, shards: dict | None = None) -> None:
    """Set multipliers, trainability and initial values (in place, on the model's device/dtype).

    `shards`: parameter name -> tensor-parallel Shard (parallel/tensor_parallel.py). A sharded parameter
    generates only its own block of the global weight, so no rank ever materialises a full wide layer,
    and the values are bit-identical to the unsharded ones.
    """
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        rule = rules[name]
        mod_name, kind = name.rsplit(".", 1)
        if kind == "weight":
            modules[mod_name].weight_multiplier = rule.multiplier
        p.requires_grad_(rule.trainable)
        shard = (shards or {}).get(name)
        if shard is None:
            value = generate_full(rule, seed, name, p.shape)
        else:
            _, g2, row0, col0 = shard.view(p)
            local2d = shape2d(p.shape)
            value = generate_block(rule, seed, name, g2, (row0, row0 + local2d[0]), (col0, col0 + local2d[1]))
        p.copy_(value.reshape(p.shape).to(p.dtype))

"""Planning the exact NTK (ntk.py): which trainable parameter goes through which route. A module is routed
layer-wise only if its forward is one whose semantics we know and it owns its parameters alone; every other
trainable parameter goes to the per-sample fallback, and the routes partition the parameters exactly."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from ..models.layers import ScaledConv2d, ScaledLinear


@dataclass
class Layer:
    module: nn.Module
    kind: str  # "linear" | "conv"
    mult: float  # forward multiplier on W a (the bias is added after it, unscaled)
    weight: nn.Parameter | None  # trainable weight routed here, None if frozen
    bias: nn.Parameter | None  # trainable bias routed here, None if frozen / absent
    conv: tuple | None = None  # (kernel, stride, dilation, groups, pad4, pad_mode) for convs
    route: str | None = None  # weight route, "gram" | "psg" (per-sample gradients); chosen on first capture

    def params(self) -> list[nn.Parameter]:
        return [p for p in (self.weight, self.bias) if p is not None]


def conv_padding(module: nn.Conv2d, padding) -> tuple[int, int, int, int]:
    """F.pad order (left, right, top, bottom) of what F.conv2d does with `padding`."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        # 'same': total d (k - 1), the odd one extra on the right/bottom (as F.conv2d and nn.Conv2d do).
        (dh, dw), (kh, kw) = module.dilation, module.kernel_size
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (pw, pw, ph, ph)


def layer_spec(module: nn.Module) -> tuple[str, float, tuple | None] | None:
    """(kind, multiplier, conv geometry) if the module's forward is one we know exactly, else None.

    Keyed on the forward *function*, not the class: a subclass that overrides forward may compute anything.
    """
    fwd = getattr(type(module), "forward", None)
    if isinstance(module, nn.Linear):
        if fwd is nn.Linear.forward:
            return "linear", 1.0, None
        if fwd is ScaledLinear.forward:
            return "linear", float(module.weight_multiplier), None
        return None
    if isinstance(module, nn.Conv2d):
        scaled = fwd is ScaledConv2d.forward  # F.conv2d(x, w, None, stride, padding): dilation 1, groups 1
        if not (scaled or (fwd is nn.Conv2d.forward and type(module)._conv_forward is nn.Conv2d._conv_forward)):
            return None
        if module.padding_mode != "zeros":  # both pad by F.pad first, then convolve unpadded
            r = module._reversed_padding_repeated_twice
            pad4, mode = (r[0], r[1], r[2], r[3]), module.padding_mode
        else:
            pad4, mode = conv_padding(module, module.padding), "zeros"
        geom = (module.kernel_size, module.stride, module.dilation, module.groups, pad4, mode)
        return "conv", float(module.weight_multiplier) if scaled else 1.0, geom
    return None


class RoutePlan:
    def __init__(self, model: nn.Module):
        self.trainable = [p for p in model.parameters() if p.requires_grad]  # deduplicated
        owners: dict[int, int] = {}
        for mod in model.modules():
            for p in mod._parameters.values():
                if p is not None:
                    owners[id(p)] = owners.get(id(p), 0) + 1
        self.layers: list[Layer] = []
        for mod in model.modules():
            spec = layer_spec(mod)
            if spec is None:
                continue
            # Only a parameter the module owns alone: a tied weight's gradient has cross-module terms.
            w, b = (mod._parameters.get(k) for k in ("weight", "bias"))
            w = w if w is not None and w.requires_grad and owners[id(w)] == 1 else None
            b = b if b is not None and b.requires_grad and owners[id(b)] == 1 else None
            if w is not None or b is not None:
                self.layers.append(Layer(mod, spec[0], spec[1], w, b, spec[2]))
        self.clone_inputs = False
        self._refresh()

    def _refresh(self) -> None:
        routed = {id(p) for layer in self.layers for p in layer.params()}
        self.fallback = [p for p in self.trainable if id(p) not in routed]
        # Every trainable parameter is accounted for by exactly one route.
        covered = [id(p) for layer in self.layers for p in layer.params()] + [id(p) for p in self.fallback]
        assert sorted(covered) == sorted(id(p) for p in self.trainable), "NTK routes do not partition params"

    def demote(self, layer_ids: set[int]) -> None:
        """Send these layers' parameters to the per-sample fallback."""
        self.layers = [layer for i, layer in enumerate(self.layers) if i not in layer_ids]
        self._refresh()


class Reroute(Exception):
    """A capture found layers it cannot handle exactly (or inputs mutated in place): replan and retry."""

    def __init__(self, layer_ids: set[int]):
        self.layer_ids = layer_ids


def check_no_batch_coupling(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        # BatchNorm uses batch statistics in train mode, and in eval mode too when it has no running stats.
        if isinstance(mod, _BatchNorm) and (mod.training or mod.running_mean is None):
            raise ValueError(f"empirical_ntk: {name or 'model'} is a BatchNorm using batch statistics, which "
                             "couples the samples of a batch; call model.eval() (with running stats) first")
        if mod.training and isinstance(mod, _DropoutNd) and mod.p > 0:
            raise ValueError(f"empirical_ntk: {name or 'model'} is an active dropout; call model.eval()")

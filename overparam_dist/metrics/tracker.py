"""The theory metrics of one trial, computed on a fixed probe set every `metrics.every` steps.

- weight drift: drift/weight_rel, per layer relative Frobenius and spectral norms of W_t - W_0 (drift.py)
- activation drift: drift/act_flip[/<layer>], the fraction of (probe sample, unit) ReLU signs that
  differ from init, against the ReLU inputs at init, which are kept (probe x units per layer)
- feature movement: feature/delta_rms/<layer>, feature/delta_rel[/<layer>], how far each ReLU's input on the probe
  set moved from init (RMS coordinate change, relative Frobenius change), from the same forward pass (features.py),
  taken in chunks of PROBE_CHUNK samples
- NTK: ntk/rel_drift, ntk/lambda_min, ntk/lambda_max, ntk/trace on the exact empirical NTK of the probe set
  (ntk.py); once, at step 0: ntk/init_gap and ntk/lambda_min_inf (the infinite-width kernel), ntk/label_complexity (K_0)
  and ntk/label_complexity_inf (from K_inf), see label_complexity.py.

NTK scale: for param=paper the empirical kernel grows like m (the theory's step is lr/m), so every
ntk/* value is computed on K / m there (analytic.empirical_scale), which is what gradient descent with
step lr/m sees and what converges to the infinite-width kernel. Other parameterizations use K as is.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from ..parallel.shard_view import plain_view
from . import names
from .analytic import PARAMS as ANALYTIC_PARAMS
from .analytic import empirical_scale, infinite_width_ntk
from .drift import WeightDrift, layer_name
from .features import activation_metrics, init_terms, layer_sums
from .label_complexity import from_full_kernel, from_trace_kernel
from .ntk import block_size_for, empirical_ntk
from .ntk_capture import capture_from_backward, capturing
from .ntk_plan import Reroute, RoutePlan

PROBE_CHUNK = 1024  # probe samples per forward of the activation metrics


def act_layer_name(act_index: int) -> str:
    """The ReLU after `input` is acts.0, after hidden.l it is acts.(l+1): name it by that layer."""
    return "input" if act_index == 0 else f"hidden.{act_index - 1}"


class ActivationPattern:
    """Every ReLU's input (pre-activation) on a set of samples, captured by forward pre-hooks on the nn.ReLU
    modules in one forward pass, keyed by act_layer_name."""

    def __init__(self, model: nn.Module):
        self.relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]

    @contextmanager
    def recording(self, n: int, keep: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Within the block, the first call of each ReLU on a batch of `n` samples records its input (detached, in
        the model's dtype), or `keep` of it, into the dict yielded: so another forward over the same samples (the
        NTK's capture) gives them without one of its own. Calls on other batch sizes are not recorded."""
        out: dict[str, torch.Tensor] = {}
        handles = []
        for i, (_, relu) in enumerate(self.relus):
            def hook(mod, args, i=i):
                h = args[0]
                if h.shape[0] == n and act_layer_name(i) not in out:
                    out[act_layer_name(i)] = h.detach() if keep is None else keep(h.detach())
            handles.append(relu.register_forward_pre_hook(hook))
        try:
            yield out
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def preactivations(self, model: nn.Module, x: torch.Tensor,
                       keep: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """layer -> its pre-activations (detached, in the model's dtype), or `keep` of them, applied as each layer
        runs so that only what it returns is held."""
        with self.recording(x.shape[0], keep) as out:
            model(x)
        return out

    def capture(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The signs (h > 0) only: a bool per coordinate."""
        return self.preactivations(model, x, keep=lambda h: h > 0)


def trial_ntk(model: nn.Module, x: torch.Tensor, parallel=None, params: list | None = None,
              outputs: str = "trace", memory_cap: int | None = None, block_size: int | None = None,
              check: bool = True) -> torch.Tensor:
    """The exact NTK at `x` over `params` (default: every trainable parameter), float64, also when layers are
    tensor-parallel shards (`parallel`: the trial's Parallelism); `outputs` as for empirical_ntk. `memory_cap`:
    bytes for the captures of two tiles of samples (metrics.ntk_memory_mb), or `block_size` samples per block as
    measured before (ntk.block_size_for). Under data parallelism the tiles are
    shared out over the dp replicas, which all call this together (empirical_ntk's `share`)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    chosen = trainable if params is None else params
    tp = parallel is not None and parallel.world.tp > 1
    world = parallel.world if parallel is not None else None
    share = (world.dp_rank, world.dp, lambda t: world.all_reduce_sum(t, "dp")) \
        if world is not None and world.dp > 1 else None
    # Shards give partial Grams (one all-reduce over tp completes them); replicated trainable parameters give
    # the whole Gram on every rank and must not be summed: one pass for each kind.
    passes = [[p for p in chosen if parallel.is_sharded(p)], [p for p in chosen if not parallel.is_sharded(p)]] \
        if tp else [chosen]
    k = None
    try:
        for i, group in enumerate(passes):
            if not group:
                continue
            ids = {id(p) for p in group}
            for p in trainable:
                p.requires_grad_(id(p) in ids)
            part = empirical_ntk(model, x, outputs=outputs, reduce_fn=parallel.reduce_tp if tp and i == 0 else None,
                                 memory_cap=memory_cap, block_size=block_size, share=share, check_independence=check)
            k = part if k is None else k + part
    finally:
        for p in trainable:
            p.requires_grad_(True)
    if k is None:
        raise ValueError("no parameters to take the NTK over")
    return k


class TheoryMetrics:
    """Everything measured against initialisation. Construct it while the model is at its init."""

    def __init__(self, model: nn.Module, rules: dict, seed: int, probe_x: torch.Tensor,
                 probe_targets: torch.Tensor | None, *, param: str, width: int, depth: int, arch: str,
                 bias: bool, train_outer: bool, classes: int, track_ntk: bool, spectral: bool = True,
                 parallel=None, input_only: bool = False, memory_cap: int | None = None,
                 w0_cache_bytes: int | None = None):
        """Must be built before any update (and before a checkpoint is loaded): it records the init state.

        `parallel`: the trial's Parallelism (parallel/parallelize.py) when layers are tensor-parallel shards;
        every metric is then computed from local parts completed by one all-reduce over tp.
        """
        self.model, self.probe_x, self.parallel = model, probe_x, parallel
        sharded = parallel is not None and parallel.world.tp > 1
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.drift = WeightDrift(trained, rules, seed, view_of=parallel.view_of if sharded else plain_view,
                                 reduce=parallel.reduce if sharded else None, spectral=spectral,
                                 cache_bytes=w0_cache_bytes)
        self.sharded_acts = parallel.sharded_activations() if sharded else set()
        self.trained_layers = {layer_name(n) for n in trained}  # the aggregate flip counts only these
        self.acts = ActivationPattern(model)
        # h_l(0) on the probe set (probe x width[x positions] per layer, footprint.py counts it): feature/* and the
        # ReLU flips (its signs) are measured against it
        self.init_pre = self._preactivations()
        self.init_terms: dict[tuple, tuple] = {}  # (layer, chunk start, samples) -> features.init_terms

        self.track_ntk = track_ntk
        # The probe kernel's block size under metrics.ntk_memory_mb, measured once: every row takes the same samples
        self.block = block_size_for(model, probe_x, memory_cap) if track_ntk and memory_cap else None
        self.checked = False  # whether the probe kernel checked once that samples do not interact (ntk.py)
        # this row's (NTK capture or None, ReLU inputs) of the probe set, from the training step's forward (watching)
        self.taken: tuple | None = None
        self.scale = empirical_scale(param, width) if param in ANALYTIC_PARAMS else 1.0
        self.init_gap = None
        # Once per trial, at step 0 and in the summary: label complexity from K_0 and K_inf (label_complexity.py),
        # lambda_min of K_inf.
        self.once: dict[str, float] = {}
        # Eigenvalues of the probe kernel, ascending: at init, at the last measured step, and of K_inf where known
        # (rundir.SPECTRUM_FILE, for the single-trial report)
        self.spectrum: dict[str, list[float] | None] = {"init": None, "end": None, "infinite": None}
        if track_ntk:
            self.k0 = self._ntk(model)
            self.spectrum["init"] = torch.linalg.eigvalsh(self.k0).tolist()
            if probe_targets is not None:
                theta0 = trial_ntk(model, probe_x, parallel, outputs="full", memory_cap=memory_cap) * self.scale
                self.once[names.NTK_LABEL_COMPLEXITY] = from_full_kernel(theta0, probe_targets)
            if arch == "fc" and param in ANALYTIC_PARAMS and not (bias and param == "paper"):
                k_inf = infinite_width_ntk(probe_x.flatten(1), depth, param, train_outer=train_outer,
                                           input_only=input_only, bias=bias, classes=classes).to(self.k0.device)
                self.init_gap = float((self.k0 - k_inf).norm() / k_inf.norm())
                self.spectrum["infinite"] = torch.linalg.eigvalsh(k_inf).tolist()
                self.once[names.NTK_LAMBDA_MIN_INF] = self.spectrum["infinite"][0]
                if probe_targets is not None:
                    self.once[names.NTK_LABEL_COMPLEXITY_INF] = from_trace_kernel(k_inf, probe_targets)

    def _ntk(self, model: nn.Module, captured: tuple | None = None) -> torch.Tensor:
        if captured is not None:  # (plan, capture) of the probe set from a training step's forward (watching)
            return empirical_ntk(model, self.probe_x, captured=captured) * self.scale
        k = trial_ntk(model, self.probe_x, self.parallel, block_size=self.block, check=not self.checked)
        self.checked = True
        return k * self.scale

    def can_watch(self, x: torch.Tensor) -> bool:
        """Whether a forward over `x` (a training step's) can give a row's probe captures: `x` is the probe set, in
        one process, and the kernel takes it in one block."""
        return (self.parallel is None or self.parallel.world.size == 1) \
            and (not self.track_ntk or self.block is None or self.block >= x.shape[0]) \
            and x.shape == self.probe_x.shape and bool(torch.equal(x, self.probe_x))

    @contextmanager
    def watching(self, n: int, first: bool = False):
        """Around a forward over the probe set (can_watch): what the probe's own forwards would record (the ReLUs'
        inputs; with the NTK, each layer's inputs and a zero added to each output); `take` then reads it. The
        `first` row's kernel takes its own capture, as K_0 was taken: ntk/rel_drift is then exactly 0 at theta_0,
        not the rounding between the two ways (~1e-8 in float32)."""
        plan = RoutePlan(self.model) if self.track_ntk and not first else None
        with (capturing(self.model, plan, n) if plan is not None else nullcontext()) as rec, \
                self.acts.recording(n) as pre:
            yield
        self.watched = (plan, rec, pre)

    def take(self, f: torch.Tensor) -> None:
        """The probe captures from the watched forward's output `f`. The kernel's signals come from the training
        backward that follows, which must keep its graph (`keeps_graph`): `compute` then runs C - 1 backwards of its
        own, not C (ntk_capture.capture_from_backward). A layer the capture cannot follow, or a row with no usable
        backward, leaves the kernel to its own forward."""
        plan, rec, pre = self.watched
        self.watched = None
        captured = None
        if plan is not None and f.requires_grad:
            f.retain_grad()
            captured = (plan, rec, f)
        self.taken = (captured, pre)

    def keeps_graph(self) -> bool:
        """Whether the training backward must keep its graph: a taken capture of several outputs backprops again."""
        captured = self.taken[0] if self.taken is not None else None  # (plan, rec, f)
        return captured is not None and captured[2].numel() > captured[1].n  # C > 1

    def compute(self, first: bool, final: bool = False) -> dict[str, float]:
        out = self.drift.compute(precise=final)
        captured, pre = self.taken if self.taken is not None else (None, {})
        self.taken = None
        if self.track_ntk:
            if captured is not None and (cap := self._from_backward(*captured)) is not None:
                out.update(self._ntk_metrics(cap))  # the training step's forward and backward were the capture's
            else:
                captured = None  # its graph (a stopping row has no backward to free it) goes before the own capture
                # The NTK's capture is a forward over the probe set: the ReLUs' inputs are recorded from it (its
                # layer outputs carry an added exact zero, so they are the plain forward's values)
                with self.acts.recording(self.probe_x.shape[0]) as pre:
                    out.update(self._ntk_metrics())
            if first and self.init_gap is not None:
                out[names.NTK_INIT_GAP] = self.init_gap
            if first:
                out.update(self.once)
        out.update(self._activation_metrics(pre if len(pre) == len(self.init_pre) else None))
        return out

    def _preactivations(self) -> dict[str, torch.Tensor]:
        """The probe set's pre-activations, by chunks of PROBE_CHUNK samples (one forward's memory stays bounded)."""
        parts = [self.acts.preactivations(self.model, x) for x in self.probe_x.split(PROBE_CHUNK)]
        return {layer: torch.cat([p[layer] for p in parts]) if len(parts) > 1 else parts[0][layer]
                for layer in parts[0]}

    def _activation_metrics(self, pre: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """drift/act_flip* and feature/* from the probe set's pre-activations `pre`, or from a forward over it in
        chunks of PROBE_CHUNK samples, whose sums add up (features.layer_sums)."""
        chunks = [(0, pre)] if pre is not None else (  # a generator: one chunk's pre-activations held at a time
            (s, self.acts.preactivations(self.model, x))
            for s, x in zip(range(0, self.probe_x.shape[0], PROBE_CHUNK), self.probe_x.split(PROBE_CHUNK)))
        sums: dict[str, torch.Tensor] = {}
        for start, part in chunks:
            for layer, h in part.items():
                init = self.init_pre[layer][start:start + h.shape[0]]
                key = (layer, start, h.shape[0])
                if key not in self.init_terms:  # h(0)'s terms, once per trial
                    self.init_terms[key] = init_terms(init)
                add = layer_sums(init, h, self.init_terms[key])
                sums[layer] = add if layer not in sums else sums[layer] + add
        return activation_metrics(sums, self.trained_layers, self.sharded_acts,
                                  self.parallel.reduce_tp if self.sharded_acts else None)

    def _from_backward(self, plan: RoutePlan, rec, f: torch.Tensor) -> tuple | None:
        """(plan, capture) of the probe set from this step's training backward (take), or None."""
        try:
            cap = capture_from_backward(rec, f)
        except Reroute:
            return None
        return (plan, cap) if cap is not None else None

    def _ntk_metrics(self, captured: tuple | None = None) -> dict[str, float]:
        """ntk/* of the probe kernel from `captured` (a training step's), else from its own capture."""
        k = self._ntk(self.model, captured)
        evals = torch.linalg.eigvalsh(k)  # the eigenvectors went with the per-row label complexity
        self.spectrum["end"] = evals.tolist()
        out = {
            names.NTK_REL_DRIFT: float((k - self.k0).norm() / self.k0.norm()),
            names.NTK_LAMBDA_MIN: float(evals[0]),
            names.NTK_LAMBDA_MAX: float(evals[-1]),
            names.NTK_TRACE: float(evals.sum()),
        }
        return out

    @torch.no_grad()
    def dead_layers(self, x: torch.Tensor, chunk: int = 1024) -> list[str]:
        """The ReLU layers with no unit active on any sample of `x` (in chunks of samples, so the signs of a large
        training set are never held at once; tensor-parallel shards summed over tp)."""
        active: dict[str, float] = {}
        for part in x.split(chunk):
            for layer, signs in self.acts.capture(self.model, part).items():
                active[layer] = active.get(layer, 0.0) + float(signs.sum())
        dead = []
        for layer, count in active.items():
            total = torch.tensor([count], dtype=torch.float64, device=x.device)
            if layer in self.sharded_acts:
                self.parallel.reduce_tp(total)
            if float(total[0]) == 0:
                dead.append(layer)
        return dead

    def state(self) -> dict:
        return {"spectral": self.drift.state()}

    def load(self, state: dict) -> None:
        self.drift.load(state.get("spectral", {}))

"""One GPU, about 8 minutes: what a wide trial gets from the hardware. Writes JSON (--out) and prints it.

1. peak: a dense square matmul per precision (fp32, tf32, bf16), timed in this run: the roofline the MFU uses.
2. mfu: one training step of the FC net (width 16384, depth 4, param=ntk so every layer trains, batch 4096)
   under each `train.precision`; model FLOPs = 6 x batch x parameters (forward 2, backward 4), divided by the
   step time and by that precision's measured peak.
3. ntk: the exact empirical NTK Gram (metrics/tracker.trial_ntk, what every logged row computes) at width 32768,
   depth 1, n = 256: seconds and peak memory.
4. widest: doubling the width of a depth-2 FC net from 4096, the widest that runs two training steps at dp=1
   before the device runs out of memory (or --max-width).
5. whole_set_ntk: the NTK of a whole training set (metrics.ntk_probe=all), n = 16384 at width 1024, depth 3, in
   tiles under a 2 GB cap (metrics.ntk_memory_mb): seconds and peak memory, against the untiled kernel on n = 512.
6. metrics_overhead: bench/train_overhead.py's ratio on the device: run_trial with all theory metrics every 10
   steps, and every step, against metrics off (width 1024, depth 3, n = 64, 200 steps).
7. seed_batch: a cell of 5 seeds as one batched model against 5 run_trial calls, in-process, at widths 64, 256
   and 1024 (bench/seed_batch.py's second comparison).

`--smoke` runs every part at CPU sizes in seconds (tests/test_gpu_check.py): the same code, tiny numbers.
Run: .venv/bin/python bench/gpu_check.py [--smoke] [--out gpu_check.json]
"""

import argparse
import json
import time

import torch

from overparam_dist import precision
from overparam_dist.config import load_config
from overparam_dist.data import build_dataset
from overparam_dist.metrics.tracker import trial_ntk
from overparam_dist.models import build_model

PRECISIONS = ("fp32", "tf32", "bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> float:
    """Seconds per call, best of `repeat` after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peak(size: int, prec: str, device: torch.device) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)

    def mm():
        with precision.training_step(prec, device):
            a @ b
    return 2 * size ** 3 / timed(mm, device, 5)


def model_for(width: int, depth: int, batch: int, device: torch.device):
    cfg = load_config(None, [f"model.width={width}", f"model.depth={depth}", "model.param=ntk",
                             "data.target=regression", f"data.n={batch}", "data.dim=64"])
    ds = build_dataset(cfg)
    model, _ = build_model(cfg, ds.input_shape, ds.num_outputs, device=device)
    return model, ds.x.to(device), ds.y.to(device)


def train_step_time(model, x, y, prec: str, device: torch.device) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        with precision.training_step(prec, device):
            out = model(x)
        loss = 0.5 * (out.float() - y).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        with precision.backward_step(prec):
            loss.backward()
        opt.step()
    return timed(step, device, 3)


def widest(start: int, limit: int, device: torch.device) -> dict:
    ok, width = None, start
    while width <= limit:
        try:
            model, x, y = model_for(width, 2, 256, device)
            train_step_time(model, x, y, "fp32", device)
            ok = width
            del model, x, y
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        width *= 2
    return {"widest_width": ok, "tried_up_to": min(width, limit), "depth": 2, "batch": 256}


def whole_set_ntk(n: int, width: int, device: torch.device) -> dict:
    """Seconds and peak memory of the tiled NTK of n samples, and its agreement with one untiled block on the first
    512 (float64: the same Grams in another order)."""
    model, x, _ = model_for(width, 3, n, device)
    model, x = model.double(), x.double()
    cap = 2 * 2**30 if device.type == "cuda" else 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    with precision.exact():
        k = trial_ntk(model, x, memory_cap=cap)
    sync(device)
    seconds = time.perf_counter() - t0
    m = min(n, 512)
    with precision.exact():
        ref = trial_ntk(model, x[:m])
    err = float((k[:m, :m] - ref).norm() / ref.norm())
    return {"n": n, "width": width, "depth": 3, "seconds": seconds, "memory_cap": cap, "rel_err_vs_untiled": err,
            "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def metrics_overhead(width: int, steps: int, device: torch.device) -> dict:
    """run_trial's wall time in the loop with all theory metrics every 10 steps and every step, over metrics off."""
    import tempfile

    from overparam_dist.train import run_trial

    def loop_s(extra: list[str]) -> float:
        with tempfile.TemporaryDirectory() as d:
            cfg = load_config(None, [f"model.width={width}", "model.depth=3", "data.target=regression",
                                     f"train.steps={steps}", "train.stop_at_fit=false", "checkpoint.every=0",
                                     "wandb.mode=disabled", "run.quiet=true", "train.lr=8", f"run.dir={d}",
                                     f"train.device={device.type}", *extra])
            return run_trial(cfg)["wall_s"]

    off = min(loop_s(["metrics.every=0", "metrics.ntk=false", "metrics.spectral=false"]) for _ in range(2))
    out = {"width": width, "steps": steps, "off_s": off}
    for every in (10, 1):
        out[f"every_{every}_ratio"] = off / min(loop_s([f"metrics.every={every}"]) for _ in range(2))
    return out


def seed_batch(widths: list[int], steps: int, seeds: int, device: torch.device) -> dict:
    """A cell of `seeds` seeds trained as one batched model against the same seeds by run_trial one after the other,
    in this process, on the device: bench/seed_batch.py's in-process comparison."""
    import tempfile
    from pathlib import Path

    from seed_batch import in_process  # bench/ is this script's directory

    out = {}
    for width in widths:
        with tempfile.TemporaryDirectory() as d:
            alone, batched = in_process(Path(d), width, list(range(seeds)), steps, device.type)
        out[str(width)] = {"alone_s": alone, "batched_s": batched, "ratio": alone / batched}
    return {"seeds": seeds, "steps": steps, "by_width": out}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true", help="CPU sizes: every part in seconds")
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--max-width", type=int, default=None, help="stop the widest-width search here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    big = not args.smoke
    mm_size, width, batch = (8192, 16384, 4096) if big else (256, 256, 64)
    ntk_width, ntk_n = (32768, 256) if big else (512, 16)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "smoke": args.smoke}

    out["peak_flops"] = {prec: peak(mm_size, prec, device) for prec in PRECISIONS}
    model, x, y = model_for(width, 4, batch, device)
    params = sum(q.numel() for q in model.parameters())
    flops = 6 * batch * params
    out["mfu"] = {}
    for prec in PRECISIONS:
        s = train_step_time(model, x, y, prec, device)
        out["mfu"][prec] = {"step_s": s, "flops_per_s": flops / s, "mfu": flops / s / out["peak_flops"][prec]}
    out["mfu_model"] = {"width": width, "depth": 4, "batch": batch, "params": params}
    del model, x, y

    model, x, _ = model_for(ntk_width, 1, ntk_n, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    with precision.exact():
        k = trial_ntk(model, x)
    sync(device)
    out["ntk"] = {"width": ntk_width, "depth": 1, "n": ntk_n, "seconds": time.perf_counter() - t0,
                  "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                  "finite": bool(torch.isfinite(k).all())}
    del model, x, k

    out["whole_set_ntk"] = whole_set_ntk(16384 if big else 64, 1024 if big else 64, device)
    out["metrics_overhead"] = metrics_overhead(1024 if big else 64, 200 if big else 20, device)
    out["seed_batch"] = seed_batch([64, 256, 1024] if big else [16], 200 if big else 5, 5 if big else 3, device)
    out["widest"] = widest(4096 if big else 64, args.max_width or (2 ** 20 if big else 512), device)
    text = json.dumps(out, indent=1)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

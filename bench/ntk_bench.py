"""Benchmark: layer-wise empirical_ntk vs the two torch.func NTKs of the PyTorch "Neural Tangent Kernels"
tutorial (Jacobian contraction; NTK-vector products), on a 3-weight-matrix FC net, float32, trace NTK.

    .venv/bin/python bench/ntk_bench.py                     # widths 512 2048 8192, n=64, d=32, C=10
    .venv/bin/python bench/ntk_bench.py --quick             # widths 128 512, a smoke run
    .venv/bin/python bench/ntk_bench.py --widths 1024 --classes 1
    .venv/bin/python bench/ntk_bench.py --whole-set         # the NTK of a whole training set (metrics.ntk_probe=all):
                                                            # n = 256 ... 16384, width 1024, depth 3, C = 1, tiled
                                                            # under --memory-mb, all threads

Model: our FC with param=ntk, depth=1 -> A (d x m), W_1 (m x m), B (m x C), all three trained, no bias.
Every (method, width) runs in a fresh subprocess so that time and memory of one cannot leak into another.

Memory method: in the child, after building the model and inputs and warming the method up on a width-16
copy (one-time library allocations), we malloc_trim, reset the kernel's peak-RSS counter
(`echo 5 > /proc/self/clear_refs`) and read VmRSS as the baseline; after the first call VmHWM (peak RSS) minus
that baseline is the method's peak memory beyond the model's own parameters and inputs (children run with
a fixed glibc mmap threshold so freed blocks leave RSS). The child also gets
an address-space limit, so a method that would blow up fails cleanly instead of waking the OOM killer.
Time: median wall time over --repeats calls (one call if the first takes > 20 s), with --threads torch
threads (default 1: on a shared, loaded box OpenMP spin-waiting makes multi-threaded timings of the small ops
erratic - 10 ms became 500 ms; use --threads 0 for all cores on a quiet machine).
A method is skipped at a width when its estimated peak (dominated by the (n, C, P) per-sample Jacobian both
torch.func methods hold) exceeds --mem-limit-gb.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ours", "jac", "ntkvp")
# Fixed glibc mmap threshold: every allocation above 128 KiB is its own mapping, returned to the OS when
# freed, so RSS follows live memory (the default dynamic threshold parks freed blocks of up to 32 MiB on the
# heap, which made peaks depend on allocation history).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
LABELS = {"ours": "empirical_ntk (layer-wise)", "jac": "torch.func Jacobian contraction",
          "ntkvp": "torch.func NTK-vector products"}


def n_params(d: int, width: int, classes: int, depth: int = 1) -> int:
    return d * width + depth * width * width + width * classes


def estimate_bytes(method: str, n: int, d: int, width: int, classes: int, depth: int = 1, tiled: bool = False) -> float:
    """Rough peak beyond the parameters, float32 (checked against measured peaks at widths 128 and 512).

    jac: the per-sample Jacobian (n, C, P), held once (+20% for vmap temporaries; measured ~1.0x).
    ntkvp: the tutorial's vmap(vmap(get_ntk)) over (x1, x2) pushes a parameter-sized tangent per (i, j, c)
    through the jvp: n * n * C * P floats (measured ~0.8x at width 128)."""
    P = n_params(d, width, classes, depth)
    if method == "ours":  # inputs + C backprop signals per layer, plus the autograd graph; tiled: the n x n result
        return 8.0 * n * n + (0 if tiled else 4.0 * n * width * (classes + 4) * (depth + 2))
    if method == "jac":
        return 1.2 * 4.0 * n * classes * P
    return 4.0 * n * n * classes * P


# --------------------------------------------------------------------------------------------------
# Child: one method at one width.

def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def child(args: argparse.Namespace) -> None:
    import torch
    from torch.func import functional_call, jacrev, jvp, vjp, vmap

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from overparam_dist.config import load_config
    from overparam_dist.metrics.ntk import empirical_ntk
    from overparam_dist.models import build_model

    def make(width: int):
        cfg = load_config(None, ["model.arch=fc", "model.param=ntk", f"model.depth={args.depth}",
                                 f"model.width={width}", "model.bias=false", f"data.dim={args.d}",
                                 f"data.classes={max(args.classes, 2)}"])
        model, _ = build_model(cfg, (args.d,), args.classes, dtype=torch.float32)
        assert all(p.requires_grad for p in model.parameters())
        return model

    # The tutorial's two methods, as written there (x1 = x2 = x), trace NTK.
    def tutorial(model, method):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def fnet_single(params, x):
            return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

        def jac_contraction(x):
            # The tutorial computes J(x1) and J(x2) separately; x1 = x2 here, so once (fairer to it).
            jac = vmap(jacrev(fnet_single), (None, 0))(params, x)
            jac = [j.flatten(2) for j in jac.values()]
            return torch.stack([torch.einsum("Naf,Maf->NM", j, j) for j in jac]).sum(0)

        def ntk_vps(x):
            def get_ntk(x1, x2):
                output, vjp_fn = vjp(lambda p: fnet_single(p, x1), params)

                def get_ntk_slice(vec):
                    vjps = vjp_fn(vec)
                    return jvp(lambda p: fnet_single(p, x2), (params,), vjps)[1]

                basis = torch.eye(output.numel(), dtype=output.dtype).view(output.numel(), -1)
                return vmap(get_ntk_slice)(basis)

            return torch.einsum("NMKK->NM", vmap(vmap(get_ntk, (None, 0)), (0, None))(x, x))

        return jac_contraction if method == "jac" else ntk_vps

    def fn_for(model):
        if args.method == "ours":
            cap = args.memory_mb * 2**20 if args.memory_mb else None
            return lambda x: empirical_ntk(model, x, outputs="trace", memory_cap=cap)
        return tutorial(model, args.method)

    torch.manual_seed(0)
    x = torch.randn(args.n, args.d)
    fn_for(make(16))(x)  # warm-up: one-time allocations of the libraries, not the method's memory
    model = make(args.width)
    fn = fn_for(model)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    K = fn(x)
    times = [time.perf_counter() - t0]
    peak = _rss_kb("VmHWM") - base
    while len(times) < args.repeats and times[0] < 20.0:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    out = {"time_s": statistics.median(times), "times": times, "peak_mb": peak / 1024,
           "param_mb": sum(p.numel() for p in model.parameters()) * 4 / 2**20,
           "trace": float(K.double().trace()), "K": K.double().flatten()[:: max(1, K.numel() // 64)].tolist()}
    print("RESULT " + json.dumps(out))


# --------------------------------------------------------------------------------------------------
# Parent: the table.

def run_one(args, method: str, width: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--width", str(width), "--n", str(args.n),
           "--d", str(args.d), "--classes", str(args.classes), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--depth", str(args.depth), "--memory-mb", str(args.memory_mb)]
    limit = int((args.mem_limit_gb + 4) * 2**30)  # address space: the budget + room for libraries

    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, preexec_fn=preexec, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **MALLOC_ENV})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {"error": tail[:120]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (0 = torch default)")
    ap.add_argument("--mem-limit-gb", type=float, default=16.0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--quick", action="store_true", help="widths 128 512, one repeat")
    ap.add_argument("--depth", type=int, default=1, help="hidden m x m layers")
    ap.add_argument("--memory-mb", type=int, default=0, help="ours: the tiles' memory cap (0 = 512-sample blocks)")
    ap.add_argument("--whole-set", action="store_true",
                    help="n = 256 2048 8192 16384 at width 1024, depth 3, C = 1, ours tiled under 256 MB, all threads")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.method = args.child
        return child(args)
    if args.quick:
        args.widths, args.repeats = [128, 512], 1
    if args.whole_set:
        return whole_set(args)

    print(f"n={args.n} d={args.d} C={args.classes} float32, trace NTK, FC param=ntk (3 trained weight "
          f"matrices), {args.threads or os.cpu_count()} thread(s), {os.cpu_count()} CPUs, "
          f"loadavg {os.getloadavg()[0]:.1f}")
    print("  " + "; ".join(f"{m} = {LABELS[m]}" for m in args.methods))
    res: dict = {}
    for width in args.widths:
        for method in args.methods:
            est = estimate_bytes(method, args.n, args.d, width, args.classes)
            if est > args.mem_limit_gb * 2**30:
                res[method, width] = {"skip": f"est. {est / 2**30:.0f} GB > {args.mem_limit_gb:g} GB"}
            else:
                res[method, width] = run_one(args, method, width)
            r = res[method, width]
            print(f"  width {width:5d} {method:6s} -> " + (
                f"{r['time_s']:.3f} s, peak {r['peak_mb']:.0f} MB" if "time_s" in r else
                r.get("skip") or "error: " + r["error"]), flush=True)

    print(f"\n{'width':>6} {'params MB':>9} | "
          + " | ".join(f"{m + ' s':>9} {m + ' MB':>9}" for m in args.methods) + " | speed-up vs "
          + ", ".join(m for m in args.methods if m != "ours") + " | max rel diff")
    for width in args.widths:
        cells, ref = [], res.get(("ours", width), {})
        pm = next((res[m, width]["param_mb"] for m in args.methods if "param_mb" in res[m, width]), 0)
        for m in args.methods:
            r = res[m, width]
            if "time_s" in r:
                cells.append(f"{r['time_s']:9.3f} {r['peak_mb']:9.0f}")
            else:
                cells.append(f"{'skip' if 'skip' in r else 'err':>19}")
        ups, diffs = [], []
        for m in args.methods:
            r = res[m, width]
            if m == "ours":
                continue
            if "time_s" in r and "time_s" in ref:
                ups.append(f"{r['time_s'] / ref['time_s']:.0f}x")
                diffs.append(max(abs(a - b) / (abs(b) + 1e-30) for a, b in zip(ref["K"], r["K"])))
            else:
                ups.append("-")
        diff = f"{max(diffs):.1e}" if diffs else "-"
        print(f"{width:6d} {pm:9.0f} | " + " | ".join(cells) + " | " + ", ".join(ups) + f" | {diff}")
    ours = [(w, res["ours", w]) for w in args.widths if "peak_mb" in res.get(("ours", w), {})]
    for (w1, r1), (w2, r2) in itertools.pairwise(ours):
        ratio = r2["peak_mb"] / max(r1["peak_mb"], 1e-9)
        print(f"ours: peak memory beyond parameters x{ratio:.1f} from width "
              f"{w1} to {w2} (width x{w2 / w1:g}; parameters x{r2['param_mb'] / r1['param_mb']:.1f})")
    for key, r in res.items():
        if "skip" in r:
            print(f"skipped {key[0]} at width {key[1]}: {r['skip']}")


def whole_set(args: argparse.Namespace) -> None:
    """The NTK of a whole training set: time and peak memory against n, and torch.func's Jacobian contraction
    where its per-sample Jacobian fits under --mem-limit-gb."""
    args.width, args.depth, args.classes, args.threads, args.repeats = 1024, 3, 1, 0, 1
    args.memory_mb = args.memory_mb or 256
    print(f"whole-set NTK: width {args.width}, depth {args.depth} ({n_params(args.d, args.width, 1, 3) / 1e6:.1f}M "
          f"parameters), d={args.d}, C=1, float32, ours tiled under {args.memory_mb} MB, {os.cpu_count()} CPUs, "
          f"loadavg {os.getloadavg()[0]:.1f}")
    for n in (256, 2048, 8192, 16384):
        args.n = n
        row = {}
        for method in ("ours", "jac"):
            est = estimate_bytes(method, n, args.d, args.width, 1, args.depth, tiled=True)
            row[method] = {"skip": f"needs about {est / 2**30:.0f} GB"} if est > args.mem_limit_gb * 2**30 else \
                run_one(args, method, args.width)
        ours, jac = row["ours"], row["jac"]
        cells = [f"ours {ours['time_s']:8.2f} s, peak {ours['peak_mb']:7.0f} MB (the n x n float64 result alone "
                 f"{8 * n * n / 2**20:.0f} MB)" if "time_s" in ours else f"ours {ours.get('skip') or ours['error']}"]
        if "time_s" in jac:
            diff = max(abs(a - b) / (abs(b) + 1e-30) for a, b in zip(ours.get("K", []), jac["K"]))
            cells.append(f"torch.func {jac['time_s']:8.2f} s, peak {jac['peak_mb']:7.0f} MB "
                         f"({jac['time_s'] / ours['time_s']:.1f}x ours' time; max rel diff {diff:.1e})")
        else:
            cells.append(f"torch.func skipped: {jac.get('skip') or jac['error']}")
        print(f"  n {n:6d}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()


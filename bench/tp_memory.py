"""Peak parameter + gradient memory per rank, and time per step, of a tensor-parallel FC net.

FC width 8192, depth 2 (two 8192 x 8192 hidden layers, A and B trained too: param=ntk), n=64, full batch,
float32, gloo on CPU. For tp = 1, 2, 4 it starts tp local processes, trains a few steps through the
same Parallelism code run_trial uses, and reports per rank: bytes of parameters + gradients after a
backward pass (what tensor parallelism shards), and seconds per step. Targets: memory ratio against
tp=1 <= 0.55 at tp=2 and <= 0.30 at tp=4. Run: .venv/bin/python bench/tp_memory.py [--width 8192]
"""

import argparse
import os
import time

import torch


def worker(width: int, depth: int, steps: int) -> dict:
    import torch.nn.functional as F

    from overparam_dist.config import load_config
    from overparam_dist.data import build_dataset
    from overparam_dist.models import build_model
    from overparam_dist.parallel import distributed
    from overparam_dist.parallel.parallelize import Parallelism

    tp = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp))
    cfg = load_config(None, [f"model.width={width}", f"model.depth={depth}", "model.param=ntk",
                             "data.target=regression", f"parallel.tp={tp}"])
    world = distributed.setup(cfg)
    par = Parallelism(world, "fc", depth)
    ds = build_dataset(cfg)
    model, _ = build_model(cfg, ds.input_shape, ds.num_outputs, shard=par.shard)
    net = par.wrap(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for _ in range(steps + 1):
        world.barrier()
        t0 = time.perf_counter()
        loss = 0.5 * F.mse_loss(net(ds.x), ds.y, reduction="sum") / len(ds)
        opt.zero_grad()
        loss.backward()
        opt.step()
        world.barrier()
        times.append(time.perf_counter() - t0)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    world.close()
    return {"bytes": param_bytes + grad_bytes, "step_s": sum(times[1:]) / steps, "loss": float(loss.detach())}


def run(tp: int, width: int, depth: int, steps: int) -> dict:
    if tp == 1:
        return {0: worker(width, depth, steps)}
    from launcher.local import spawn_local

    return spawn_local(tp, worker, width, depth, steps)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=8192)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    print(f"FC width {args.width}, depth {args.depth}, n=64 full batch, float32, gloo on CPU "
          f"({os.cpu_count()} cores shared by all ranks)")
    base = None
    for tp in (1, 2, 4):
        res = run(tp, args.width, args.depth, args.steps)
        peak = max(r["bytes"] for r in res.values())
        step = max(r["step_s"] for r in res.values())
        base = base or (peak, step)
        print(f"tp={tp}: param+grad per rank {peak / 2**20:8.1f} MiB (ratio {peak / base[0]:.3f}), "
              f"{step:.3f} s/step (ratio {step / base[1]:.2f}), loss after {args.steps + 1} steps "
              f"{res[0]['loss']:.6f}")

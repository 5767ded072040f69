"""Issue 14, item 6: bench/gpu_check.py runs end to end (its CPU smoke sizes) and writes the JSON the README's GPU
numbers come from. CUDA itself cannot run here; the same code runs there at full size."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    got = json.loads(out.read_text())
    assert got["smoke"] is True and got["device"] == "cpu"
    assert set(got["peak_flops"]) == set(got["mfu"]) == {"fp32", "tf32", "bf16"}
    assert all(v > 0 for v in got["peak_flops"].values())
    for prec, m in got["mfu"].items():
        assert m["step_s"] > 0 and m["mfu"] == m["flops_per_s"] / got["peak_flops"][prec], prec
    model = got["mfu_model"]  # FLOPs = 6 x batch x parameters of the width-256, depth-4 net
    assert model["params"] == 64 * 256 + 4 * 256 * 256 + 256 * 2
    assert abs(got["mfu"]["fp32"]["flops_per_s"] * got["mfu"]["fp32"]["step_s"] - 6 * 64 * model["params"]) < 1
    assert got["ntk"]["finite"] and got["ntk"]["seconds"] > 0
    assert got["whole_set_ntk"]["n"] == 64 and got["whole_set_ntk"]["rel_err_vs_untiled"] < 1e-12
    # ratios of wall times at smoke sizes: their order is the machine's load's to decide, not a property of the code
    assert all(0 < got["metrics_overhead"][f"every_{k}_ratio"] < 10 for k in (1, 10))
    assert got["seed_batch"]["seeds"] == 3 and list(got["seed_batch"]["by_width"]) == ["16"]
    assert all(v["ratio"] == v["alone_s"] / v["batched_s"] > 0 for v in got["seed_batch"]["by_width"].values())
    assert got["widest"]["widest_width"] == 512  # the smoke search stops at 512, and every width fits on CPU

"""Take docs/dashboard_actors.png: the Ray dashboard's Actors page, in headless Chromium, while a small sweep runs on
the private Ray of `overparam sweep`. Needs Debian's chromium (`apt-get install chromium`). About a minute.

    .venv/bin/python docs/dashboard_screenshot.py
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "dashboard_actors.png"
SPEC = {"name": "dashboard", "grid": {"model.width": [32, 64], "seed": [0, 1]}, "resources": {"cpus": 1},
        "reuse_actors": False,  # one named actor per trial, as on a cluster (auto reuses them on this private Ray)
        "overrides": {"data.n": 16, "train.steps": 3000, "train.stop_at_fit": False, "metrics.every": 100,
                      "checkpoint.every": 0, "wandb.mode": "disabled"}}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "dashboard.yaml"
        spec.write_text(yaml.safe_dump(SPEC))
        log = Path(tmp) / "sweep.log"
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # the page without Ray's token login
        sweep = subprocess.Popen([sys.executable, "-m", "launcher", "sweep", "--config", str(spec), "--runs-dir",
                                  str(Path(tmp) / "runs")], cwd=ROOT, stdout=open(log, "w"),
                                 stderr=subprocess.STDOUT, env=env)
        try:
            url = None
            while url is None or "running 2" not in log.read_text():
                assert sweep.poll() is None, log.read_text()
                found = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", log.read_text())
                url = found.group(1) if found else None
                time.sleep(0.5)
            time.sleep(3)
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={tmp}/chromium", "--window-size=1500,800",
                            "--virtual-time-budget=15000", f"--screenshot={OUT}", f"{url}/#/actors"],
                           check=True, timeout=120, capture_output=True)
        finally:
            sweep.kill()
            sweep.wait()
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

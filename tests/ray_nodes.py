"""A Ray cluster of several nodes on this host, for tests: `python tests/ray_nodes.py STATE_FILE NODES CPUS`.

It starts a head without CPUs and NODES nodes on 127.0.0.1 (ray.cluster_utils.Cluster, each node its own raylet
with CPUS CPUs) and writes {"address", "nodes": [{"id", "raylet_pid"}]} (the head first) to STATE_FILE. Then it
reads stdin: a line "add" removes the nodes whose raylet died and starts one more node (STATE_FILE is
rewritten); end of input stops every process it started (Cluster.shutdown stops only its own, by PID). It runs
in its own process because a driver joins one Ray only, and the test session already drives the shared one
(conftest.ray_address). RayNodes is its client (imported without Ray).
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


class RayNodes:
    """This script in a subprocess (its own session, environment `env`): `address`, `workers()` (the nodes with
    CPUs: {"id", "raylet_pid"}), `add()` a node, `stop()` every process it started."""

    def __init__(self, work: Path, env: dict | None = None, n: int = 2, cpus: int = 2):
        self.state_file, self.err = work / "ray_nodes.json", work / "ray_nodes.err"
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.state_file), str(n), str(cpus)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(self.err, "w"),
                                     text=True, env=env, start_new_session=True)
        self.state = self._read(set())

    def _ids(self) -> set[str]:
        if not self.state_file.is_file():
            return set()
        return {n["id"] for n in json.loads(self.state_file.read_text())["nodes"]}

    def _read(self, known: set[str], timeout: float = 300) -> dict:
        """The state once it names a node not in `known` (the helper's node order is not stable)."""
        deadline = time.time() + timeout
        while not (self._ids() - known):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the Ray nodes did not start: " + self.err.read_text()[-2000:])
            time.sleep(0.2)
        self.state = json.loads(self.state_file.read_text())
        return self.state

    @property
    def address(self) -> str:
        return self.state["address"]

    def workers(self) -> list[dict]:
        return self.state["nodes"][1:]

    def add(self) -> dict:
        known = self._ids()
        self.proc.stdin.write("add\n")
        self.proc.stdin.flush()
        return self._read(known)

    def stop(self) -> None:
        """Close its stdin (it stops its own processes, by PID); kill its process group if it does not stop."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _write_state(cluster, path: str) -> None:
    nodes = [{"id": n.node_id, "raylet_pid": n.all_processes["raylet"][0].process.pid}
             for n in [cluster.head_node, *cluster.worker_nodes]]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"address": cluster.address, "nodes": nodes}, f)
    os.replace(tmp, path)


def main() -> None:
    # Before Ray is imported: every node listens on 127.0.0.1 only, and a driver reaches it (launcher/sweep/cluster.py)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    state, n_nodes, cpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    node = {"num_cpus": cpus, "node_ip_address": "127.0.0.1"}
    temp_dir = f"/tmp/ortn-{os.getpid()}"  # short: AF_UNIX paths
    # Cluster() writes the head's address to <Ray's temp root>/ray/ray_current_cluster whatever temp_dir says, and
    # the root is /tmp unless RAY_TMPDIR names one: point it here, so nothing depends on a /tmp/ray that an earlier
    # Ray happened to leave, and nothing is left behind.
    os.makedirs(os.path.join(temp_dir, "ray"), exist_ok=True)  # a killed helper leaves its own
    os.environ["RAY_TMPDIR"] = temp_dir
    # A dead node is seen dead after 3 missed 1-s health checks (Ray's default: about 30 s)
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    # The head holds the GCS and no CPUs: every trial process runs on the NODES nodes added to it, any of
    # which a test may kill.
    head = {**node, "num_cpus": 0, "include_dashboard": False, "temp_dir": temp_dir, "_system_config": health}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(n_nodes):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        _write_state(cluster, state)
        for line in sys.stdin:
            if line.strip() == "add":
                dead = [n for n in cluster.worker_nodes if n.all_processes["raylet"][0].process.poll() is not None]
                for n in dead:  # a killed node: forgotten (its processes are dead; remove_node would kill them)
                    cluster.worker_nodes.discard(n)
                cluster.add_node(**node)
                cluster.wait_for_nodes(timeout=240)  # also until the GCS sees the dead node dead
                _write_state(cluster, state)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

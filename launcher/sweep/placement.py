"""Where a multi-process trial's processes go on a Ray cluster, keeping every tensor-parallel group inside a node.

A tp group all-reduces every layer; split across nodes it would go over the network instead of NVLink. So:
- a trial that fits one node takes one placement-group bundle (a bundle never spans nodes) and runs as local
  processes (local_trial.py);
- a trial that spans nodes runs as a Ray Train worker group whose workers are pinned, tp at a time, to chosen
  nodes by the `ray.io/node-id` label. Train orders ranks node by node, so ranks k*tp .. k*tp+tp-1 (one tp
  group, parallel/distributed.py's mesh) share a node; each rank's node is then recorded in derived.world.nodes.
Nodes are told apart by Ray node id: two Ray nodes may share a host.
"""

from __future__ import annotations

import math
from pathlib import Path

from overparam_dist.config import ConfigError

TRAINABLE_CPU = 0.01  # the Tune trainable of a worker-group trial only waits for fit(); Ray refuses a zero bundle


def worker_resources(cpus: float, gpus: float) -> dict[str, float]:
    """Per Train worker: `cpus` less the trainable's share, so the trainable fits beside any k >= 1 workers on a
    node (k x (cpus - 0.01) + 0.01 <= k x cpus) and a trial never asks for more than it was given."""
    per = {"CPU": max(cpus - TRAINABLE_CPU, cpus / 2)}
    if gpus:
        per["GPU"] = gpus
    return per


def _alive_nodes() -> list[tuple[str, dict]]:
    """(node id, total resources) of the cluster's alive nodes, in node-id order (deterministic placement)."""
    import ray

    return sorted((n["NodeID"], n.get("Resources", {})) for n in ray.nodes() if n.get("Alive"))


def fits_one_node(cpus: float, gpus: float) -> bool:
    """Whether some alive node has `cpus` CPUs and `gpus` GPUs in total."""
    return any(res.get("CPU", 0.0) + 1e-9 >= cpus and res.get("GPU", 0.0) + 1e-9 >= gpus
               for _, res in _alive_nodes())


def _groups_on(res: dict, group: dict[str, float]) -> int:
    """How many tp groups (each needing `group`) a node with total resources `res` holds."""
    return min(math.floor(res.get(k, 0.0) / v + 1e-9) for k, v in group.items() if v > 0)


def check_tp_fits_a_node(trial: str, tp: int, cpus: float, gpus: float) -> None:
    """Before anything starts: a tp group that no node holds would have to span nodes; one line naming what is
    needed and what the largest node has."""
    nodes = _alive_nodes()
    group = {"CPU": tp * cpus, "GPU": tp * gpus}
    if not any(_groups_on(res, group) >= 1 for _, res in nodes):
        most_cpu = max((res.get("CPU", 0.0) for _, res in nodes), default=0.0)
        most_gpu = max((res.get("GPU", 0.0) for _, res in nodes), default=0.0)
        raise ConfigError(
            f"trial {trial}: a tensor-parallel group of parallel.tp={tp} processes needs {tp * cpus:g} CPUs and "
            f"{tp * gpus:g} GPUs on one node, and the largest node has {most_cpu:g} CPUs and {most_gpu:g} GPUs; "
            "lower parallel.tp or resources.cpus / resources.gpus")


def tp_group_nodes(dp: int, tp: int, per_worker: dict[str, float]) -> list[str]:
    """A node id for each of the trial's dp tp-groups, filling the largest nodes first (fewest nodes, so the
    least traffic over the network). Raises one line when the alive nodes cannot hold them all."""
    group = {k: tp * v for k, v in per_worker.items()}
    nodes = sorted(_alive_nodes(), key=lambda n: -_groups_on(n[1], group))
    chosen: list[str] = []
    for node_id, res in nodes:
        chosen += [node_id] * min(_groups_on(res, group), dp - len(chosen))
    if len(chosen) < dp:
        raise RuntimeError(
            f"{dp} tensor-parallel groups of {tp} processes ({group}) each need a node, and the alive nodes hold "
            f"only {len(chosen)}; the trial fails and is retried when nodes are back")
    return chosen


def worker_label_selectors(nodes: list[str], tp: int) -> list[dict[str, str]]:
    """Ray Train's per-worker label selector: tp consecutive workers on each chosen node."""
    return [{"ray.io/node-id": node_id} for node_id in nodes for _ in range(tp)]


def remember_placement_group(path: Path) -> None:
    """In a Train worker: write the worker group's placement group id, for the next attempt to remove it."""
    import ray

    pg = ray.util.get_current_placement_group()
    if pg is not None:
        path.write_text(pg.id.hex() + "\n")


def remove_previous_placement_group(path: Path) -> None:
    """Before a retried trial starts its worker group: remove the previous attempt's placement group.

    Measured: when a lost node also held the trial's Tune actor (and with it the Train controller that created
    the group), Ray keeps the group RESCHEDULING for ever, its bundles on the dead node pinned there by label
    and those on the surviving nodes still reserved; the retry's workers then never fit. Removing a group that
    is already gone does nothing."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    if not path.is_file():
        return
    pg_id = path.read_text().strip()
    if ray.util.placement_group_table().get(pg_id, {}).get("state", "REMOVED") != "REMOVED":
        ray.util.remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg_id)))
    path.unlink(missing_ok=True)

"""A sweep on Ray Tune: the function trainable of one trial, the Train V2 worker group of a multi-process
trial, the searcher that asks the plan for the next trial, the callback that feeds the ledger, and the fit.

A trial needing one process runs `run_trial` in-process in its Tune function trainable (no worker group: one
costs about 24 s to start and stop on 2 cores). A trial with parallel.dp x parallel.tp > 1 processes that fits one
node runs them as local processes inside its Tune trainable (local_trial.py); one that does not builds a Ray Train
V2 `TorchTrainer` inside its Tune trainable, each tp group pinned to one node (placement.py). Every process calls
the same `run_trial`. Either way `run_trial` gets an `on_log` callback that turns each logged row into a Tune
result: the library itself knows no Ray.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

from overparam_dist.config import ConfigError, from_dict, to_dict

from .cluster import RayInfo
from .local_trial import run_local_processes, write_pid
from .placement import (
    TRAINABLE_CPU,
    check_tp_fits_a_node,
    fits_one_node,
    remember_placement_group,
    remove_previous_placement_group,
    tp_group_nodes,
    worker_label_selectors,
    worker_resources,
)
from .plans import FINISHED, Plan
from .preemption import preempt_requested, reclaim_usr1
from .progress import SUMMARY_KEY, Book
from .seed_groups import MEMBER_KEY, member_configs, member_names, run_group
from .spec import Sweep, Trial, trial_demand
from .trial_log import progress_printer, quiet_requested_exits, stop_wandb_service, trial_label

PIDS_DIR = ".workers"  # <trial>.pid: the process that runs run_trial (rank 0), for operators and tests


def _placement(config: dict):
    from ray.tune import PlacementGroupFactory

    res, n = config["resources"], config["workers"]
    if n == 1 or config["local"]:  # the whole trial in one bundle: one node (local_trial.py)
        bundle = {"CPU": res["cpus"] * n}
        if res["gpus"]:
            bundle["GPU"] = res["gpus"] * n
        return PlacementGroupFactory([bundle])
    # The Tune trainable of a worker-group trial only waits for TorchTrainer.fit(); the Train workers
    # (their own placement group) hold the trial's CPUs and GPUs (placement.worker_resources).
    return PlacementGroupFactory([{"CPU": TRAINABLE_CPU}])


def final_result(summary: dict) -> dict:
    """The trial's last Tune result: its numeric summary values plus the whole summary as JSON."""
    out: dict[str, Any] = {k: v for k, v in summary.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "steps"}
    out["step"] = summary.get("steps")
    out["trial_status"] = summary.get("status")
    out[SUMMARY_KEY] = json.dumps(summary)
    return out


def _preempted_already(config: dict) -> bool:
    """The sweep was preempted before this trial started: end it at once, as preempted (nothing written)."""
    flag = config["cfg"].get("run", {}).get("preempt_file")
    return bool(flag) and os.path.exists(flag)


def _name_node() -> None:
    """This process's node for derived.world.nodes and the tp-inside-a-node check (distributed.node_id), inherited
    by local processes: Ray's node id, as two Ray nodes may share a host."""
    import ray

    os.environ["OVERPARAM_NODE"] = "ray-" + ray.get_runtime_context().get_node_id()[:12]


def trainable(config: dict) -> None:
    """The Tune function trainable of one trial."""
    from ray import tune

    _name_node()
    quiet_requested_exits()
    try:
        if _preempted_already(config):
            for name in member_names(config):
                tune.report({**final_result({"status": "preempted", "name": name, "steps": None}), MEMBER_KEY: name})
        elif config["members"]:  # the seeds of a cell as one batched model (seed_groups.py)
            write_pid(config["pid_file"])
            for m, summary in zip(config["members"], run_group(config, tune.report, progress_printer)):
                tune.report({**final_result(summary), MEMBER_KEY: m["trial"]})
        elif config["workers"] == 1:
            from overparam_dist.train import run_trial

            write_pid(config["pid_file"])
            summary = run_trial(from_dict(config["cfg"]), on_log=progress_printer(config, tune.report))
            tune.report(final_result(summary))
        elif config["local"]:
            tune.report(final_result(run_local_processes(config, progress_printer(config, tune.report))))
        else:
            _fit_worker_group(config)
    finally:  # a failed trial too
        stop_wandb_service()
        print(f"[{trial_label(config)}] ended", flush=True)


def _trial_actor():
    """The trainable as an actor class whose repr is the trial: the Ray dashboard's Actors page lists each trial's
    actor by <sweep>/<trial> (not "trainable"), and Ray prefixes its log lines with it. Ray takes an actor's repr
    once, when it is created: so each trial gets its own actor, unless its actors are reused (actors_reused; they
    are then named by the sweep alone, and their logs say which trial each line is from)."""
    from ray.tune.trainable.function_trainable import wrap_function

    class TrialActor(wrap_function(trainable)):
        def __repr__(self) -> str:
            config = getattr(self, "config", {})
            if "trial" not in config:
                return "trainable"
            return f"{config['cfg']['wandb']['group']} trials" if config["reuse_actors"] else trial_label(config)

    return TrialActor


def actors_reused(sweep: Sweep, info: RayInfo) -> bool:
    """Whether an actor runs trial after trial. A new actor is a new process that imports Ray Tune, torch and the
    library again: 7.5 s per one-process trial on 2 cores, against 0.5 s in a reused actor (bench/sweep_overhead.py).
    `reuse_actors: auto` therefore reuses them on the private Ray of a laptop or a single node, where the sweep's
    own terminal table names every trial, and gives each trial its own named actor on a cluster the sweep connects
    to, where trials are long and the dashboard is how they are watched."""
    return info.embedded if sweep.reuse_actors is None else sweep.reuse_actors


def _fit_worker_group(config: dict) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    callback = TuneReportCallback()  # forwards the workers' final ray.train.report (rank 0's) to Tune
    queue = _tune_result_queue()
    res = config["resources"]
    per_worker = worker_resources(res["cpus"], res["gpus"])
    tp = config["cfg"]["parallel"]["tp"]
    remove_previous_placement_group(_placement_group_file(config))
    _wait_for_previous_attempt(config)
    nodes = tp_group_nodes(config["workers"] // tp, tp, per_worker)  # chosen anew at every (Tune) retry
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": config["cfg"], "trial": config["trial"], "pid_file": config["pid_file"],
                           "queue": queue},
        scaling_config=ray.train.ScalingConfig(num_workers=config["workers"], use_gpu=res["gpus"] > 0,
                                               resources_per_worker=per_worker,
                                               label_selector=worker_label_selectors(nodes, tp)),
        run_config=ray.train.RunConfig(
            name=f"{config['trial']}-{secrets.token_hex(3)}", storage_path=config["train_storage"],
            # Train itself never retries, neither a worker failure nor a worker group that cannot be placed
            # within 60 s: its workers are pinned to nodes that may be gone (the GCS sees a node dead only after
            # its health checks fail). Tune retries the whole trial (max_failures): it picks alive nodes again
            # and resumes from the last checkpoint.
            failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=0),
            callbacks=[callback]),
    )
    trainer.fit()


PREVIOUS_ATTEMPT_WAIT_S = 180.0


def _wait_for_previous_attempt(config: dict) -> None:
    """After a lost node, the previous attempt's workers on the surviving nodes live on until Ray reaps them
    (their controller died with the node) and rank 0 still holds the run directory's lock. Wait for it to be
    released, rather than fail the retry at once on RunDirLocked; after PREVIOUS_ATTEMPT_WAIT_S, fail as that."""
    from overparam_dist import rundir
    from overparam_dist.rundir import run_dir

    directory = run_dir(from_dict(config["cfg"]))
    deadline = time.monotonic() + PREVIOUS_ATTEMPT_WAIT_S
    while True:
        try:
            rundir.check_unlocked(directory)
            return
        except rundir.RunDirLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _placement_group_file(config: dict) -> Path:
    return Path(config["pid_file"]).with_suffix(".placement_group")


def _tune_result_queue():
    """The Tune trial's result queue, which TuneReportCallback itself feeds, or None.

    A private Ray API, kept behind this one function on purpose: Train V2's public `ray.train.report` is a
    barrier over all workers, but only rank 0 logs rows, so rank 0 puts each row on this queue instead and the
    Tune trial sees it as a result. Without it (another Ray version) rows reach Tune only at the end; every row
    is still in metrics.jsonl.
    """
    try:
        from ray.train._internal.session import get_session

        return get_session()._get_or_create_inter_actor_queue()
    except Exception:
        return None


def _train_worker(config: dict) -> None:
    """One Ray Train worker: run_trial joins the process group Train set up."""
    import ray.train

    from overparam_dist.train import run_trial

    _name_node()
    on_log = None
    if ray.train.get_context().get_world_rank() == 0:
        write_pid(config["pid_file"])
        remember_placement_group(_placement_group_file(config))
        on_log = progress_printer(config, config["queue"].put if config.get("queue") is not None else None)
    try:
        summary = run_trial(from_dict(config["cfg"]), on_log=on_log)
    finally:
        stop_wandb_service()
    ray.train.report(final_result(summary))  # every worker: Train V2's report is a barrier


def _searcher(plan: Plan, book: Book, reuse: bool):
    from ray.tune.search import Searcher

    class PlanSearcher(Searcher):
        def __init__(self):
            super().__init__()
            self.names: dict[str, str] = {}

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def suggest(self, trial_id: str):
            if preempt_requested(book.sweep):
                return Searcher.FINISHED  # preempted: no new trial; the running ones checkpoint and stop
            t = plan.next_trial()
            if t == FINISHED:
                return Searcher.FINISHED
            if t is None:
                return None
            self.names[trial_id] = t.name
            return trial_config(book.sweep, t, reuse)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            name = self.names.pop(trial_id, None)
            if name is None:
                return
            summary = json.loads(result[SUMMARY_KEY]) if (result and SUMMARY_KEY in result) else None
            if summary is not None and summary.get("status") == "preempted":
                summary = None  # interrupted: no evidence either way (--resume runs it again)
            plan.complete(name, summary)

    return PlanSearcher()


def trial_config(sweep: Sweep, t: Trial, reuse_actors: bool) -> dict:
    return {
        "trial": t.name,
        "cfg": to_dict(t.cfg),
        "workers": t.workers,
        # A multi-process trial that fits one node runs as local processes (local_trial.py), else a worker group.
        "local": t.workers > 1 and fits_one_node(*trial_demand(t, sweep.resources)),
        "resources": dict(sweep.resources),
        "reuse_actors": reuse_actors,
        "pid_file": str(sweep.dir / PIDS_DIR / f"{t.name}.pid"),
        "members": member_configs(t),  # a group of seeds: each member's {"trial", "cfg"}
        "train_storage": str(sweep.dir / "_ray" / "train"),
    }


def _callback(book: Book, every_s: float):
    from ray import tune

    def name_of(trial) -> str:
        return trial.config["trial"]

    def each(trial) -> list[str]:  # the book's trials a Tune trial runs: the seeds of a group, or itself
        return member_names(trial.config)

    class Progress(tune.Callback):
        def setup(self, **info):
            reclaim_usr1()

        def on_trial_start(self, iteration, trials, trial, **info):
            for name in each(trial):
                book.started(name)
            book.maybe_print(every_s)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            book.result(result.get(MEMBER_KEY) or name_of(trial), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            for name in each(trial):
                book.ended(name)
            book.maybe_print(every_s)

        def on_trial_recover(self, iteration, trials, trial, **info):
            book.say(f"[{book.sweep.name}] trial {name_of(trial)} failed, retrying from its last checkpoint: "
                     f"{_trial_error(trial)}")

        def on_trial_error(self, iteration, trials, trial, **info):
            err = _trial_error(trial)
            for name in each(trial):
                book.ended(name, error=err)
            book.say(f"[{book.sweep.name}] trial {name_of(trial)} failed: {err}")

        def on_step_end(self, iteration, trials, **info):
            book.maybe_print(every_s)

    return Progress()


def _trial_error(trial) -> str:
    """The last line of a trial's error (the exception), from Tune's trial record."""
    msg = getattr(trial, "error_msg", None)
    if msg:
        lines = [ln for ln in str(msg).strip().splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    path = getattr(trial, "error_file", None) or getattr(trial, "pickled_error_file", None)
    if path and os.path.isfile(str(path)):
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return "unknown error"


def max_concurrent(sweep: Sweep, trials: list[Trial]) -> int:
    """As many trials at once as the cluster's resources hold (the largest trial decides)."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if not trials:
        return 1
    need_cpu = max(trial_demand(t, sweep.resources)[0] for t in trials)
    need_gpu = max(trial_demand(t, sweep.resources)[1] for t in trials)
    for t in trials:
        c, g = trial_demand(t, sweep.resources)
        if c > cpus + 1e-9 or g > gpus + 1e-9:
            raise ConfigError(
                f"trial {t.name} needs {c:g} CPUs and {g:g} GPUs ({t.workers} processes x resources "
                f"{sweep.resources}), more than the cluster has ({cpus:g} CPUs, {gpus:g} GPUs); "
                "lower resources.cpus / resources.gpus or parallel.dp x parallel.tp")
        check_tp_fits_a_node(t.name, t.cfg.parallel.tp, sweep.resources["cpus"], sweep.resources["gpus"])
    slots = math.floor(cpus / need_cpu + 1e-9)
    if need_gpu > 0:
        slots = min(slots, math.floor(gpus / need_gpu + 1e-9))
    return max(1, slots)


def run_tune(sweep: Sweep, plan: Plan, book: Book, info: RayInfo, slots: int, progress_every: float, out) -> None:
    """Run the plan's trials on Tune, `slots` at a time (max_concurrent), until the plan is finished or preempted."""
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    where = f"Ray at {info.address}" + (" (private, stopped at the end)" if info.embedded else "")
    reuse = actors_reused(sweep, info)
    actors = "actors reused trial after trial" if reuse else "one actor per trial"
    print(f"[{sweep.name}] {plan.describe()}, up to {slots} at a time, on {where}; {actors}", file=out)
    if info.dashboard_url:
        print(f"[{sweep.name}] Ray dashboard: {info.dashboard_url}", file=out, flush=True)

    searcher = _searcher(plan, book, reuse)

    def stop(trial_id: str, result: dict) -> bool:
        return plan.should_stop(searcher.names.get(trial_id))

    tuner = tune.Tuner(
        tune.with_resources(_trial_actor(), _placement),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=plan.total,
            max_concurrent_trials=slots,
            reuse_actors=reuse,  # false: one actor per trial, named by it (_trial_actor)
            trial_name_creator=lambda trial: trial.config["trial"],
            trial_dirname_creator=lambda trial: trial.config["trial"],
        ),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(sweep.dir / "_ray" / "tune"),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[_callback(book, progress_every)],
            stop=None if plan.sized else stop,  # a sized plan (a grid) never stops a trial early
            verbose=0,
        ),
    )
    tuner.fit()

"""A group of rollout workers: spreads task lists over them, merges their summaries, and
exposes ``rollout_fn`` (G rollouts per task with a given router's weights) for GRPO.

Workers are Ray actor handles or, with ``local=True``, in-process :class:`RolloutWorker` objects;
``dmr_rl.serving.launcher.create_rollout_group`` builds one from the run config.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Optional

from dmr_rl.errors import ActorError
from dmr_rl.rollout.records import TrajectoryStore, with_rates
from dmr_rl.rollout.worker import ActingSpec
from dmr_rl.seeding import occurrence_draws


def merge_summaries(parts: list) -> dict:
    keys = ("episodes", "won", "score_sum", "steps", "hp_steps", "weight_bytes", "prompt_tokens")
    merged = {k: sum(p[k] for p in parts) for k in keys}
    merged["seconds"] = max([p["seconds"] for p in parts] or [0.0])  # workers run in parallel
    merged = with_rates(merged)
    merged["shards"] = sorted({p["shard"] for p in parts if "shard" in p})
    return merged


def worker_kwargs_from_config(cfg, shard_dir, envs_per_worker: Optional[int] = None,
                              split: Optional[str] = None, record_kl: bool = False) -> dict:
    """RolloutWorker keyword arguments (all picklable) from the root config."""
    from dmr_rl.models.agent import ASSETS, agent_name, read_agent_config
    from dmr_rl.rollout.envs import env_spec_from_config

    # a trained agent is prompted (and scores actions) the way it was trained: its agent_config.json
    # (an unreadable one is a ModelError naming the file); a checkpoint without one, or an env with no
    # project agent and no hp.model_path (then the tiers' backends are given explicitly), uses the config's
    hp_dir = cfg.hp.model_path or (ASSETS / agent_name(cfg) if (ASSETS / agent_name(cfg)).is_dir() else "")
    saved = read_agent_config(hp_dir) if hp_dir else {}
    prompt = dict(saved["prompt"]) if saved.get("prompt") else {"history_window": cfg.agent.history_window}
    acting = ActingSpec(action_mode=cfg.agent.action_mode, temperature=cfg.agent.temperature,
                        max_new_tokens=cfg.agent.max_new_tokens, prompt=prompt,
                        length_normalised=bool(saved.get("length_normalised", False)))
    router = {"name": cfg.router.kind, "kwargs": ({"config": cfg.router, "num_threads": 1}
                                                  if cfg.router.kind == "transformer" else {})}
    return {"env_spec": env_spec_from_config(cfg, split), "num_envs": int(envs_per_worker or cfg.collect.envs_per_worker),
            "shard_dir": str(shard_dir), "acting": acting, "router": router, "record_kl": record_kl}


class RolloutGroup:
    """Rollout workers (Ray actor handles, or in-process RolloutWorkers with ``local=True``)."""

    def __init__(self, workers: list, shard_dir, local: bool = False):
        if not workers:
            raise ValueError("RolloutGroup needs at least one worker")
        self.workers, self.shard_dir, self.local = list(workers), str(shard_dir), bool(local)
        self.run_seed = 0  # the first element of GRPO's rng key (the launcher sets cfg.seed)
        self.notes: list = []  # one line per fault survived ("rollout worker 1 died; ...")
        self.on_note = print_note  # a callable given each such line as it happens
        self.dead: set = set()  # workers whose restarts are exhausted
        self._pushed: list = []  # [(method, value)] last router spec / weights sent to every worker
        self._shards: dict = {}

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def num_tasks(self) -> int:
        """Tasks in the split the workers host."""
        if self.local:
            return int(self.workers[0].ready()["num_tasks"])
        import ray

        return int(ray.get(self.workers[0].ready.remote())["num_tasks"])

    def split(self, task_indices, start: int = 0) -> list:
        """Round-robin assignment of the task list to the live workers (a GRPO group may span
        workers): per live worker, in ``live_workers()`` order, (positions, tasks) with positions
        counted from ``start``."""
        n = len(self.live_workers())
        parts = [([], []) for _ in range(n)]
        for k, t in enumerate(task_indices):
            parts[k % n][0].append(start + k)
            parts[k % n][1].append(int(t))
        return parts

    def run_episodes_async(self, task_indices, method: str = "router", seed: int = 0, sample: bool = False,
                           return_episodes: bool = False, start: int = 0, rng_key=None, draws=None,
                           call_id: str = "") -> list:
        """One ObjectRef per worker that got tasks (Ray workers only). ``rng_key``: (run_seed,
        method, point), see :func:`dmr_rl.seeding.episode_rng`; ``draws``: per entry, how often its
        task occurred earlier in the list (default: counted over ``task_indices``)."""
        if self.local:
            raise RuntimeError("run_episodes_async needs Ray workers; this group is in-process")
        draws = occurrence_draws(task_indices) if draws is None else list(draws)
        return [w.run_episodes.remote(tasks, method, seed, sample, return_episodes, pos, rng_key,
                                      [draws[p - start] for p in pos], call_id)
                for w, (pos, tasks) in zip([self.workers[i] for i in self.live_workers()],
                                           self.split(task_indices, start)) if tasks]

    def run_episodes(self, task_indices, method: str = "router", seed: int = 0, sample: bool = False,
                     return_episodes: bool = False, chunk: int = 0, progress=None, rng_key=None) -> dict:
        """Run the tasks over all workers; a merged summary (``episode_records`` with
        ``return_episodes``). ``chunk`` > 0 sends the list in chunks (progress updates);
        ``progress``: a callable given the number of episodes just finished. ``rng_key``:
        (run_seed, method, point): each episode's random choices come from
        ``episode_rng(*rng_key, seed, task, draw)``, so they do not depend on the number of
        workers, chunking, batching or a worker's restart."""
        t0 = time.perf_counter()
        n_notes = len(self.notes)
        tasks = [int(t) for t in task_indices]
        draws = occurrence_draws(tasks)
        call_id = uuid.uuid4().hex
        size = len(tasks) if chunk <= 0 else int(chunk)
        parts = []
        for start in range(0, len(tasks), max(1, size)):
            end = start + size
            parts += self._run_chunk(tasks[start:end], draws[start:end], start, method, seed, sample,
                                     return_episodes, progress, rng_key, call_id)
        merged = merge_summaries(parts)
        merged["seconds"] = time.perf_counter() - t0  # wall time of the whole call
        merged = with_rates(merged)
        if return_episodes:
            merged["episode_records"] = [e for p in parts for e in p.get("episode_records", [])]
        if len(self.notes) > n_notes:
            merged["fault_notes"] = self.notes[n_notes:]
        return merged

    def _run_chunk(self, tasks, draws, start, method, seed, sample, return_episodes, progress, rng_key,
                   call_id) -> list:
        if self.local:
            out = []
            for w, (pos, part) in zip(self.workers, self.split(tasks, start)):
                if part:
                    out.append(w.run_episodes(part, method, seed, sample, return_episodes, pos, rng_key,
                                              [draws[p - start] for p in pos], call_id))
                    if progress:
                        progress(out[-1]["episodes"])
            return out
        from dmr_rl.rollout.recovery import run_with_recovery

        return run_with_recovery(self, tasks, draws, start, method, seed, sample, return_episodes, progress,
                                 rng_key, call_id)

    def set_router(self, router) -> None:
        self._pushed = [("set_router", router)]  # a new router supersedes earlier weights
        self._broadcast("set_router", router)

    def set_router_weights(self, weights) -> None:
        """Ship router weights to every worker (put once in the object store)."""
        self._pushed = [p for p in self._pushed if p[0] != "set_router_weights"] + [("set_router_weights", weights)]
        self._broadcast("set_router_weights", weights)

    def pushed(self) -> list:
        """What a restarted worker must be sent again to act as the others: [(method, value)]."""
        return list(self._pushed)

    def _broadcast(self, method: str, value) -> None:
        if self.local:
            for w in self.workers:
                getattr(w, method)(value)
            return
        import ray
        from ray.exceptions import RayActorError

        from dmr_rl.rollout.recovery import worker_alive

        ref = ray.put(value)
        live = self.live_workers()
        refs = [getattr(self.workers[i], method).remote(ref) for i in live]
        for i, r in zip(live, refs):
            try:
                ray.get(r)
            except RayActorError:  # died: restarted (and sent what the others have) or gone
                if worker_alive(self, i):
                    self.note(f"rollout worker {i} died; restarted")
                else:
                    self.dead.add(i)
                    self.note(f"rollout worker {i} died; restarts exhausted; going on with "
                              f"{len(self.live_workers())} workers")
        if not self.live_workers():
            raise ActorError(f"every rollout worker died (restarts exhausted); finished episodes are kept "
                             f"in {self.shard_dir}")

    # ---- faults ------------------------------------------------------------------------------
    def live_workers(self) -> list:
        return [i for i in range(len(self.workers)) if i not in self.dead]

    def shard_path(self, i: int) -> Path:
        """Worker ``i``'s shard (as it reported it when it started)."""
        if i not in self._shards:
            import ray
            from ray.exceptions import RayActorError

            try:
                self._shards[i] = Path(ray.get(self.workers[i].ready.remote(), timeout=60)["shard"])
            except (RayActorError, ray.exceptions.GetTimeoutError):
                return Path(self.shard_dir) / f"worker-{i}.jsonl"  # the launcher's naming
        return self._shards[i]

    def note(self, line: str) -> None:
        """Record one line about a survived fault (and pass it to ``on_note``)."""
        self.notes.append(line)
        if self.on_note is not None:
            self.on_note(line)

    def take_notes(self, notes: list) -> None:
        """A worker's model-server notes: one line per (server, outcome) with the requests resent."""
        for line in format_server_notes(notes):
            self.note(line)

    def rollout_fn(self, router_weights, task_indices, group_size: int, seed: int,
                   iteration: Optional[int] = None) -> list:
        """GRPO's rollouts: ``group_size`` episodes per task with the router *sampling* its
        decisions under ``router_weights``. Returns EpisodeRecords ordered by (task, member);
        ``extra["group"]`` is the task's position in ``task_indices``, ``extra["member"]`` 0..G-1.
        Random choices are keyed by (``self.run_seed``, "grpo", iteration or "seed<seed>"); a
        task's G members are its draws 0..G-1 (and more if the task is listed twice)."""
        if router_weights is not None:
            self.set_router_weights(router_weights)
        expanded = [(g, m, int(t)) for g, t in enumerate(task_indices) for m in range(int(group_size))]
        point = f"it{int(iteration)}" if iteration is not None else f"seed{int(seed)}"
        summary = self.run_episodes([t for _, _, t in expanded], "router", seed, sample=True, return_episodes=True,
                                    rng_key=(self.run_seed, "grpo", point))
        by_position = {e.extra["position"]: e for e in summary["episode_records"]}
        episodes = []
        for k, (g, m, _) in enumerate(expanded):
            ep = by_position[k]
            ep.extra.update(group=g, member=m)
            episodes.append(ep)
        return episodes

    def shutdown(self) -> None:
        if self.local:
            for w in self.workers:
                w.shutdown()
            return
        import ray

        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:
                pass


def print_note(line: str) -> None:
    """The default way a run says what fault it survived: one line on stderr."""
    import sys

    print(f"dmr: {line}", file=sys.stderr, flush=True)


def format_server_notes(notes: list) -> list:
    """[{"tier", "replica", "outcome", "resent"}, ...] (from the workers' tier clients) -> one line
    per (tier, replica, outcome): "model server lp/0 died; restarted; 3 requests resent"."""
    total: dict = {}
    for n in notes:
        k = (n["tier"], int(n["replica"]), n["outcome"])
        total[k] = total.get(k, 0) + int(n.get("resent", 0))
    return [f"model server {t}/{r} died; {outcome}; {k} request{'s' if k != 1 else ''} resent"
            for (t, r, outcome), k in sorted(total.items())]


def read_episodes(shard_dir) -> list:
    """Every finished episode in a directory of shards."""
    return TrajectoryStore.read(shard_dir)


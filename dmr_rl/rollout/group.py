"""A group of rollout workers: spreads task lists over them, merges their summaries, and
exposes ``rollout_fn`` (G rollouts per task with a given router's weights) for GRPO.

Workers are Ray actor handles or, with ``local=True``, in-process :class:`RolloutWorker` objects;
``dmr_rl.serving.launcher.create_rollout_group`` builds one from the run config.
"""
from __future__ import annotations

import time
from typing import Optional

from dmr_rl.errors import ActorError
from dmr_rl.rollout.records import TrajectoryStore
from dmr_rl.rollout.worker import ActingSpec, with_rates


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
    from dmr_rl.errors import ModelError
    from dmr_rl.models.agent import agent_dir, read_agent_config
    from dmr_rl.rollout.envs import env_spec_from_config

    # a trained agent is prompted (and scores actions) the way it was trained: its agent_config.json
    # (an unreadable one is a ModelError naming the file); a checkpoint without one, or an env with no
    # project agent and no hp.model_path (then the tiers' backends are given explicitly), uses the config's
    try:
        hp_dir = cfg.hp.model_path or str(agent_dir(cfg.env.name))
    except ModelError:
        hp_dir = ""
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
        """Round-robin assignment of the task list to workers (a GRPO group may span workers):
        per worker, (positions, tasks) with positions counted from ``start``."""
        parts = [([], []) for _ in self.workers]
        for k, t in enumerate(task_indices):
            parts[k % len(self.workers)][0].append(start + k)
            parts[k % len(self.workers)][1].append(int(t))
        return parts

    def run_episodes_async(self, task_indices, method: str = "router", seed: int = 0, sample: bool = False,
                           return_episodes: bool = False, start: int = 0) -> list:
        """One ObjectRef per worker that got tasks (Ray workers only)."""
        if self.local:
            raise RuntimeError("run_episodes_async needs Ray workers; this group is in-process")
        return [w.run_episodes.remote(tasks, method, seed, sample, return_episodes, pos)
                for w, (pos, tasks) in zip(self.workers, self.split(task_indices, start)) if tasks]

    def run_episodes(self, task_indices, method: str = "router", seed: int = 0, sample: bool = False,
                     return_episodes: bool = False, chunk: int = 0, progress=None) -> dict:
        """Run the tasks over all workers; a merged summary (``episode_records`` with
        ``return_episodes``). ``chunk`` > 0 sends the list in chunks (progress updates);
        ``progress``: a callable given the number of episodes just finished."""
        t0 = time.perf_counter()
        tasks = [int(t) for t in task_indices]
        size = len(tasks) if chunk <= 0 else int(chunk)
        parts = []
        for start in range(0, len(tasks), max(1, size)):
            parts += self._run_chunk(tasks[start:start + size], start, method, seed, sample, return_episodes, progress)
        merged = merge_summaries(parts)
        merged["seconds"] = time.perf_counter() - t0  # wall time of the whole call
        merged = with_rates(merged)
        if return_episodes:
            merged["episode_records"] = [e for p in parts for e in p.get("episode_records", [])]
        return merged

    def _run_chunk(self, tasks, start, method, seed, sample, return_episodes, progress) -> list:
        if self.local:
            out = []
            for w, (pos, part) in zip(self.workers, self.split(tasks, start)):
                if part:
                    out.append(w.run_episodes(part, method, seed, sample, return_episodes, pos))
                    if progress:
                        progress(out[-1]["episodes"])
            return out
        import ray
        from ray.exceptions import RayActorError

        refs = self.run_episodes_async(tasks, method, seed, sample, return_episodes, start)
        owner = {r: i for i, r in enumerate(refs)}
        out, pending = [], list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                out.append(ray.get(done[0]))
            except RayActorError as e:
                i = owner[done[0]]
                raise ActorError(f"rollout worker {i} died ({type(e).__name__}); the episodes it finished "
                                 f"are kept in {self.shard_dir}/worker-{i}.jsonl") from e
            if progress:
                progress(out[-1]["episodes"])
        return out

    def set_router(self, router) -> None:
        self._broadcast("set_router", router)

    def set_router_weights(self, weights) -> None:
        """Ship router weights to every worker (put once in the object store)."""
        self._broadcast("set_router_weights", weights)

    def _broadcast(self, method: str, value) -> None:
        if self.local:
            for w in self.workers:
                getattr(w, method)(value)
            return
        import ray

        ref = ray.put(value)
        ray.get([getattr(w, method).remote(ref) for w in self.workers])

    def rollout_fn(self, router_weights, task_indices, group_size: int, seed: int) -> list:
        """GRPO's rollouts: ``group_size`` episodes per task with the router *sampling* its
        decisions under ``router_weights``. Returns EpisodeRecords ordered by (task, member);
        ``extra["group"]`` is the task's position in ``task_indices``, ``extra["member"]`` 0..G-1."""
        if router_weights is not None:
            self.set_router_weights(router_weights)
        expanded = [(g, m, int(t)) for g, t in enumerate(task_indices) for m in range(int(group_size))]
        summary = self.run_episodes([t for _, _, t in expanded], "router", seed, sample=True, return_episodes=True)
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


def read_episodes(shard_dir) -> list:
    """Every finished episode in a directory of shards."""
    return TrajectoryStore.read(shard_dir)


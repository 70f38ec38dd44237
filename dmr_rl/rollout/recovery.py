"""Running a task list over Ray rollout workers so that a worker's death costs only its
unfinished episodes.

Each worker gets its share of the list (``RolloutGroup.split``) and appends every finished episode
to its own shard at once, tagged with the call's id and the entry's position. When a worker dies
mid-call, its finished episodes of this call are read back from its shard and kept; the entries it
had not finished are sent again: to the same worker once Ray has restarted it (``max_restarts``; the
group first re-sends the router it had), else, restarts exhausted, to a live worker. Episodes are
keyed by (rng key, seed, task, draw) (:mod:`dmr_rl.seeding`), so the replayed ones are the episodes
the dead worker would have played. The group records one line per death ("rollout worker 1 died;
restarted; 3 finished episodes reused, 2 replayed"); only when no worker is left does it raise
ActorError.
"""
from __future__ import annotations

import time
from pathlib import Path

from dmr_rl.errors import USER_ERRORS, ActorError
from dmr_rl.rollout.records import TrajectoryStore
from dmr_rl.rollout.records import summarise_episodes

READY_TIMEOUT_S = 600.0  # how long a restarting worker may take to come back


def actor_back(handle, timeout_s: float) -> bool:
    """Whether a Ray actor that failed a call answers again within ``timeout_s`` (Ray restarts
    it while its ``max_restarts`` last; meanwhile calls fail with ActorUnavailableError). False:
    it is dead for good, or did not come back in time."""
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

    deadline = time.monotonic() + float(timeout_s)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            ray.get(handle.ready.remote(), timeout=left)
            return True
        except ActorUnavailableError:  # restarting
            time.sleep(0.2)
        except (RayActorError, GetTimeoutError):
            return False


def worker_alive(group, i: int, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Whether worker ``i`` answers (Ray restarts a dead one while restarts remain); a restarted
    worker gets the router the group last pushed."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    if not actor_back(group.workers[i], timeout_s):
        return False
    try:
        for method, value in group.pushed():
            ray.get(getattr(group.workers[i], method).remote(value), timeout=timeout_s)
        return True
    except (RayActorError, GetTimeoutError):
        return False


def finished_of(shard: Path, call_id: str, positions) -> dict:
    """{position: EpisodeRecord} of this call's episodes that reached the worker's shard."""
    wanted = set(int(p) for p in positions)
    if not shard.is_file():
        return {}
    out = {}
    for ep in TrajectoryStore.read_file(shard):
        pos = ep.extra.get("position")
        if ep.extra.get("call") == call_id and pos in wanted:
            out[int(pos)] = ep
    return out


def run_with_recovery(group, tasks, draws, start, method, seed, sample, return_episodes, progress,
                      rng_key, call_id) -> list:
    """Summaries (one per finished share) of playing ``tasks`` (positions from ``start``) on the
    group's Ray workers, surviving worker deaths as described above."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    owner: dict = {}

    def submit(i: int, pos: list, part: list):
        ref = group.workers[i].run_episodes.remote(part, method, seed, sample, return_episodes, pos, rng_key,
                                                   [draws[p - start] for p in pos], call_id)
        owner[ref] = (i, pos, part)
        return ref

    live = group.live_workers()
    for i in live:
        group.shard_path(i)  # known before any worker can die
    shares = group.split(tasks, start)
    pending = [submit(i, pos, part) for i, (pos, part) in zip(live, shares) if part]
    out: list = []
    server_notes: list = []  # the workers' model-server resends, one line per server at the end
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        i, pos, part = owner.pop(done[0])
        try:
            out.append(ray.get(done[0]))
            server_notes += out[-1].pop("fault_notes", [])
        except RayTaskError as e:  # a user-facing error inside the worker: its one line, not the remote traceback
            if isinstance(getattr(e, "cause", None), USER_ERRORS):
                raise e.cause.with_traceback(None) from None
            raise
        except RayActorError:
            kept = finished_of(group.shard_path(i), call_id, pos)
            left = [(p, t) for p, t in zip(pos, part) if p not in kept]
            if kept:
                s = summarise_episodes([kept[p] for p in sorted(kept)])
                s.update(worker=i, shard=str(group.shard_path(i)), method=method)
                if return_episodes:
                    s["episode_records"] = [kept[p] for p in sorted(kept)]
                out.append(s)
            if worker_alive(group, i):
                target, how = i, "restarted"
            else:
                group.dead.add(i)
                alive = group.live_workers()
                if not alive:
                    raise ActorError(f"rollout worker {i} died and no rollout worker is left (restarts "
                                     f"exhausted); the episodes it finished are kept in {group.shard_path(i)}")
                target = alive[i % len(alive)]
                how = f"restarts exhausted; its episodes moved to worker {target}"
            group.note(f"rollout worker {i} died; {how}; {len(kept)} finished episodes reused, "
                       f"{len(left)} replayed")
            if left:
                pending.append(submit(target, [p for p, _ in left], [t for _, t in left]))
            if progress and kept:
                progress(len(kept))
            continue
        if progress:
            progress(out[-1]["episodes"])
    group.take_notes(server_notes)
    return out

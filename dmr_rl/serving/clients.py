"""Clients of one precision tier: the same calls over Ray server replicas or an in-process Backend.

Both clients offer, for each Backend call, three forms:

- ``score_actions(prompts, candidates)`` -> results (what the Backend returns);
- ``score_actions_costed(...)`` -> (results, row_costs) (see ``model_server.apportion_cost``);
- ``score_actions_ref(...)`` -> an ObjectRef of (results, row_costs) (Ray client only), to be
  resolved with ``client.get(ref)`` so that a dead replica becomes a clear ``ActorError``.

and likewise ``token_distributions`` and ``generate``. ``TierClient`` balances requests over the
replicas: it sends each request to the replica with the fewest of *this client's* requests still
in flight (ties broken round-robin from a per-client offset, so many workers spread out).

Sessions: ``score_actions(..., sessions=ids)`` carries one id (or None) per prompt, e.g. the
episode's, so the backend may keep that episode's KV cache between steps; ``end_sessions(ids)``
when the episodes end. A request that carries sessions goes to this client's *home* replica (its
offset modulo the replicas, the next live one when that one is dead), so an episode's next step
finds its cache; a request resent after its replica died goes wherever it is resent (the cache
misses there, results are the same: a cache is only reused over a verified common token prefix).
"""
from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from typing import Optional

from dmr_rl.errors import ActorError
from dmr_rl.rollout.recovery import actor_back
from dmr_rl.serving.model_server import apportion_cost, make_backend, session_ids

CALLS = ("score_actions", "token_distributions", "generate")
RESTART_TIMEOUT_S = 600.0  # how long a dying replica may take to come back (it reloads its model)


@contextmanager
def torch_threads_set(n):
    """Temporarily set torch's intra-op threads (no-op for None/0)."""
    if not n:
        yield
        return
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class _PlainCalls:
    """The Backend calls without per-row costs, derived from a client's ``*_costed`` methods."""

    def score_actions(self, prompts, candidates, sessions=None):
        return self.score_actions_costed(prompts, candidates, sessions)[0]

    def token_distributions(self, prompts, continuations, top_k: int = 0):
        return self.token_distributions_costed(prompts, continuations, top_k)[0]

    def generate(self, prompts, sampling=None):
        return self.generate_costed(prompts, sampling)[0]

    def prompt_hidden(self, prompts, layer: int = 0):
        return self.prompt_hidden_costed(prompts, layer)[0]


class LocalTierClient(_PlainCalls):
    """A tier served in this process: a direct, unbatched call into a Backend."""

    def __init__(self, tier: str, backend):
        self.tier = tier
        self.backend = backend if hasattr(backend, "score_actions") else make_backend(backend)

    @property
    def num_replicas(self) -> int:
        return 1

    @property
    def weight_bytes(self) -> float:
        return float(self.backend.weight_bytes)

    def score_actions_costed(self, prompts, candidates, sessions=None):
        weights = [len(p) + sum(len(c) for c in cs) for p, cs in zip(prompts, candidates)]
        ids = session_ids(sessions)
        kw = {"sessions": ids} if ids else {}
        return self._costed("score_actions", weights, prompts, candidates, **kw)

    def end_sessions(self, sessions) -> None:
        """Forget the backend's state of ``sessions`` (episodes that ended)."""
        if sessions:
            self.backend.end_sessions(list(sessions))

    def token_distributions_costed(self, prompts, continuations, top_k: int = 0):
        weights = [len(p) + len(c) for p, c in zip(prompts, continuations)]
        return self._costed("token_distributions", weights, prompts, continuations, top_k=top_k)

    def generate_costed(self, prompts, sampling=None):
        if sampling is None:
            from dmr_rl.models.backends.base import SamplingParams

            sampling = SamplingParams()
        return self._costed("generate", [len(p) for p in prompts], prompts, sampling)

    def prompt_hidden_costed(self, prompts, layer: int = 0):
        return self._costed("prompt_hidden", [len(p) for p in prompts], prompts, layer=layer)

    def _costed(self, kind, weights, *args, **kw):
        if not weights:
            return [], []
        before = self.backend.cost.snapshot()
        t0 = time.perf_counter()
        results = list(getattr(self.backend, kind)(*args, **kw))
        seconds = time.perf_counter() - t0
        return results, apportion_cost(before, self.backend.cost.snapshot(), weights, seconds, results, kind)

    def cost(self) -> dict:
        snap = self.backend.cost.snapshot()
        snap.update(tier=self.tier, replica=0)
        return snap

    def ready(self, timeout_s: float = 0.0) -> list:
        return [{"tier": self.tier, "replica": 0, "backend": getattr(self.backend, "name", ""),
                 "weight_bytes": self.weight_bytes}]

    def info(self) -> list:
        """One dict per replica (here one): what the tier runs as (backend, dtype, device ...)."""
        return [{**self.backend.info(), "tier": self.tier, "replica": 0}]

    def shutdown(self) -> None:
        pass


class TierClient(_PlainCalls):
    """Load-balanced calls to the Ray model-server replicas of one tier."""

    def __init__(self, tier: str, handles: list, weight_bytes: float = 0.0, offset: int = 0):
        if not handles:
            raise ActorError(f"tier {tier!r} has no model-server replicas")
        self.tier = tier
        self.handles = list(handles)
        self._weight_bytes = float(weight_bytes)
        self._offset = int(offset)
        self._rr = itertools.count(self._offset)
        self._inflight: dict[int, list] = {i: [] for i in range(len(self.handles))}
        self._owner: dict = {}
        self._calls: dict = {}  # ref -> (kind, args): what to send again if its replica dies
        self.dead: set = set()  # replicas whose restarts are exhausted
        self.notes: list = []  # {"tier", "replica", "outcome", "resent"} per request resent
        self.sent = [0] * len(self.handles)
        self._session_replicas: dict = {}  # session id -> replicas its rows were sent to
        self._ended: list = []  # refs of fire-and-forget end_sessions calls, drained unread

    def __getstate__(self):  # in-flight bookkeeping is per process
        return {"tier": self.tier, "handles": self.handles, "weight_bytes": self._weight_bytes,
                "offset": self._offset}

    def __setstate__(self, state):
        self.__init__(state["tier"], state["handles"], state["weight_bytes"], state["offset"])

    def with_offset(self, offset: int) -> "TierClient":
        """A copy that starts its round-robin at ``offset`` (give each rollout worker its own)."""
        return TierClient(self.tier, self.handles, self._weight_bytes, offset)

    @property
    def num_replicas(self) -> int:
        return len(self.handles)

    @property
    def weight_bytes(self) -> float:
        return self._weight_bytes

    # ---- balancing -----------------------------------------------------------------------
    def _pick(self) -> int:
        import ray

        for i, refs in self._inflight.items():
            if refs:
                _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
                self._inflight[i] = pending  # (owner and call stay until get(): a failed one is resent)
        start = next(self._rr)
        n = len(self.handles)
        order = [(start + k) % n for k in range(n) if (start + k) % n not in self.dead]
        return min(order, key=lambda i: len(self._inflight[i]))

    def home_replica(self) -> int:
        """Where requests with sessions go: this client's offset modulo the replicas, else the next
        live replica after it (stable while no replica dies, so an episode keeps its cache)."""
        n = len(self.handles)
        for k in range(n):
            i = (self._offset + k) % n
            if i not in self.dead:
                return i
        raise ActorError(f"model server of tier {self.tier!r}: no live replica left")

    def _send(self, kind: str, *args, replica: Optional[int] = None, sessions=None):
        """Send ``kind(*args)`` to ``replica`` (else: the home replica when ``sessions``, the rows'
        KV-cache session ids, name any; else the least loaded); remembered for a resend."""
        sessions = [x for x in sessions or () if x is not None]
        if replica is not None:
            i = replica
        else:
            i = self.home_replica() if sessions else self._pick()
        for sid in sessions:
            self._session_replicas.setdefault(sid, set()).add(i)
        ref = getattr(self.handles[i], kind).remote(*args)
        self._inflight[i].append(ref)
        self._owner[ref] = i
        self._calls[ref] = (kind, args, sessions)
        self.sent[i] += 1
        return ref

    def get(self, ref, timeout_s: Optional[float] = None):
        """Resolve a ``*_ref`` result. Requests are pure, so one whose replica died is sent again:
        to the same replica once Ray has restarted it, else to a live one (noted in ``notes``).
        A replica that does not answer in time, or no replica left, raises ActorError."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        while True:
            cur = ref
            i = self._owner.pop(cur, -1)
            call = self._calls.pop(cur, None)
            try:
                return ray.get(cur, timeout=timeout_s)
            except RayActorError as e:
                if call is None:  # management calls (ready, cost) are not resent
                    raise ActorError(f"model server of tier {self.tier!r} replica {i} died or is unreachable "
                                     f"({type(e).__name__}: its node was lost or its process crashed)") from e
                target, outcome = self._recover(i, e)
                self.notes.append({"tier": self.tier, "replica": i, "outcome": outcome, "resent": 1})
                ref = self._send(call[0], *call[1], replica=target, sessions=call[2])
            except GetTimeoutError as e:
                raise ActorError(f"model server of tier {self.tier!r} replica {i} did not answer "
                                 f"within {timeout_s} s") from e
            finally:
                if i >= 0 and cur in self._inflight.get(i, []):
                    self._inflight[i].remove(cur)

    def _recover(self, i: int, error) -> tuple:
        """After replica ``i`` failed a request: (replica to resend to, what happened). Waits for
        Ray to restart it (``max_restarts``); restarts exhausted, another live replica; none left:
        ActorError."""
        if i >= 0 and i not in self.dead:
            if actor_back(self.handles[i], RESTART_TIMEOUT_S):
                return i, "restarted"
            self.dead.add(i)
        alive = [k for k in range(len(self.handles)) if k not in self.dead]
        if not alive:
            raise ActorError(f"model server of tier {self.tier!r} replica {i} died or is unreachable "
                             f"({type(error).__name__}: its node was lost or its process crashed) and no "
                             f"replica of the tier is left (restarts exhausted)") from error
        target = self._pick()
        return target, f"restarts exhausted; resent to {self.tier}/{target}"

    def drain_notes(self) -> list:
        """The resend notes since the last call (and forget them)."""
        out, self.notes = self.notes, []
        return out

    # ---- calls ---------------------------------------------------------------------------
    def score_actions_ref(self, prompts, candidates, sessions=None):
        ids = session_ids(sessions)
        if ids:
            return self._send("score_actions", list(prompts), [list(c) for c in candidates], ids, sessions=ids)
        return self._send("score_actions", list(prompts), [list(c) for c in candidates])

    def token_distributions_ref(self, prompts, continuations, top_k: int = 0):
        return self._send("token_distributions", list(prompts), list(continuations), int(top_k))

    def generate_ref(self, prompts, sampling=None):
        return self._send("generate", list(prompts), sampling)

    def prompt_hidden_ref(self, prompts, layer: int = 0):
        return self._send("prompt_hidden", list(prompts), int(layer))

    def score_actions_costed(self, prompts, candidates, sessions=None):
        return self.get(self.score_actions_ref(prompts, candidates, sessions)) if prompts else ([], [])

    def end_sessions(self, sessions) -> None:
        """Tell every replica that served rows of ``sessions`` to forget them. Fire-and-forget: no
        wait, and a dead replica's error is swallowed (its cache died with it; the episode is done)."""
        import ray

        if self._ended:  # collect finished calls so their errors are read (and dropped), not logged
            done, self._ended = ray.wait(self._ended, num_returns=len(self._ended), timeout=0)
            for ref in done:
                try:
                    ray.get(ref, timeout=0)
                except Exception:
                    pass
        by_replica: dict = {}
        for sid in sessions:
            for i in self._session_replicas.pop(sid, ()):
                by_replica.setdefault(i, []).append(sid)
        for i, ids in sorted(by_replica.items()):
            if i in self.dead:
                continue
            try:
                self._ended.append(self.handles[i].end_sessions.remote(ids))
            except Exception:  # a handle that cannot even submit: nothing to forget there
                pass

    def token_distributions_costed(self, prompts, continuations, top_k: int = 0):
        return self.get(self.token_distributions_ref(prompts, continuations, top_k)) if prompts else ([], [])

    def generate_costed(self, prompts, sampling=None):
        return self.get(self.generate_ref(prompts, sampling)) if prompts else ([], [])

    def prompt_hidden_costed(self, prompts, layer: int = 0):
        return self.get(self.prompt_hidden_ref(prompts, layer)) if prompts else ([], [])

    # ---- management ----------------------------------------------------------------------
    def _all(self, method: str, timeout_s: Optional[float]) -> list:
        out = []
        for i, h in enumerate(self.handles):
            ref = getattr(h, method).remote()
            self._owner[ref] = i
            out.append(self.get(ref, timeout_s))
        return out

    def ready(self, timeout_s: Optional[float] = 300.0) -> list:
        """Block until every replica answers (model loaded); one identity dict per replica."""
        return self._all("ready", timeout_s)

    def info(self) -> list:
        """One dict per replica: what it runs as (backend, resolved dtype, device, engine ...)."""
        return self._all("info", 60.0)

    def cost(self) -> dict:
        """The tier's cost summed over replicas, with the per-replica snapshots under ``replicas``."""
        snaps = self._all("cost", 60.0)
        keys = ("calls", "prompt_tokens", "generated_tokens", "weight_bytes_read", "wall_time_s",
                "batches", "rows", "requests")
        total = {k: sum(s.get(k, 0) for s in snaps) for k in keys}
        total.update(tier=self.tier, replicas=snaps)
        return total

    def shutdown(self) -> None:
        """Drain and kill every replica (errors from already-dead ones are ignored)."""
        import ray

        for h in self.handles:
            try:
                ray.get(h.shutdown.remote(), timeout=10)
            except Exception:
                pass
            try:
                ray.kill(h)
            except Exception:
                pass

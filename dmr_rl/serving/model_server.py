"""One precision tier's Backend behind a request-batching server (run as an async Ray actor).

Many rollout workers send small requests (one step of their N environments); the server queues
them and runs one backend forward over up to ``max_batch_size`` rows, waiting at most
``max_wait_ms`` for a batch to fill. Requests with different call kinds or arguments (top_k,
sampling parameters) are never mixed in one forward; a request is never split.

``score_actions`` rows may carry a session id (one per episode): the id travels in its row, so a
batch mixing many workers' requests hands each row's id to the backend, which may keep that
episode's KV cache between steps (only when some row of the batch has one). ``end_sessions``
runs in the same single backend thread as the forwards, so it never races one over that cache.

Every call returns ``(results, row_costs)``: ``results`` exactly what the Backend returns for
those rows, ``row_costs`` one dict per row with the batch's measured cost apportioned to it
(prompt tokens by text length, generated tokens exactly, ``latency_s`` the wall time of the
forward the row rode in, ``batch_rows`` how many rows shared it).

The class has no Ray import: ``launcher.create_model_servers`` wraps it with ``ray.remote``;
tests can also drive it with plain asyncio.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Hashable, Optional


def make_backend(spec):
    """A Backend from a zero-argument factory or from a TierConfig (through ``load_backend``)."""
    if callable(spec) and not dataclasses.is_dataclass(spec):
        return spec()
    from dmr_rl.models import load_backend

    return load_backend(spec)


@dataclass
class _Request:
    kind: str
    key: Hashable
    args: Any  # extra call arguments shared by the batch (top_k, SamplingParams)
    rows: list  # per-row argument tuples
    weights: list  # per-row cost weights (text length)
    future: asyncio.Future
    t_enqueued: float = field(default_factory=time.perf_counter)


class ModelServer:
    """Hosts one Backend; ``score_actions`` / ``token_distributions`` / ``generate`` /
    ``prompt_hidden`` are batched."""

    def __init__(self, tier: str, replica: int, backend_spec, max_batch_size: int = 64,
                 max_wait_ms: float = 2.0, torch_threads: int = 0):
        """``torch_threads``: torch intra-op threads of this server (the launcher passes its Ray CPU
        share, at least 1, so servers spread over the cores instead of each taking all); 0: leave
        torch's setting as it is."""
        if max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        if torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0, got {torch_threads}")
        self.tier, self.replica = tier, int(replica)
        self.torch_threads = int(torch_threads)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{tier}-{replica}-fwd")
        if self.torch_threads:  # here and in the backend thread (where the forwards run)
            _set_torch_threads(self.torch_threads)
            self._pool.submit(_set_torch_threads, self.torch_threads).result()
        self.backend = make_backend(backend_spec)
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self._queue: asyncio.Queue | None = None
        self._held: deque = deque()
        self._loop_task = None
        self.batches = 0
        self.rows_served = 0
        self.requests_served = 0
        self.max_rows_in_batch = 0

    # ---- public calls --------------------------------------------------------------------
    async def score_actions(self, prompts: list, candidates: list, sessions: Optional[list] = None):
        """``sessions``: None, or one hashable id (or None) per prompt, e.g. the episode's."""
        _check_lengths("score_actions", prompts, candidates)
        if sessions is None:
            sessions = [None] * len(prompts)
        _check_lengths("score_actions", prompts, sessions, "session ids")
        rows = list(zip(prompts, candidates, sessions))
        weights = [len(p) + sum(len(c) for c in cs) for p, cs, _ in rows]
        return await self._submit("score_actions", None, None, rows, weights)

    async def end_sessions(self, sessions: list) -> int:
        """Forget the backend's state of ``sessions`` (episodes that ended), in the backend thread
        (after the forwards already running there). Returns how many ids were passed."""
        ids = list(sessions)
        if ids:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.backend.end_sessions, ids)
        return len(ids)

    async def token_distributions(self, prompts: list, continuations: list, top_k: int = 0):
        _check_lengths("token_distributions", prompts, continuations)
        rows = list(zip(prompts, continuations))
        weights = [len(p) + len(c) for p, c in rows]
        return await self._submit("token_distributions", int(top_k), int(top_k), rows, weights)

    async def generate(self, prompts: list, sampling=None):
        if sampling is None:
            from dmr_rl.models.backends.base import SamplingParams

            sampling = SamplingParams()
        key = repr(dataclasses.asdict(sampling)) if dataclasses.is_dataclass(sampling) else repr(sampling)
        rows = [(p,) for p in prompts]
        return await self._submit("generate", key, sampling, rows, [len(p) for p in prompts])

    async def prompt_hidden(self, prompts: list, layer: int = 0):
        rows = [(p,) for p in prompts]
        return await self._submit("prompt_hidden", int(layer), int(layer), rows, [len(p) for p in prompts])

    def ready(self) -> dict:
        """Cheap liveness/identity check; the launcher waits on it after creating a replica."""
        try:  # the node this replica runs on, when inside Ray
            import ray

            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        except ImportError:  # pragma: no cover
            node = ""
        return {"tier": self.tier, "replica": self.replica, "pid": os.getpid(), "node_id": node,
                "backend": getattr(self.backend, "name", type(self.backend).__name__),
                "weight_bytes": float(self.backend.weight_bytes),
                "memory": dict(getattr(self.backend, "memory", None) or {})}  # e.g. vLLM's GPU bytes taken

    def info(self) -> dict:
        """The backend's ``info()`` (dtype, engine, session-cache counters ...) with tier, replica and
        this server's torch threads."""
        info = dict(self.backend.info())
        info.update(tier=self.tier, replica=self.replica, server_torch_threads=_get_torch_threads())
        return info

    def cost(self) -> dict:
        """The backend's accumulated CostMeter plus this server's batching statistics."""
        snap = self.backend.cost.snapshot()
        snap.update(self.stats())
        return snap

    def stats(self) -> dict:
        return {"tier": self.tier, "replica": self.replica, "batches": self.batches,
                "rows": self.rows_served, "requests": self.requests_served,
                "max_rows_in_batch": self.max_rows_in_batch,
                "queued": 0 if self._queue is None else self._queue.qsize() + len(self._held)}

    async def shutdown(self) -> bool:
        """Stop batching, fail queued requests, free the backend thread."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        pending = list(self._held)
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for req in pending:
            if not req.future.done():
                req.future.set_exception(RuntimeError(f"model server {self.tier}/{self.replica} shut down"))
        self._pool.shutdown(wait=False)
        return True

    # ---- batching ------------------------------------------------------------------------
    async def _submit(self, kind, key, args, rows, weights):
        if not rows:
            return [], []
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._batch_loop())
        fut = loop.create_future()
        await self._queue.put(_Request(kind, key, args, rows, weights, fut))
        return await fut

    async def _next(self) -> _Request:
        if self._held:
            return self._held.popleft()
        return await self._queue.get()

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next()
            batch, n_rows = [first], len(first.rows)
            # Older held requests that can share this forward go first.
            for req in list(self._held):
                if _compatible(first, req) and n_rows + len(req.rows) <= self.max_batch_size:
                    self._held.remove(req)
                    batch.append(req)
                    n_rows += len(req.rows)
            deadline = loop.time() + self.max_wait_s
            while n_rows < self.max_batch_size:
                timeout = deadline - loop.time()
                try:
                    req = (self._queue.get_nowait() if timeout <= 0
                           else await asyncio.wait_for(self._queue.get(), timeout))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if _compatible(first, req) and n_rows + len(req.rows) <= self.max_batch_size:
                    batch.append(req)
                    n_rows += len(req.rows)
                else:
                    self._held.append(req)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        rows = [r for req in batch for r in req.rows]
        try:
            results, costs = await loop.run_in_executor(self._pool, self._forward, batch[0], rows,
                                                        [w for req in batch for w in req.weights])
        except Exception as e:  # the backend's error goes to every caller of this batch
            for req in batch:
                if not req.future.done():
                    req.future.set_exception(e)
            return
        self.batches += 1
        self.rows_served += len(rows)
        self.requests_served += len(batch)
        self.max_rows_in_batch = max(self.max_rows_in_batch, len(rows))
        start = 0
        for req in batch:
            end = start + len(req.rows)
            if not req.future.done():
                req.future.set_result((results[start:end], costs[start:end]))
            start = end

    def _forward(self, head: _Request, rows: list, weights: list):
        """Runs in the server's single backend thread: one Backend call for the whole batch."""
        before = self.backend.cost.snapshot()
        t0 = time.perf_counter()
        if head.kind == "score_actions":
            sessions = session_ids([r[2] for r in rows])
            kw = {"sessions": sessions} if sessions else {}
            results = self.backend.score_actions([r[0] for r in rows], [list(r[1]) for r in rows], **kw)
        elif head.kind == "token_distributions":
            results = self.backend.token_distributions([r[0] for r in rows], [r[1] for r in rows],
                                                       top_k=head.args)
        elif head.kind == "generate":
            results = self.backend.generate([r[0] for r in rows], head.args)
        elif head.kind == "prompt_hidden":
            results = self.backend.prompt_hidden([r[0] for r in rows], layer=head.args)
        else:  # pragma: no cover - only the public calls enqueue
            raise ValueError(f"unknown call kind {head.kind!r}")
        seconds = time.perf_counter() - t0
        if len(results) != len(rows):
            raise RuntimeError(f"backend {type(self.backend).__name__}.{head.kind} returned "
                               f"{len(results)} results for {len(rows)} rows")
        after = self.backend.cost.snapshot()
        return list(results), apportion_cost(before, after, weights, seconds, results, head.kind)


def apportion_cost(before: dict, after: dict, weights: list, seconds: float, results: list,
                   kind: str) -> list:
    """Split one backend call's CostMeter delta over its rows, by ``weights`` (text length)."""
    total = float(sum(weights)) or 1.0
    d_prompt = after["prompt_tokens"] - before["prompt_tokens"]
    d_bytes = after["weight_bytes_read"] - before["weight_bytes_read"]
    out = []
    for w, res in zip(weights, results):
        share = w / total
        gen = len(getattr(res, "token_ids", [])) if kind == "generate" else 0
        out.append({"prompt_tokens": d_prompt * share, "generated_tokens": gen,
                    "weight_bytes_read": d_bytes * share, "latency_s": seconds,
                    "batch_rows": len(weights)})
    return out


def session_ids(sessions) -> Optional[list]:
    """``sessions`` as a list when some row carries an id, else None (nothing for a backend to keep)."""
    if sessions is None:
        return None
    ids = list(sessions)
    return ids if any(s is not None for s in ids) else None


def _compatible(a: _Request, b: _Request) -> bool:
    return a.kind == b.kind and a.key == b.key


def _check_lengths(call: str, prompts: list, other: list, what: str = "candidate lists/continuations") -> None:
    if len(prompts) != len(other):
        raise ValueError(f"{call}: {len(prompts)} prompts but {len(other)} {what}")


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


def _get_torch_threads() -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return 0
    return int(torch.get_num_threads())


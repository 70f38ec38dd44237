"""Cost of serving a tier through a Ray model-server actor instead of calling it in-process.

``ray_call_overhead`` times the same ``score_actions`` request (one rollout step of ``n_envs``
environments) through a :class:`LocalTierClient` and through a :class:`TierClient` over one
ModelServer actor, and reports medians; the difference is what Ray adds per tier call (a
rollout step makes one call per tier it uses). Used by ``experiments/bench_models.py``.
"""
from __future__ import annotations

import statistics
import time


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (first call loads/compiles lazily)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def ray_call_overhead(backend_factory, n_envs: int = 4, repeats: int = 30, max_wait_ms: float = 0.0,
                      prompts=None, candidates=None, torch_threads: int = 1) -> dict:
    """Median ms per ``score_actions`` call of ``n_envs`` rows: in-process vs through Ray.

    ``backend_factory``: a picklable zero-argument Backend factory (FakeBackend for the pure
    transport cost, a real tier for the realistic share). Ray must be initialised.
    ``torch_threads``: intra-op threads of the in-process call (Ray actors run with one thread
    by default; on a loaded 2-core box two threads made a tiny model 10x slower)."""
    from dmr_rl.config import TierConfig
    from dmr_rl.serving.clients import LocalTierClient, torch_threads_set
    from dmr_rl.serving.launcher import create_model_servers

    prompts = prompts or [f"Task: put a mug {i} in the fridge.\nYou are in a kitchen.\n>" for i in range(n_envs)]
    candidates = candidates or [["go to fridge 1", "open fridge 1", "take mug 1 from countertop 1", "look"]] * n_envs
    local = LocalTierClient("bench", backend_factory())
    with torch_threads_set(torch_threads):
        local_ms = _median_ms(lambda: local.score_actions(prompts, candidates), repeats)
    client = create_model_servers("bench", TierConfig(max_wait_ms=max_wait_ms), backend_factory)
    try:
        ray_ms = _median_ms(lambda: client.score_actions(prompts, candidates), repeats)
        ping_ms = _median_ms(lambda: client.ready(60), repeats)
    finally:
        client.shutdown()
    return {"n_envs": n_envs, "max_wait_ms": max_wait_ms, "local_ms": local_ms, "ray_ms": ray_ms,
            "overhead_ms": ray_ms - local_ms, "actor_ping_ms": ping_ms}

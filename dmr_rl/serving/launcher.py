"""The one place that starts Ray and creates actors and placement groups (OpenRLHF-style).

Drivers call, in order::

    info = ray_init(cfg.ray, cfg.run_dir)                  # local Ray or join a cluster
    clients = create_tier_clients(cfg, ("hp", "lp"))       # model servers, one TierClient per tier
    group = create_rollout_group(cfg, clients, shard_dir)  # rollout-worker actors
    ...
    shutdown_all(group, clients)

Placement: a tier whose ``TierConfig`` asks for GPUs (``num_gpus``, fractional allowed) or custom
resources (``resources: {hp_model: 1}``) gets one placement group with a bundle per replica
(SPREAD); if the cluster cannot offer the bundles within ``place_timeout_s`` an ActorError names
the tier, the bundle and what the cluster has. Other actors take small CPU fractions so a 2-core
machine holds both tiers and a few workers.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path
from typing import Optional

from dmr_rl.errors import ActorError
from dmr_rl.models.agent import tier_model_dir
from dmr_rl.serving.clients import LocalTierClient, TierClient

SERVER_CPUS = 0.25  # CPU share reserved per model-server replica (scheduling only)
WORKER_CPUS = 0.25  # CPU share reserved per rollout worker
MAX_RESTARTS = 3  # default restarts per model server / rollout worker (cfg.ray.max_restarts)
_UNIX_SOCKET_LIMIT = 100  # Ray's socket paths live under the temp dir; AF_UNIX allows ~107 bytes


def ray_init(ray_cfg, run_dir, **kwargs) -> dict:
    """Start a local Ray (``ray_cfg.address`` empty) or join one (``"auto"`` or an address).

    A local Ray writes its session files under ``<run_dir>/ray`` (or a short /tmp path when that
    would exceed the unix-socket length limit); Ray Tune/Train results default to
    ``<run_dir>/ray_results`` instead of ``~/ray_results``. Already initialised: reused as is.
    """
    import ray

    run_dir = Path(run_dir).resolve()
    _redirect_ray_results(run_dir / "ray_results")
    if ray.is_initialized():
        return {"address": "existing", "resources": ray.cluster_resources()}
    opts = dict(include_dashboard=False, log_to_driver=False,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    if ray_cfg.address:
        opts["address"] = ray_cfg.address
    else:
        temp = run_dir / "ray"
        if len(str(temp)) + 60 > _UNIX_SOCKET_LIMIT:
            temp = Path("/tmp") / f"dmr_ray_{hashlib.sha1(str(run_dir).encode()).hexdigest()[:10]}"
        temp.mkdir(parents=True, exist_ok=True)
        opts["_temp_dir"] = str(temp)
        if ray_cfg.num_cpus:
            opts["num_cpus"] = int(ray_cfg.num_cpus)
        if ray_cfg.num_gpus:
            opts["num_gpus"] = int(ray_cfg.num_gpus)
    opts.update(kwargs)
    ray.init(**opts)
    return {"address": ray_cfg.address or "local", "temp_dir": opts.get("_temp_dir", ""),
            "resources": ray.cluster_resources()}


def _redirect_ray_results(path: Path) -> None:
    """Point Ray Train/Tune's default storage (``~/ray_results``) into the run directory."""
    try:
        import ray.train.constants as rtc
    except ImportError:  # pragma: no cover - ray[train] missing
        return
    rtc.DEFAULT_STORAGE_PATH = str(path)
    for name in ("ray.tune.trainable.trainable", "ray.tune.experiment.experiment", "ray.air.config"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "DEFAULT_STORAGE_PATH"):
            mod.DEFAULT_STORAGE_PATH = str(path)


# ---- tiers ----------------------------------------------------------------------------------
def load_tier_backend(tier_cfg, model_dir: str):
    """Picklable backend factory target: the Backend for ``tier_cfg`` over ``model_dir``."""
    from dmr_rl.models import load_backend

    return load_backend(tier_cfg, model_path=model_dir)


def tier_backend_spec(cfg, tier: str):
    """A zero-argument, picklable factory that loads the tier's Backend where it is called."""
    return functools.partial(load_tier_backend, getattr(cfg, tier), tier_model_dir(cfg, tier))


def server_torch_threads(tier_cfg, cpus: float = SERVER_CPUS) -> int:
    """Torch intra-op threads of one model server: its Ray CPU share rounded down, at least 1 (one
    thread per server on a small box, servers spread over the cores; torch's default would give
    every server all cores, and they would fight). 0 (leave torch alone) for GPU tiers and vLLM,
    which runs its own threads."""
    import math

    if getattr(tier_cfg, "backend", "") == "vllm" or not str(getattr(tier_cfg, "device", "cpu")).startswith("cpu"):
        return 0
    return max(1, math.floor(float(cpus)))


def tier_bundle(tier_cfg, cpus: float = SERVER_CPUS) -> dict:
    bundle = {"CPU": float(cpus)}
    if tier_cfg.num_gpus:
        bundle["GPU"] = float(tier_cfg.num_gpus)
    bundle.update({str(k): float(v) for k, v in (tier_cfg.resources or {}).items()})
    return bundle


def tier_placement_group(tier: str, tier_cfg, cpus: float = SERVER_CPUS, place_timeout_s: float = 60.0):
    """A SPREAD placement group with one bundle per replica, or None when the tier needs no GPU
    and no custom resource. Raises ActorError when the cluster cannot place it in time."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = tier_bundle(tier_cfg, cpus)
    if set(bundle) == {"CPU"}:
        return None
    pg = placement_group([dict(bundle) for _ in range(tier_cfg.num_replicas)], strategy="SPREAD",
                         name=f"dmr-{tier}-{os.getpid()}-{id(tier_cfg)}")
    ready, _ = ray.wait([pg.ready()], timeout=place_timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise ActorError(f"cannot place tier {tier!r}: {tier_cfg.num_replicas} bundle(s) of {bundle} are "
                         f"not available within {place_timeout_s:.0f} s; the cluster has "
                         f"{ray.cluster_resources()}")
    return pg


def create_model_servers(tier: str, tier_cfg, backend_spec, cpus: float = SERVER_CPUS,
                         place_timeout_s: float = 60.0, ready_timeout_s: float = 600.0,
                         offset: int = 0, max_restarts: int = MAX_RESTARTS) -> TierClient:
    """Start ``tier_cfg.num_replicas`` ModelServer actors for one tier and wait until each has
    loaded its backend. Returns the load-balancing TierClient over them. Ray restarts a replica
    that dies up to ``max_restarts`` times (on its placement-group bundle); the client resends
    the requests it had in flight (:meth:`TierClient.get`)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from dmr_rl.serving.model_server import ModelServer

    if tier_cfg.num_replicas <= 0:
        raise ActorError(f"tier {tier!r}: num_replicas must be positive, got {tier_cfg.num_replicas}")
    pg = tier_placement_group(tier, tier_cfg, cpus, place_timeout_s)
    actor_cls = ray.remote(ModelServer)
    handles = []
    for i in range(tier_cfg.num_replicas):
        opts = dict(num_cpus=cpus, max_restarts=int(max_restarts), max_task_retries=0, max_concurrency=1000)
        if tier_cfg.num_gpus:
            opts["num_gpus"] = float(tier_cfg.num_gpus)
        if tier_cfg.resources:
            opts["resources"] = {str(k): float(v) for k, v in tier_cfg.resources.items()}
        if pg is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
        if getattr(tier_cfg, "python", ""):  # e.g. the vLLM side virtualenv's interpreter
            opts["runtime_env"] = {"py_executable": os.path.abspath(tier_cfg.python)}
        handles.append(actor_cls.options(**opts).remote(tier, i, backend_spec, tier_cfg.max_batch_size,
                                                        tier_cfg.max_wait_ms, server_torch_threads(tier_cfg, cpus)))
    client = TierClient(tier, handles, offset=offset)
    try:
        info = client.ready(ready_timeout_s)
    except ActorError as e:
        client.shutdown()
        raise ActorError(f"model server of tier {tier!r} failed to start (loading its backend): {e.__cause__ or e}") from e
    client._weight_bytes = float(info[0]["weight_bytes"])
    client.placement_group = pg
    return client


def create_tier_clients(cfg, tiers=("hp", "lp"), local: bool = False, backend_specs: Optional[dict] = None,
                        **server_kw) -> dict:
    """One client per tier: Ray model servers (default) or in-process backends (``local=True``).
    ``backend_specs`` overrides a tier's backend (a zero-argument factory), e.g. in tests."""
    clients = {}
    for tier in tiers:
        spec = (backend_specs or {}).get(tier) or tier_backend_spec(cfg, tier)
        if local:
            clients[tier] = LocalTierClient(tier, spec)
        else:
            server_kw.setdefault("max_restarts", _max_restarts(cfg))
            clients[tier] = create_model_servers(tier, getattr(cfg, tier), spec, **server_kw)
    return clients


# ---- rollout workers ------------------------------------------------------------------------
def create_rollout_workers(n: int, worker_kwargs: dict, clients: dict, cpus: float = WORKER_CPUS,
                           ready_timeout_s: float = 300.0, max_restarts: int = MAX_RESTARTS) -> list:
    """Start ``n`` RolloutWorker actors (worker i writes shard ``worker-<i>``) and wait for them.
    Ray restarts a dead worker up to ``max_restarts`` times; its calls are not retried by Ray (the
    RolloutGroup keeps the episodes it finished and replays only the rest)."""
    import ray

    from dmr_rl.rollout.worker import RolloutWorker

    actor_cls = ray.remote(RolloutWorker)
    handles = []
    for i in range(n):
        wclients = {t: (c.with_offset(i) if isinstance(c, TierClient) else c) for t, c in clients.items()}
        handles.append(actor_cls.options(num_cpus=cpus, max_restarts=int(max_restarts), max_task_retries=0).remote(
            worker_index=i, clients=wclients, **worker_kwargs))
    try:
        ray.get([h.ready.remote() for h in handles], timeout=ready_timeout_s)
    except Exception as e:
        for h in handles:
            ray.kill(h)
        raise ActorError(f"rollout workers failed to start: {e}") from e
    return handles


def create_rollout_group(cfg, clients: dict, shard_dir, local: bool = False, num_workers: Optional[int] = None,
                         envs_per_worker: Optional[int] = None, split: Optional[str] = None, **worker_kw):
    """A RolloutGroup over ``num_workers`` workers (Ray actors, or in-process with ``local=True``)
    hosting ``envs_per_worker`` environments each, configured from ``cfg``."""
    from dmr_rl.rollout.group import RolloutGroup, worker_kwargs_from_config
    from dmr_rl.rollout.worker import RolloutWorker

    n = int(num_workers or cfg.collect.num_workers)
    kwargs = worker_kwargs_from_config(cfg, shard_dir, envs_per_worker=envs_per_worker, split=split)
    kwargs.update(worker_kw)
    if local:
        workers = [RolloutWorker(worker_index=i, clients=clients, **kwargs) for i in range(n)]
        group = RolloutGroup(workers, shard_dir, local=True)
        group.run_seed = int(cfg.seed)
        return group
    group = RolloutGroup(create_rollout_workers(n, kwargs, clients, max_restarts=_max_restarts(cfg)), shard_dir,
                         local=False)
    group.run_seed = int(cfg.seed)
    return group


def _max_restarts(cfg) -> int:
    return int(getattr(cfg.ray, "max_restarts", MAX_RESTARTS))


def shutdown_all(group=None, clients: Optional[dict] = None) -> None:
    """Stop rollout workers and model servers (and their placement groups)."""
    if group is not None:
        group.shutdown()
    for client in (clients or {}).values():
        client.shutdown()
        pg = getattr(client, "placement_group", None)
        if pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(pg)

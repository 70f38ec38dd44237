"""Rollout workers: N environments stepped together, routed per step between two tiers.

:class:`RolloutWorker` is a plain class (used in-process, or as a Ray actor made by
``dmr_rl.serving.launcher``). Each step of its active environments:

1. build one :class:`StepContext` and prompt per environment;
   (``lp_hidden`` routers, or ``record_hidden=True``: the LP tier's hidden state of each prompt
   at the router's ``hidden_layer``, one batched call kept in ``extra["lp_hidden"]``; paid as an
   LP call on steps LP does not act on, or as ``extra["lp_part"]`` = layer / LP's layers of one
   when the pass stops at a decoder layer; its weight bytes, that share of LP's, at every step);
2. ask the router for all of them at once (a learned router, or a baseline by name);
3. send each environment's request to the chosen tier's client, one batched call per tier
   (cascade routers: LP for all first, then HP for the flagged ones, both paid; a router that
   ``escalates``: LP on the steps it gave LP, then HP on top where LP's distribution makes it escalate;
   KL-oracle routers, or ``record_kl=True``: both tiers for all);
4. choose the actions (score mode: from the admissible-action distribution; generate mode:
   free text matched to an admissible action), step the environments, record.

Score mode sends one session id per episode with its rows (``ActingSpec.sessions``), so a tier
may keep the episode's KV cache between its steps (the prompt only grows); when an episode ends
its sessions are ended on the tiers that served it (one ``end_sessions`` call per tier per step).

Finished episodes are appended to the worker's own :class:`TrajectoryStore` shard at once
(``worker-<i>.jsonl``, fsync'd), so a worker that dies loses no finished episode.

:class:`~dmr_rl.rollout.group.RolloutGroup` spreads task lists over workers and exposes
``rollout_fn`` for GRPO.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from dmr_rl.rollout.records import (HP, LP, TIER_NAMES, EpisodeRecord, StepRecord, TrajectoryStore,
                                    summarise_episodes)
from dmr_rl.seeding import RowRngs
from dmr_rl.step import StepContext

METHOD_ALIASES = {"hp": ("hp_only", {}), "lp": ("lp_only", {}), "mixed": ("random", {"hp_ratio": 0.5})}


@dataclass
class ActingSpec:
    """How the agent turns a tier's output into an action (see ``dmr_rl.models.acting``)."""

    action_mode: str = "score"
    temperature: float = 0.0
    max_new_tokens: int = 24
    length_normalised: bool = False
    prompt: dict = field(default_factory=dict)  # PromptConfig fields (the agent's own, when trained)
    sessions: bool = True  # score mode: one session id per episode, so tiers may keep its KV cache across steps


@dataclass
class _TierOut:
    index: int
    probs: np.ndarray
    raw: object  # ActionScores or Generation
    cost: dict


class RolloutWorker:
    """Hosts ``num_envs`` environments and two tier clients; runs episodes over task indices."""

    def __init__(self, worker_index: int, clients: dict, env_spec, num_envs: int, shard_dir: str,
                 acting: Optional[ActingSpec] = None, router=None, record_kl: bool = False,
                 shard_prefix: str = "worker", record_hidden: bool = False, hidden_layer: int = 0):
        from environments.base import BatchTextEnv

        self.worker_index = int(worker_index)
        self.clients = clients
        self.envs = BatchTextEnv([env_spec.make() for _ in range(int(num_envs))])
        self.store = TrajectoryStore(shard_dir, f"{shard_prefix}-{self.worker_index}")
        self.acting = acting or ActingSpec()
        from dmr_rl.models.prompting import PromptConfig

        self.prompt_config = PromptConfig.from_dict(self.acting.prompt)
        self.record_kl = bool(record_kl)
        self.record_hidden = bool(record_hidden)
        self.hidden_layer = int(hidden_layer)  # the LP layer recorded with record_hidden (0: the last)
        self._lp_layers: Optional[int] = None
        self._router_spec = router
        self._router = router if hasattr(router, "route") else None
        self._baselines: dict = {}
        self._runs = 0

    # ---- management ----------------------------------------------------------------------
    def ready(self) -> dict:
        return {"worker": self.worker_index, "pid": os.getpid(), "num_envs": len(self.envs), "shard": str(self.store.path),
                "num_tasks": self.envs.envs[0].num_tasks}

    def set_router(self, router) -> None:
        """A Router instance, or a spec ``{"name": ..., "kwargs": {...}}`` built on first use."""
        self._router_spec = router
        self._router = router if hasattr(router, "route") else None

    def set_router_weights(self, weights) -> None:
        """New weights for the learned router (GRPO pushes them every iteration)."""
        self.router.set_weights(weights)

    @property
    def router(self):
        if self._router is None:
            spec = self._router_spec
            if spec is None:
                raise ValueError("this worker has no learned router: pass router= or call set_router()")
            from dmr_rl.router import make_router

            self._router = make_router(spec["name"], **spec.get("kwargs", {}))
        return self._router

    def _router_for(self, method: str):
        if method == "router":
            return self.router
        name, kwargs = METHOD_ALIASES.get(method, (method, {}))
        if name not in self._baselines:
            from dmr_rl.router import make_router

            self._baselines[name] = make_router(name, **kwargs)
        return self._baselines[name]

    def shutdown(self) -> bool:
        for env in self.envs.envs:
            try:
                env.close()
            except Exception:
                pass
        return True

    # ---- episodes ------------------------------------------------------------------------
    def run_episodes(self, task_indices, method: str = "router", seed: int = 0, sample: bool = False,
                     return_episodes: bool = False, positions=None, rng_key=None, draws=None,
                     call_id: str = "") -> dict:
        """Play one episode per entry of ``task_indices`` (repeats allowed: a GRPO group) on the
        worker's environments, ``method`` routing ("router", a baseline name, or hp/lp/mixed).
        ``positions``: an id per entry (default 0..n-1), kept in ``extra["position"]``.
        ``rng_key``: (run_seed, method, point); every random choice of an episode draws from
        ``dmr_rl.seeding.episode_rng(*rng_key, seed, task, draw)`` (None: (0, method, "default")).
        ``draws``: per entry, how often its task occurred earlier in the whole task list (default:
        counted within this call's list; a group passes the counts of the list it split).
        ``call_id``: kept in ``extra["call"]`` so a group can find a dead worker's finished episodes.
        Returns a summary (sums, so summaries merge); the EpisodeRecords under ``episode_records``
        with ``return_episodes``."""
        from dmr_rl.seeding import check_rng_key, occurrence_draws

        router = self._router_for(method)
        self._runs += 1
        key = check_rng_key(rng_key, method)
        tasks = [int(t) for t in task_indices]
        positions = list(range(len(tasks))) if positions is None else [int(p) for p in positions]
        draws = occurrence_draws(tasks) if draws is None else [int(d) for d in draws]
        if not len(positions) == len(draws) == len(tasks):
            raise ValueError(f"run_episodes: {len(tasks)} tasks, {len(positions)} positions, {len(draws)} draws")
        queue = deque((p, t, d, key, seed, call_id) for p, t, d in zip(positions, tasks, draws))
        n_env = len(self.envs)
        slot: list = [None] * n_env  # per env: [position, EpisodeRecord, StepContext, rng, session id, tiers used]
        finished: list = []
        t0 = time.perf_counter()
        while queue or any(s is not None for s in slot):
            for i in range(n_env):
                if slot[i] is None and queue:
                    slot[i] = self._start(i, *queue.popleft())
            active = [i for i in range(n_env) if slot[i] is not None]
            self._step(active, slot, router, RowRngs([slot[i][3] for i in active]), sample)
            ended: dict = {}  # tier -> session ids of episodes that finished this step
            for i in active:
                ep = slot[i][1]
                if self.envs.done[i]:
                    info = self.envs.last_info[i]
                    ep.won, ep.score = bool(info.get("won", False)), float(info.get("score", 0.0))
                    self.store.append(ep)  # durable before anything else happens
                    finished.append(ep)
                    for tier in slot[i][5]:
                        ended.setdefault(tier, []).append(slot[i][4])
                    slot[i] = None
            self._end_sessions(ended)
        summary = summarise_episodes(finished, time.perf_counter() - t0)
        summary.update(worker=self.worker_index, shard=str(self.store.path), method=method,
                       fault_notes=[n for c in self.clients.values() for n in getattr(c, "drain_notes", list)()])
        if return_episodes:
            summary["episode_records"] = finished
        return summary

    def _start(self, i: int, position: int, task_index: int, draw: int, key: tuple, seed: int, call_id: str):
        from dmr_rl.seeding import episode_rng

        obs, info = self.envs.envs[i].reset(options={"task_index": task_index})
        self.envs.done[i], self.envs.last_obs[i], self.envs.last_info[i] = False, obs, info
        run_seed, method, point = key
        # the id names the episode's rng key: the same id is the same episode, whoever plays it
        ep = EpisodeRecord(episode_id=f"{method}-{point}-s{seed}-t{task_index}-d{draw}",
                           task_index=task_index, task_id=str(info.get("task_id", "")),
                           task_type=str(info.get("task_type", "")), task=str(info.get("task", "")),
                           method=method, seed=int(seed),
                           extra={"worker": self.worker_index, "position": position, "draw": int(draw),
                                  "rng_key": [run_seed, method, point], "call": str(call_id)})
        ctx = StepContext(task=ep.task, obs=obs, history=[], admissible=list(info.get("admissible_commands") or []),
                          step=0, task_type=ep.task_type)
        # unique per episode played by this worker process (a repeat of the same id would only hit a
        # cache whose prefix is checked token by token, so even that could not change a result)
        session = f"w{self.worker_index}-{os.getpid()}-r{self._runs}-p{position}-{ep.episode_id}"
        return [position, ep, ctx, episode_rng(run_seed, method, point, seed, task_index, draw), session, set()]

    def _end_sessions(self, ended: dict) -> None:
        """One ``end_sessions`` call per tier for the episodes that finished (ids per tier)."""
        for tier, ids in ended.items():
            end = getattr(self.clients.get(tier), "end_sessions", None)
            if end is not None and ids:
                end(ids)

    def _step(self, active: list, slot: list, router, rng, sample: bool) -> None:
        from dmr_rl.models.prompting import build_prompt

        ctxs = [slot[i][2] for i in active]
        sids = [slot[i][4] for i in active] if self.acting.sessions and self.acting.action_mode == "score" else None
        for c in ctxs:
            if not c.admissible:
                c.admissible = ["look"]
        prompts = [build_prompt(c, self.prompt_config.history_window, self.prompt_config) for c in ctxs]
        everyone = list(range(len(active)))
        outs = {HP: {}, LP: {}}
        paid = [set() for _ in active]
        wants_hidden = bool(getattr(router, "needs_lp_hidden", False))
        layer = int(getattr(router, "hidden_layer", 0)) if wants_hidden else self.hidden_layer
        reads = wants_hidden or self.record_hidden
        part = self._layer_share(layer) if reads else 0.0
        hidden, hidden_costs = self._hidden(prompts, layer) if reads else (None, None)
        kw = {"lp_hidden": hidden} if wants_hidden else {}
        if router.needs_both or self.record_kl:
            outs[HP], outs[LP] = self._act([("hp", everyone), ("lp", everyone)], ctxs, prompts, rng, sids)
            dec = router.route(ctxs, rng, sample, lp_action_probs=[outs[LP][k].probs for k in everyone],
                               hp_action_probs=[outs[HP][k].probs for k in everyone], **kw)
            for k in everyone:
                paid[k] = {HP, LP} if router.needs_both else {int(dec.tiers[k])}
        elif router.needs_lp_first:
            outs[LP], = self._act([("lp", everyone)], ctxs, prompts, rng, sids)
            dec = router.route(ctxs, rng, sample, lp_action_probs=[outs[LP][k].probs for k in everyone], **kw)
            flagged = [k for k in everyone if int(dec.tiers[k]) == HP]
            outs[HP], = self._act([("hp", flagged)], ctxs, prompts, rng, sids)
            for k in everyone:
                paid[k] = {LP, HP} if k in outs[HP] else {LP}
        else:
            dec = router.route(ctxs, rng, sample, **kw)
            both = {k for k in everyone if router.both_tiers_at(ctxs[k])}  # e.g. the causal check's forced steps
            calls = [(TIER_NAMES[t], [k for k in everyone if int(dec.tiers[k]) == t or k in both]) for t in (HP, LP)]
            outs[HP], outs[LP] = self._act(calls, ctxs, prompts, rng, sids)
            for k in everyone:
                paid[k] = {HP, LP} if k in both else {int(dec.tiers[k])}
        escalated = self._escalate(router, dec, outs, paid, ctxs, prompts, rng, sids) if router.escalates else set()
        if sids is not None:  # the tiers that now hold state of each episode
            for t in (HP, LP):
                for k in outs[t]:
                    slot[active[k]][5].add(TIER_NAMES[t])
        kls = self._kl(everyone, outs, ctxs, prompts)
        actions = {}
        for k, i in enumerate(active):
            tier = int(dec.tiers[k])
            actions[i] = ctxs[k].admissible[outs[tier][k].index]
        results = self.envs.step(actions)
        from dmr_rl.models.prompting import context_after

        for k, i in enumerate(active):
            tier = int(dec.tiers[k])
            obs, reward, _, _, info = results[i]
            costs = [outs[t][k].cost for t in paid[k]]
            gen = sum(c.get("generated_tokens", 0) for c in costs)
            wbytes = sum(self.clients[TIER_NAMES[t]].weight_bytes * (1 + outs[t][k].cost.get("generated_tokens", 0))
                         for t in paid[k])
            extra = {}
            if k in outs[HP] and k in outs[LP]:  # both tiers ran: did their greedy actions agree?
                extra["tiers_agree"] = bool(outs[HP][k].index == outs[LP][k].index)
            if k in outs[LP]:  # LP's full pass ran: its confidence (what an escalating router reads)
                extra["lp_max_prob"] = float(np.max(outs[LP][k].probs))
            if k in escalated:
                extra["escalated"] = True
            paid_names = {TIER_NAMES[t] for t in paid[k]}
            if hidden is not None:  # the LP prompt pass the router read (all of it, or up to a layer)
                costs.append(hidden_costs[k])
                wbytes += part * self.clients["lp"].weight_bytes
                extra["lp_hidden"] = [round(float(x), 5) for x in np.asarray(hidden[k]).reshape(-1)]
                if part >= 1.0:
                    paid_names.add("lp")
                elif "lp" not in paid_names:  # on LP's own steps it is the start of LP's pass
                    extra["lp_part"] = part
            paid_names = sorted(paid_names)
            ctx = ctxs[k]
            rec = StepRecord(step=ctx.step, obs=ctx.obs, action=actions[i], tier=tier,
                             admissible=list(ctx.admissible), prompt=prompts[k],
                             router_prob=float(dec.p_hp[k]), router_logprob=float(dec.logprobs[k]),
                             reward=float(reward), prompt_tokens=int(round(sum(c["prompt_tokens"] for c in costs))),
                             gen_tokens=int(gen), weight_bytes=float(wbytes),
                             latency_s=float(sum(c["latency_s"] for c in costs)),
                             kl=None if kls[k] is None else float(kls[k]),
                             extra={"paid": paid_names, "invalid": bool(info.get("invalid", False)),
                                    "action_prob": float(outs[tier][k].probs[outs[tier][k].index]), **extra})
            slot[i][1].steps.append(rec)
            slot[i][2] = context_after(ctx, actions[i], obs, list(info.get("admissible_commands") or []))

    def _escalate(self, router, dec, outs: dict, paid: list, ctxs: list, prompts: list, rng, sids) -> set:
        """Steps ``route`` gave LP that the router hands on to HP after seeing LP's distribution
        (``Router.escalate``): HP runs on them (one batched call; LP's pass stays paid) and acts.
        Updates ``dec.tiers``, ``outs`` and ``paid`` in place; returns the escalated rows."""
        lp_rows = [k for k in range(len(ctxs)) if int(dec.tiers[k]) == LP]
        if not lp_rows:
            return set()
        up = np.asarray(router.escalate([ctxs[k] for k in lp_rows], [outs[LP][k].probs for k in lp_rows]), dtype=bool)
        flagged = [k for k, u in zip(lp_rows, up) if u]
        got, = self._act([("hp", [k for k in flagged if k not in outs[HP]])], ctxs, prompts, rng, sids)
        outs[HP].update(got)
        for k in flagged:
            dec.tiers[k] = HP
            paid[k] = paid[k] | {HP, LP}
        return set(flagged)

    def _hidden(self, prompts: list, layer: int = 0) -> tuple:
        """The LP tier's hidden state of every prompt at ``layer`` (0: the last): (vectors, per-row costs)."""
        client = self._lp_client()
        if hasattr(client, "prompt_hidden_ref"):
            return client.get(client.prompt_hidden_ref(prompts, layer))
        return client.prompt_hidden_costed(prompts, layer)

    def _lp_client(self):
        """The LP tier's client, which lp_hidden routing reads (a ValueError naming it when absent)."""
        if "lp" not in self.clients:
            raise ValueError("lp_hidden routing needs the LP tier, but this worker has no 'lp' client")
        return self.clients["lp"]

    def _layer_share(self, layer: int) -> float:
        """The share of an LP call a hidden pass up to decoder layer ``layer`` costs (1.0 for 0: the whole pass)."""
        if not layer:
            return 1.0
        if self._lp_layers is None:
            self._lp_layers = int(self._lp_client().info()[0].get("num_layers") or 0)
        if not 0 < layer <= self._lp_layers:
            raise ValueError(f"router reads LP layer {layer}, but the LP tier reports {self._lp_layers} decoder layers")
        return layer / self._lp_layers

    def _act(self, requests: list, ctxs: list, prompts: list, rng, sessions: Optional[list] = None) -> list:
        """Batched calls, one per (tier, contexts in ``which``) in ``requests``; with Ray clients
        all are sent before any is awaited, so the tiers work at the same time. ``sessions``: one id
        per context (score mode), or None. Returns one {k: _TierOut} per request."""
        sent = [self._send(tier, which, ctxs, prompts, rng, sessions) for tier, which in requests]
        return [self._receive(h, which, ctxs, rng) for h, (_, which) in zip(sent, requests)]

    def _send(self, tier: str, which: list, ctxs: list, prompts: list, rng: RowRngs, sessions=None):
        if not which:
            return None
        client = self.clients[tier]
        a = self.acting
        sub_prompts = [prompts[k] for k in which]
        if a.action_mode == "score":
            args = ("score_actions", sub_prompts, [list(ctxs[k].admissible) for k in which])
            if sessions is not None:
                args += ([sessions[k] for k in which],)
        else:
            from dmr_rl.models.backends.base import SamplingParams

            args = ("generate", sub_prompts, SamplingParams(max_new_tokens=a.max_new_tokens,
                                                            temperature=a.temperature,
                                                            seed=int(rng.row(which[0]).integers(2**31))))
        if hasattr(client, args[0] + "_ref"):
            return client, getattr(client, args[0] + "_ref")(*args[1:])
        return None, getattr(client, args[0] + "_costed")(*args[1:])

    def _receive(self, handle, which: list, ctxs: list, rng) -> dict:
        if handle is None:
            return {}
        from dmr_rl.models.acting import choose_action, match_action, one_hot

        client, value = handle
        results, costs = client.get(value) if client is not None else value
        a = self.acting
        out = {}
        for k, r, c in zip(which, results, costs):
            adm = list(ctxs[k].admissible)
            if a.action_mode == "score":
                idx, probs = choose_action(r, adm, a.temperature, rng.row(k), a.length_normalised)
            else:
                idx = adm.index(match_action(r.text, adm))
                probs = one_hot(idx, len(adm))
            out[k] = _TierOut(idx, probs, r, c)
        return out

    def _kl(self, everyone: list, outs: dict, ctxs: list, prompts: list) -> list:
        """Per context: KL(HP || LP) where both tiers ran on it (score mode: free, over the
        admissible actions; generate mode: teacher-forced on the HP action, only with
        ``record_kl``), else None."""
        both = [k for k in everyone if k in outs[HP] and k in outs[LP]]
        kls = [None] * len(everyone)
        if not both:
            return kls
        if self.acting.action_mode == "score":
            from dmr_rl.models.kl import action_kl

            for k in both:
                kls[k] = action_kl(outs[HP][k].raw, outs[LP][k].raw, self.acting.length_normalised)
            return kls
        if not self.record_kl:
            return kls
        from dmr_rl.models.kl import token_kl_batch

        acts = [ctxs[k].admissible[outs[HP][k].index] for k in both]
        hp = self.clients["hp"].token_distributions([prompts[k] for k in both], acts)
        lp = self.clients["lp"].token_distributions([prompts[k] for k in both], acts)
        for k, v in zip(both, token_kl_batch(hp, lp)[0]):
            kls[k] = float(v)
        return kls


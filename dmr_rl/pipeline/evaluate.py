"""``dmr eval``: routers and baselines on every task of the evaluation split, compared at matched cost.

Phases, each (operating point, seed) written as it finishes so an interrupted evaluation resumes:

1. **Calibrate** (:mod:`dmr_rl.pipeline.calibrate`): every learned router's thresholds are chosen on
   the validation split to hit ``eval.target_hp_ratios``; the test split is only measured.
2. **Routers** at their calibrated thresholds (points ``r0.20``...), and a GRPO router also as the
   sampled policy it was trained as (point ``sampled``); with ``eval.escalate_shares`` each also
   with its LP-confidence floor (``grpo_escalate/r0.40``..., :mod:`dmr_rl.pipeline.escalation`).
   ``eval.calibrated_baselines`` (the
   cascade) are calibrated the same way and play here as ``cascade_calibrated/r0.20``..., kind
   router: they get matched baselines and paired comparisons like a learned router.
3. **Fixed baselines**: HP-only, LP-only, the LP-confidence cascade and the KL oracle at their sweeps
   (``eval_points.BASELINE_SWEEPS``, or ``eval.baseline_sweeps``).
4. **Matched baselines**: random routing at each router point's *realised* HP ratio, and first-k at
   the k whose realised ratio comes closest (a second k is tried when the first misses by > 0.02).

Who plays how often: every method plays every task of the split (``eval.episodes`` = 0) or the same
evenly spread subset. A deterministic method (greedy agent, thresholded router, HP/LP-only,
cascade, first-k, oracle) on a deterministic environment gives the same episode under every seed,
so it is played once (``eval.seeds[0]``); stochastic ones (random routing, sampled routers, a
sampling agent) are played under every seed, each draw keyed by (run seed, method, point, seed,
task), so methods pair exactly and a resumed run reproduces them.

HP ratio, everywhere: per step, the tiers it paid (a cascade's LP pass counts as LP use); per task,
HP calls / all calls; a method's ratio is the mean over tasks
(:func:`dmr_rl.report.metrics.realised_hp_ratio`).

Episodes go to ``<run_dir>/eval/<method>/<point>/seed_<s>/`` (:mod:`dmr_rl.report.layout`);
``point.json`` beside them says what the point is (kind router/baseline, stochastic, threshold,
target or matched ratio). ``results.json`` is written to ``<run_dir>/eval/`` at the end.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from dmr_rl.pipeline.eval_points import (MATCH_TOLERANCE, MATCHED, ROUTER_METHOD, STOCHASTIC_BASELINES,
                                         OperatingPoint, baseline_point, baseline_points, env_is_deterministic,
                                         parse_router_ckpts, router_points, sweep_points)
from dmr_rl.pipeline.timing import eta_seconds, format_duration
from dmr_rl.report import layout
from dmr_rl.report.metrics import cost_equivalent_hp_ratio, episode_cost, realised_hp_ratio
from environments.errors import DataError

def eval_tasks(num_tasks: int, episodes: int) -> list:
    """Every task of the split (``episodes`` <= 0 or >= the split) or an evenly spread fixed subset."""
    from environments.runner import spread_tasks

    if num_tasks <= 0:
        raise ValueError("the evaluation split has no tasks")
    return list(range(num_tasks)) if episodes <= 0 or episodes >= num_tasks else spread_tasks(num_tasks, episodes)


def start_group(cfg, shard_dir=None):
    """Ray (local or ``ray.address``), both tiers' model servers and ``collect.num_workers``
    rollout workers on the evaluation split. Returns (group, clients); stop with :func:`stop_group`."""
    from dmr_rl.serving import launcher

    launcher.ray_init(cfg.ray, cfg.run_dir)
    clients = launcher.create_tier_clients(cfg, ("hp", "lp"))
    try:
        group = launcher.create_rollout_group(cfg, clients, shard_dir or layout.eval_dir(cfg.run_dir) / "_worker_shards",
                                              split=cfg.env.eval_split)
    except BaseException:
        launcher.shutdown_all(None, clients)
        raise
    return group, clients


def record_tiers(run_dir, clients: dict) -> None:
    """Write what each tier's replicas run as (backend, resolved dtype, device ...) to ``eval/tiers.json``."""
    from dmr_rl.atomic_io import write_atomic

    info = {tier: client.info() for tier, client in clients.items()}
    write_atomic(layout.tiers_path(run_dir), json.dumps(layout.json_safe(info), indent=1, default=str))


def lp_bytes_share(clients: dict) -> Optional[float]:
    """LP's weight bytes per call over HP's, from the tier clients (the price of a step that pays both
    tiers); None, with a warning, when LP does not read fewer bytes than HP (then no point is priced)."""
    hp, lp = float(clients["hp"].weight_bytes), float(clients["lp"].weight_bytes)
    if hp > 0 and 0 <= lp < hp:
        return lp / hp
    warnings.warn(f"tier weight bytes: HP {hp:.4g}, LP {lp:.4g}; LP is not cheaper, so router points that pay "
                  "both tiers get no random baseline at a cost-equivalent HP ratio")
    return None


def stop_group(group, clients) -> None:
    from dmr_rl.serving import launcher

    launcher.shutdown_all(group, clients)


def num_tasks_of(group) -> int:
    return int(group.num_tasks())


def run_point(group, point: OperatingPoint, tasks: list, seed: int, out_dir: Path, run_seed: int = 0) -> list:
    """Play one operating point for one seed over ``tasks``; write its episodes; return them."""
    from dmr_rl.rollout.records import TrajectoryStore

    group.set_router(point.spec)
    summary = group.run_episodes(tasks, "router", seed=seed, sample=point.sample, return_episodes=True,
                                 rng_key=(int(run_seed), point.method, point.point))
    episodes = summary["episode_records"]
    for ep in episodes:
        ep.method = point.method
        ep.extra["point"] = point.point
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a partial earlier attempt
    TrajectoryStore(out_dir, "driver").append(episodes)
    return episodes


def _complete(out_dir: Path, n: int) -> list:
    """The episodes already written for this (point, seed) when all ``n`` are there, else []."""
    if not out_dir.is_dir():
        return []
    from dmr_rl.rollout.records import TrajectoryStore

    eps = TrajectoryStore.read(out_dir)
    return eps if len(eps) >= n else []


def refuse_other_knobs(run_dir, method: str, point: str, params: dict) -> None:
    """A point directory whose episodes were played with other knob values (a threshold, floor or
    ratio recalibrated since) is never resumed under the new ones: a DataError names the point and
    the values (its ``matched_to`` list, which only grows, is not a knob)."""
    pdir = layout.point_dir(run_dir, method, point)
    if not (pdir / "point.json").exists() or not any(pdir.glob("seed_*/*.jsonl")):
        return
    old = layout.read_json(pdir / "point.json").get("params", {})
    keys = sorted(k for k in set(old) | set(params) if k != "matched_to" and old.get(k) != params.get(k))
    if keys:
        raise DataError(f"{pdir}: its episodes were played with {', '.join(f'{k}={old.get(k)!r}' for k in keys)}; "
                        f"this evaluation asks {', '.join(f'{k}={params.get(k)!r}' for k in keys)}. Move that "
                        "directory away (its episodes stay there) or evaluate in a fresh run directory")


class Evaluation:
    """Plays operating points over the evaluation split, resumably; keeps what each point realised."""

    def __init__(self, cfg, group, tasks: list, progress: bool = True, lp_bytes_share: Optional[float] = None):
        from dmr_rl.pipeline.timing import Timers

        self.cfg, self.group, self.tasks, self.progress = cfg, group, list(tasks), progress
        self.lp_bytes_share = lp_bytes_share  # LP's weight bytes / HP's: prices a point that pays both tiers
        self.run_dir = Path(cfg.run_dir)
        self.seeds = [int(s) for s in cfg.eval.seeds]
        self.timers = Timers()
        self.played: list = []  # (point, episodes of all its seeds)
        self.planned = 0  # episodes the evaluation expects to play (an estimate: see plan())
        self.timed_eps, self.timed_s = 0, 0.0  # for the ETA: episodes played in this call and their time

    def plan(self, points: list, matched: list) -> int:
        """Episodes expected for ``points`` plus, per router point, the ``matched`` baselines
        (random under every seed, first-k once on a deterministic environment; a calibrated cascade,
        which pays both tiers, random twice: also at its cost-equivalent ratio); corrections, reuse
        of matched baselines and routers reading LP's hidden state make the real count differ a little."""
        n, det = len(self.tasks), env_is_deterministic(self.cfg)
        per_seed = {True: len(self.seeds), False: 1}
        total = sum(n * per_seed[p.stochastic] for p in points)
        for p in points:
            if p.params.get("kind") == "router":
                total += sum(n * per_seed[(m in STOCHASTIC_BASELINES) or not det] for m in matched)
                if "random" in matched and p.params.get("calibrated_baseline") and self.lp_bytes_share is not None:
                    total += n * len(self.seeds)
        self.planned = total
        return total

    def play(self, p: OperatingPoint) -> list:
        """Every seed the point needs (all for stochastic points, the first otherwise); resumable.
        A point this evaluation already played is not played or listed again: its episodes are
        returned and the new ``matched_to`` entries are added to its own."""
        for q, eps in self.played:
            if (q.method, q.point) == (p.method, p.point):
                self._match(q, p.params.get("matched_to", []))
                return eps
        refuse_other_knobs(self.run_dir, p.method, p.point, {**p.params, "stochastic": p.stochastic})
        layout.write_point_meta(self.run_dir, p.method, p.point, {**p.params, "stochastic": p.stochastic},
                                default=p.default)
        episodes = []
        for s in (self.seeds if p.stochastic else self.seeds[:1]):
            out_dir = layout.seed_dir(layout.point_dir(self.run_dir, p.method, p.point), s)
            eps = _complete(out_dir, len(self.tasks))
            if not eps:
                with self.timers(f"eval/{p.method}"):
                    eps = run_point(self.group, p, self.tasks, s, out_dir, run_seed=int(self.cfg.seed))
                self.timed_eps += len(eps)
                self.timed_s += self.timers.last(f"eval/{p.method}")
            episodes += eps
        self.played.append((p, episodes))
        if self.progress:
            won = np.mean([e.won for e in episodes]) if episodes else float("nan")
            print(f"eval {p.method}/{p.point}: success {won:.3f}, HP ratio {realised_hp_ratio(episodes):.3f} "
                  f"({len(episodes)} episodes); {self.eta_line()}", flush=True)
        return episodes

    def eta_line(self) -> str:
        """``"episodes 120 of ~400 planned, ETA 9m20s"``, the rate from the episodes played in this call."""
        done = sum(len(eps) for _, eps in self.played)
        left = max(0, self.planned - done)
        eta = eta_seconds(self.timed_eps, self.timed_eps + left, self.timed_s) if left else 0.0
        return f"episodes {done} of ~{max(self.planned, done)} planned, ETA {format_duration(eta)}"

    def matched_baselines(self, names: list) -> None:
        """Random and first-k at each played router point's realised HP ratio (a point that lands below
        it by more than ``MATCH_TOLERANCE`` is corrected once; one that lands above is kept: it had
        more HP than the router). A baseline point already
        played whose realised ratio is within ``MATCH_TOLERANCE / 2`` of a later router point's serves
        it too (``matched_to`` lists every router point it stands beside). A router point that pays
        both tiers on some steps (LP first, HP on top) reads more weight bytes than its HP ratio says:
        random also runs at its cost-equivalent ratio (:func:`metrics.cost_equivalent_hp_ratio`), the
        point the report's *nearest in cost* row compares it with, unless the random point matched on
        HP ratio already reads at least the router's weight bytes per episode (then that point is the
        nearest in cost, or costs more: the comparison needs no other)."""
        det = env_is_deterministic(self.cfg)
        for p, eps in [(p, e) for p, e in self.played if p.params.get("kind") == "router"]:
            r = realised_hp_ratio(eps)
            if not np.isfinite(r):
                continue
            target = f"{p.method}/{p.point}"
            if "random" in names:
                matched = self._random_at(r, target, det)
                if self.lp_bytes_share is not None:
                    q = cost_equivalent_hp_ratio(eps, self.lp_bytes_share)
                    if q - r > MATCH_TOLERANCE and episode_cost(matched) < episode_cost(eps):
                        self._random_at(min(q, 1.0), target, det)
            if "first_k" in names and self._reuse("first_k", r, target) is None:
                k = max(0, int(round(r * np.mean([e.length for e in eps]))))
                got = realised_hp_ratio(self.play(baseline_point("first_k", f"k{k}", {"k": k}, det, matched_to=[target])))
                if r - got > MATCH_TOLERANCE:  # below the router's ratio: one step up (above it: conservative)
                    if self._reuse("first_k", r, target, MATCH_TOLERANCE) is None:
                        self.play(baseline_point("first_k", f"k{k + 1}", {"k": k + 1}, det, matched_to=[target]))

    def _random_at(self, r: float, target: str, det: bool) -> list:
        """Random routing at HP ratio ``r`` beside router point ``target``: a played random point within
        ``MATCH_TOLERANCE / 2`` of ``r``, else a new one, with one correction of its Bernoulli rate
        when it realised less than ``r - MATCH_TOLERANCE``. One that realised more HP than ``r`` is
        kept as it is: a router that beats it beats random at its own ratio a fortiori (the report
        says "baseline at more HP"), and a correction would cost another pass of every seed.
        Returns the episodes of the point that stands beside ``target``."""
        reused = self._reuse("random", r, target)
        if reused is not None:
            return reused
        q = baseline_point("random", f"ratio{r:.3f}", {"hp_ratio": round(r, 4)}, det, matched_to=[target])
        eps = self.play(q)
        got = realised_hp_ratio(eps)
        if r - got > MATCH_TOLERANCE:  # one correction of the Bernoulli rate
            q2 = float(np.clip(r + (r - got), 0.0, 1.0))
            eps = self.play(baseline_point("random", f"ratio{q2:.3f}", {"hp_ratio": round(q2, 4)}, det,
                                      matched_to=[target]))
        return eps

    def _reuse(self, method: str, r: float, target: str, tol: float = MATCH_TOLERANCE / 2) -> Optional[list]:
        """Mark the played ``method`` point nearest ``r`` (within ``tol``) as matched to ``target`` and
        return its episodes; None when there is none."""
        near = [(abs(realised_hp_ratio(e) - r), i) for i, (p, e) in enumerate(self.played) if p.method == method]
        near = [x for x in near if x[0] <= tol]
        if not near:
            return None
        p, eps = self.played[min(near)[1]]
        self._match(p, [target])
        return eps

    def _match(self, p: OperatingPoint, targets: list) -> None:
        """Add ``targets`` (router points) to the played point ``p``'s ``matched_to``; rewrite its point.json."""
        new = [t for t in targets if t not in p.params.get("matched_to", [])]
        if new:
            p.params["matched_to"] = p.params.get("matched_to", []) + new
            layout.write_point_meta(self.run_dir, p.method, p.point, {**p.params, "stochastic": p.stochastic},
                                    default=p.default)


def earlier_timers(results_path: Path) -> list:
    """The timers of the evaluation calls before this one on the same run directory, oldest first
    (read from the ``results.json`` this call replaces: a resumed evaluation's timers cover only
    the points it played itself). Unreadable: a warning naming the file, and []."""
    if not results_path.exists():
        return []
    try:
        prev = json.loads(results_path.read_text())
        return list(prev.get("timers_s_earlier_calls") or []) + ([prev["timers_s"]] if prev.get("timers_s") else [])
    except (ValueError, AttributeError, TypeError) as e:
        print(f"eval: the earlier calls' timers in {results_path} could not be read ({e}); they are not carried over")
        return []


def run(cfg, router_ckpt=None, methods: Optional[list] = None, group=None, clients=None,
        sweep_ckpts: Optional[dict] = None, progress: bool = True) -> Path:
    """Evaluate and return the path of ``<run_dir>/eval/results.json``.

    ``router_ckpt``: a checkpoint directory, a list of ``NAME=DIR`` items, or {method name: dir}.
    ``methods``: restrict to these names (baselines and/or router names). ``group``/``clients``: an
    existing RolloutGroup on the evaluation split and the tier clients it uses (tests, or the main
    job reusing its workers; calibration builds its own workers on the same clients); otherwise Ray,
    the model servers and ``collect.num_workers`` rollout workers are started here and shut down.
    ``sweep_ckpts``: {method: dir} of GRPO routers of a lambda sweep, played only as their sampled
    policy (no calibration, no matched baselines).
    """
    from dmr_rl.pipeline.calibrate import calibrate, calibrated_method
    from dmr_rl.pipeline.escalation import calibrate_escalation
    from dmr_rl.report import tables

    if isinstance(router_ckpt, (str, Path)):
        router_ckpt = {ROUTER_METHOD: str(router_ckpt)}
    elif isinstance(router_ckpt, (list, tuple)):
        router_ckpt = parse_router_ckpts(router_ckpt)
    routers = {m: d for m, d in (router_ckpt or {}).items() if not methods or m in methods}
    calibrated = [b for b in cfg.eval.calibrated_baselines if not methods or calibrated_method(b) in methods]
    wanted = [m for m in (methods or cfg.eval.baselines)
              if m not in (router_ckpt or {}) and m not in map(calibrated_method, calibrated)]
    routed = bool(routers or calibrated)  # points that random and first-k follow
    fixed = baseline_points(cfg, [m for m in wanted if not (routed and m in MATCHED)])
    if not routed and not fixed:
        raise ValueError("nothing to evaluate: no baselines and no router checkpoint")
    own = group is None
    if own:
        group, clients = start_group(cfg)
    elif routed and clients is None:
        raise ValueError("evaluate.run: calibrating routers needs the tier clients of the given group")
    try:
        if clients:
            record_tiers(cfg.run_dir, clients)
        tasks = eval_tasks(num_tasks_of(group), cfg.eval.episodes)
        ev = Evaluation(cfg, group, tasks, progress, lp_bytes_share=lp_bytes_share(clients) if routed else None)
        calibration = {}
        if routed:
            with ev.timers("calibrate"):
                escalate = bool(cfg.eval.escalate_shares) and bool(routers)
                calibration = calibrate(cfg, routers, clients, local=group.local, progress=progress,
                                        num_workers=group.num_workers, baselines=calibrated, both_tiers=escalate)
                if escalate:
                    calibration = calibrate_escalation(cfg, calibration, list(routers), progress, ev.lp_bytes_share)
        points = router_points(cfg, routers, calibration, calibrated) + sweep_points(sweep_ckpts or {}) + fixed
        ev.plan(points, [m for m in wanted if m in MATCHED] if routed else [])
        for p in points:
            ev.play(p)
        if routed:
            ev.matched_baselines([m for m in wanted if m in MATCHED])
        with ev.timers("summarise"):
            results = tables.summarise(cfg.run_dir, n_boot=cfg.eval.bootstrap, boot_seed=int(cfg.seed))
    finally:
        if own:
            stop_group(group, clients)
    out = layout.eval_dir(cfg.run_dir) / "results.json"
    results["timers_s"] = ev.timers.as_dict()
    results["timers_s_earlier_calls"] = earlier_timers(out)
    results["split"], results["n_tasks"], results["seeds"] = cfg.env.eval_split, len(tasks), ev.seeds
    results["calibration"] = calibration
    from dmr_rl.atomic_io import write_atomic

    path = write_atomic(out, json.dumps(layout.json_safe(results), indent=1))
    if progress:
        print(f"eval: {len(ev.played)} operating points on {len(tasks)} tasks; {ev.timers.summary()}; "
              f"results in {path}")
    return path

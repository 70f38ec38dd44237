"""The evaluation's progress lines (the episodes it plans, an ETA from its measured rate) and its
bookkeeping of the points it played."""
import math

from dmr_rl.config import DMRConfig
from dmr_rl.pipeline.eval_points import OperatingPoint
from dmr_rl.pipeline.evaluate import Evaluation
from dmr_rl.pipeline.timing import eta_seconds, format_duration


def test_eta_is_the_remaining_work_at_the_measured_rate():
    assert eta_seconds(10, 40, 50.0) == 150.0  # 30 units left at 5 s each
    assert eta_seconds(40, 40, 50.0) == 0.0 and eta_seconds(50, 40, 50.0) == 0.0
    assert math.isnan(eta_seconds(0, 40, 0.0))
    assert [format_duration(s) for s in (7.4, 75.4, 3725, float("nan"))] == ["7s", "1m15s", "1h02m", "?"]


def test_plan_counts_every_seed_of_stochastic_points_and_the_matched_baselines(tmp_path):
    cfg = DMRConfig()
    cfg.run_dir, cfg.eval.seeds = str(tmp_path), [0, 1, 2]
    ev = Evaluation(cfg, group=None, tasks=list(range(10)), progress=False)
    points = [OperatingPoint("grpo", "r0.30", None, {"kind": "router"}),  # greedy: once
              OperatingPoint("grpo", "sampled", None, {"kind": "router"}, stochastic=True),  # 3 seeds
              OperatingPoint("hp_only", "default", None, {"kind": "baseline"})]
    # per router point: random under 3 seeds (30) + first-k once (10) on the deterministic ALFWorld
    assert ev.plan(points, ["random", "first_k"]) == 10 + 30 + 10 + 2 * (30 + 10)
    assert ev.plan(points, []) == 50
    ev.played, ev.timed_eps, ev.timed_s = [(points[0], [None] * 20)], 20, 40.0
    assert ev.eta_line() == "episodes 20 of ~50 planned, ETA 1m00s"  # 30 left at 2 s each
    ev.played, ev.timed_eps, ev.timed_s = [(points[0], [None] * 60)], 40, 80.0  # more played than planned
    assert ev.eta_line() == "episodes 60 of ~60 planned, ETA 0s"
    # a calibrated cascade (LP at every step) also gets random at its cost-equivalent ratio, when priced
    cascade = OperatingPoint("cascade_calibrated", "r0.30", None, {"kind": "router", "calibrated_baseline": "cascade"})
    assert ev.plan([cascade], ["random"]) == 10 + 30
    ev.lp_bytes_share = 0.25
    assert ev.plan([cascade], ["random"]) == 10 + 30 + 30


def test_a_point_played_again_keeps_every_router_it_was_matched_to(tmp_path):
    """first-k's second k can be the k another router point already played: that point is
    reused, not replayed or counted twice, and its matched_to names both router points."""
    import json

    from dmr_rl.report import layout

    cfg = DMRConfig()
    cfg.run_dir, cfg.eval.seeds = str(tmp_path), [0]
    calls = []

    class Group:
        def set_router(self, spec):
            pass

        def run_episodes(self, tasks, *a, **k):
            calls.append(list(tasks))
            return {"episode_records": []}

    ev = Evaluation(cfg, group=Group(), tasks=[0, 1], progress=False)
    first = ev.play(OperatingPoint("first_k", "k2", None, {"kind": "baseline", "k": 2, "matched_to": ["sft/r0.30"]}))
    again = ev.play(OperatingPoint("first_k", "k2", None, {"kind": "baseline", "k": 2, "matched_to": ["grpo/r0.30"]}))
    assert again is first and len(calls) == 1 and len(ev.played) == 1
    meta = json.loads((layout.point_dir(cfg.run_dir, "first_k", "k2") / "point.json").read_text())
    assert meta["params"]["matched_to"] == ["sft/r0.30", "grpo/r0.30"]

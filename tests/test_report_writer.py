"""`dmr report` on a synthetic run directory: files exist and numbers match the inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dmr_rl.report import layout, write
from dmr_rl.report import metrics as M
from dmr_rl.report import tradeoff
from dmr_rl.rollout.records import HP, LP, EpisodeRecord, StepRecord, TrajectoryStore

TYPES = ["pick_and_place_simple", "pick_heat_then_place_in_recep"]


def _episode(rng, p_win, p_hp, seed, i, forced=None, kl=False):
    n = int(rng.integers(3, 8))
    tiers = (rng.random(n) < p_hp).astype(int)
    steps = [StepRecord(step=k, obs="o", action="a", tier=int(t), prompt_tokens=10, gen_tokens=2,
                        weight_bytes=4e8 if t == HP else 1e8, latency_s=0.05 if t == HP else 0.03,
                        kl=float(rng.exponential(0.2)) if kl else None)
             for k, t in enumerate(tiers)]
    won = bool(rng.random() < p_win)
    extra = {"forced_lp_steps": forced} if forced is not None else {}
    return EpisodeRecord(episode_id=f"{seed}-{i}", task_index=i, task_id=f"t{i}", task_type=TYPES[i % 2],
                         task="", seed=seed, won=won, score=float(won), steps=steps, extra=extra)


POINTS = {  # method -> point -> (p_win, p_hp, params)
    "hp_only": {"default": (0.8, 1.0, {})},
    "lp_only": {"default": (0.3, 0.0, {})},
    "router": {"t0.30": (0.75, 0.5, {"checkpoint": "ckpt", "threshold": 0.3}),
               "t0.70": (0.6, 0.2, {"checkpoint": "ckpt", "threshold": 0.7})},
    "random": {"ratio0.20": (0.4, 0.2, {"hp_ratio": 0.2}), "ratio0.50": (0.55, 0.5, {"hp_ratio": 0.5})},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    written = {}
    for m, pts in POINTS.items():
        for p, (pw, ph, params) in pts.items():
            layout.write_point_meta(root, m, p, params, default=(p == "t0.70"))
            for seed in (0, 1, 2):
                eps = [_episode(rng, pw, ph, seed, i) for i in range(20)]
                TrajectoryStore(layout.seed_dir(layout.point_dir(root, m, p), seed), "w0").append(eps)
                written[(m, p, seed)] = eps
    for arm, pw in (("kl_flagged", 0.3), ("kl_unflagged", 0.75), ("reference", 0.8)):
        eps = [_episode(rng, pw, 0.7, 0, i, forced=None if arm == "reference" else [0, 1]) for i in range(20)]
        TrajectoryStore(layout.seed_dir(layout.causal_dir(root) / arm, 0), "w0").append(eps)
    TrajectoryStore(root / "labels", "w0").append([_episode(rng, 1, 1, 0, i, kl=True) for i in range(10)])
    return root, written


def test_report_files_and_numbers(run_dir):
    root, written = run_dir
    md = write(root, n_boot=300, tensorboard=False)
    out = root / "report"
    assert md == out / "report.md" and md.is_file()
    for png in ("pareto_hp_ratio.png", "pareto_cost.png", "kl_distribution.png", "hp_by_step.png",
                "hp_by_task_type.png"):
        assert (out / "plots" / png).stat().st_size > 5000, png
    res = json.loads((out / "results.json").read_text())
    for m, pts in POINTS.items():
        for p in pts:
            got = res["methods"][m][p]
            per_seed = [np.mean([e.won for e in written[(m, p, s)]]) for s in (0, 1, 2)]
            assert got["success_mean"] == pytest.approx(np.mean(per_seed))
            assert got["success_std"] == pytest.approx(np.std(per_seed, ddof=1))
            lo, hi = got["success_ci"]
            assert lo <= got["success_mean"] <= hi
            eps = [e for s in (0, 1, 2) for e in written[(m, p, s)]]
            # HP ratio: per task, HP steps / steps over its episodes (all seeds); mean over tasks
            per_task = [sum(st.tier == HP for e in eps if e.task_index == t for st in e.steps)
                        / sum(len(e.steps) for e in eps if e.task_index == t) for t in range(20)]
            assert got["hp_ratio"] == pytest.approx(np.mean(per_task))
            assert got["hp_ratio_ci"][0] <= got["hp_ratio"] <= got["hp_ratio_ci"][1]
            cost_each = [sum(st.weight_bytes for e in written[(m, p, s)] for st in e.steps) / 20 for s in (0, 1, 2)]
            assert got["cost"] == pytest.approx(np.mean(cost_each))
            assert got["seeds"] == [0, 1, 2] and got["episodes"] == 60 and got["tasks"] == 20
    assert res["methods"]["router"]["t0.70"]["params"] == {"checkpoint": "ckpt", "threshold": 0.7}
    # paired comparisons: every router point against every baseline, random at its nearest point
    comps = {(c["point"], c["vs"]): c for c in res["comparisons"]}
    assert set(comps) == {(p, b) for p in ("t0.30", "t0.70") for b in ("random", "lp_only", "hp_only")}
    c = comps[("t0.70", "random")]
    assert c["vs_point"] == "ratio0.20" and c["method"] == "router"
    for k in ("hp_ratio", "vs_hp_ratio", "n_tasks", "n_pairs", "success", "vs_success", "diff_mean", "diff_ci",
              "mcnemar_p", "score", "vs_score", "score_diff_mean", "score_diff_ci", "matched"):
        assert k in c, k
    assert c["n_tasks"] == 20 and c["n_pairs"] == 60 and c["paired_by"] == "seed,task"
    won = {k: np.array([[e.won for e in written[(*k, s)]] for s in (0, 1, 2)], float)
           for k in (("router", "t0.70"), ("random", "ratio0.20"))}
    d = won[("router", "t0.70")] - won[("random", "ratio0.20")]
    assert c["diff_mean"] == pytest.approx(d.mean())
    assert c["diff_ci"][0] <= c["diff_mean"] <= c["diff_ci"][1]
    assert c["mcnemar_p"] == pytest.approx(M.sign_test_p(d.ravel()))
    assert c["hp_ratio"] == pytest.approx(res["methods"]["router"]["t0.70"]["hp_ratio"])
    assert c["matched"] == (abs(c["hp_ratio"] - c["vs_hp_ratio"]) <= 0.02)
    # APGR/CPT over the measured curve (LP-only, the router's points, HP-only)
    r = res["methods"]["router"]
    weak, strong = res["methods"]["lp_only"]["default"], res["methods"]["hp_only"]["default"]
    xs = [weak["hp_ratio"], *(r[p]["hp_ratio"] for p in ("t0.30", "t0.70")), strong["hp_ratio"]]
    qs = [weak["success_mean"], *(r[p]["success_mean"] for p in ("t0.30", "t0.70")), strong["success_mean"]]
    t = res["tradeoff"]["router"]
    assert t["withheld"] is None and t["apgr"] == pytest.approx(float(tradeoff.apgr_cpt(xs, qs, qs[0], qs[-1])[0]))
    assert t["apgr_ci"][0] <= t["apgr"] <= t["apgr_ci"][1]
    assert "cpt50" in res["tradeoff"]["random"] and "cpt80_ci" in t
    text = md.read_text()
    first = text.index("## Paired comparisons")
    assert first < text.index("## Methods and operating points")
    assert "router t0.70" in text and "McNemar p=" in text
    # causal arms and the KL summary come from their directories
    c = res["causal"]["rows"]["kl"]
    assert c["flagged"]["tasks"] == 20 and c["flagged"]["forced_steps"] == 40
    arms = {a: TrajectoryStore.read(layout.seed_dir(layout.causal_dir(root) / f"kl_{a}", 0))
            for a in ("flagged", "unflagged")}
    assert c["unflagged_minus_flagged"]["diff_mean"] == pytest.approx(
        np.mean([e.won for e in arms["unflagged"]]) - np.mean([e.won for e in arms["flagged"]]))
    assert res["kl"]["steps"] == sum(len(e.steps) for e in TrajectoryStore.read(root / "labels"))
    assert f"{r['t0.70']['success_mean']:.3f}" in text and "APGR" in text and "Causal check" in text


def test_report_tensorboard(run_dir, tmp_path):
    pytest.importorskip("torch")
    root, _ = run_dir
    write(root, n_boot=50, tensorboard=True)
    assert list((root / "report" / "tb").glob("events.out.tfevents.*"))


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        write(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="dmr eval"):
        write(tmp_path)
    (tmp_path / "eval" / "router" / "t0.5" / "seed_0").mkdir(parents=True)
    from environments.errors import DataError
    with pytest.raises(DataError, match="no episode shards"):
        write(tmp_path)


def test_kl_values_from_labelled_rows_and_episodes(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "steps.jsonl").write_text(
        '{"episode_id": "a", "step": 0, "kl": 0.5, "label": 1}\n{"episode_id": "a", "step": 1, "kl": 0.25}\n{"torn')
    ep = EpisodeRecord("e", 0, "t", "x", "", steps=[StepRecord(0, "", "a", HP, kl=2.0), StepRecord(1, "", "a", LP)])
    TrajectoryStore(tmp_path / "other", "w").append(ep)
    assert sorted(layout.load_kl_values(tmp_path, [tmp_path / "other"])) == [0.25, 0.5, 2.0]


def test_report_refuses_methods_on_different_tasks(run_dir, tmp_path):
    import shutil

    from environments.errors import DataError

    root, written = run_dir
    copy = tmp_path / "run"
    shutil.copytree(root / "eval", copy / "eval")
    d = layout.seed_dir(layout.point_dir(copy, "random", "ratio0.50"), 1)
    shutil.rmtree(d)
    TrajectoryStore(d, "w0").append([e for e in written[("random", "ratio0.50", 1)] if e.task_index not in (3, 7)])
    with pytest.raises(DataError, match=r"eval/random/ratio0.50/seed_1 lacks task\(s\) 3, 7 that"):
        write(copy, n_boot=50, tensorboard=False)


def test_baseline_point_matched_by_the_evaluation_is_preferred():
    from dmr_rl.report.tables import _nearest

    pts = {"ratio0.300": {"params": {"matched_to": ["grpo/r0.30"]}, "hp_ratio": 0.33},
           "ratio0.310": {"params": {}, "hp_ratio": 0.31}}
    assert _nearest(pts, 0.31, "grpo/r0.30") == "ratio0.300"  # the evaluation's match for this point
    assert _nearest(pts, 0.31, "router/r0.30") == "ratio0.310"  # no match recorded: nearest


def test_lambda_sweep_table():
    from dmr_rl.report.tables import _lambda_sweep

    def pt(lam, hp, point="sampled", kind="lambda_sweep"):
        return {point: {"params": {"kind": kind, "hp_cost": lam, "sampled": point == "sampled"},
                        "sampled": point == "sampled", "router": kind == "router", "hp_ratio": hp,
                        "hp_ratio_ci": [hp - 0.01, hp + 0.01], "success_mean": 0.5, "success_ci": [0.4, 0.6]}}
    methods = {"grpo_l0.1": pt(0.1, 0.4), "grpo_l1": pt(1.0, 0.1), "grpo": {**pt(0.3, 0.2, kind="router"),
                                                                          **pt(0.3, 0.25, "r0.25", "router")}}
    sweep = _lambda_sweep(methods)
    assert [(r["hp_cost"], r["method"]) for r in sweep["rows"]] == [(0.1, "grpo_l0.1"), (0.3, "grpo"), (1.0, "grpo_l1")]
    assert sweep["sampled_hp_falls_with_lambda"] is True
    methods["grpo_l1"] = pt(1.0, 0.3)
    assert _lambda_sweep(methods)["sampled_hp_falls_with_lambda"] is False
    assert _lambda_sweep({"grpo": pt(0.3, 0.2)}) is None  # one lambda: no sweep


def test_dmr_report_command(run_dir, tmp_path, capsys):
    from dmr_rl.cli import main

    root, _ = run_dir
    assert main(["report", str(root), "--no-tensorboard", "--bootstrap", "50"]) == 0
    assert str(root / "report" / "report.md") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_a_point_paying_both_tiers_is_also_compared_with_random_at_its_cost(tmp_path):
    """A calibrated cascade (LP at every step, HP on top where escalated) shows an HP ratio below
    its cost; the report adds a comparison with the random point nearest in normalised cost.
    A learned router (one tier per step) gets no such row."""
    from dmr_rl.report.tables import summarise

    rng = np.random.default_rng(1)

    def ep(i, seed, p_hp, both):
        steps = []
        for k in range(6):
            hp = bool(rng.random() < p_hp)
            paid = (["hp", "lp"] if hp else ["lp"]) if both else (["hp"] if hp else ["lp"])
            steps.append(StepRecord(step=k, obs="o", action="a", tier=int(hp), extra={"paid": paid},
                                    weight_bytes=4e8 * ("hp" in paid) + 1e8 * ("lp" in paid)))
        won = bool(rng.random() < 0.5)
        return EpisodeRecord(episode_id=f"{seed}-{i}", task_index=i, task_id=f"t{i}", task_type=TYPES[0],
                             task="", seed=seed, won=won, score=float(won), steps=steps)

    points = {("hp_only", "default"): (1.0, False, {}), ("lp_only", "default"): (0.0, False, {}),
              ("cascade_calibrated", "r0.30"): (0.4, True, {"kind": "router", "threshold": 0.2}),
              ("router", "r0.30"): (0.3, False, {"kind": "router", "threshold": 0.5}),
              ("random", "ratio0.30"): (0.3, False, {"hp_ratio": 0.3}),
              ("random", "ratio0.60"): (0.6, False, {"hp_ratio": 0.6})}
    for (m, p), (p_hp, both, params) in points.items():
        layout.write_point_meta(tmp_path, m, p, params)
        TrajectoryStore(layout.seed_dir(layout.point_dir(tmp_path, m, p), 0), "w0").append(
            [ep(i, 0, p_hp, both) for i in range(15)])
    res = summarise(tmp_path, n_boot=100)
    casc = res["methods"]["cascade_calibrated"]["r0.30"]
    assert casc["hp_ratio"] < casc["hp_acted"] - 0.05 and casc["cost_norm"] > casc["hp_ratio"] + 0.1
    by_cost = [c for c in res["comparisons"] if c["matched_on"] == "cost"]
    assert [(c["method"], c["vs_point"]) for c in by_cost] == [("cascade_calibrated", "ratio0.60")]
    rand = res["methods"]["random"]
    assert by_cost[0]["vs_cost_norm"] == rand["ratio0.60"]["cost_norm"]
    assert abs(rand["ratio0.60"]["cost_norm"] - casc["cost_norm"]) < abs(rand["ratio0.30"]["cost_norm"] - casc["cost_norm"])
    by_ratio = [c for c in res["comparisons"] if c["method"] == "cascade_calibrated" and c["vs"] == "random"
                and c["matched_on"] == "hp_ratio"]
    assert [c["vs_point"] for c in by_ratio] == ["ratio0.30"]
    md = write(tmp_path, n_boot=100, tensorboard=False).read_text()
    assert "cascade_calibrated r0.30 vs random ratio0.60 (nearest in cost)" in md and "normalised cost" in md

"""The main job, ``dmr run``: every stage of DMR in order, each under a named timer.

    games -> agent -> quantize -> collect -> label -> sft -> grpo -> eval (+ causal) -> report

Everything lands in ``cfg.run_dir``: the generated data, the LP checkpoint, trajectory shards,
labelled steps, both routers, evaluation episodes, ``report/``. A stage whose output is already
there is skipped, so an interrupted run continues where it stopped (``fresh=True`` starts over
in a new directory instead of overwriting anything); it continues only with the config it was
made with (``config.yaml``; run-only fields may change) and one call at a time
(:mod:`dmr_rl.pipeline.rundir`). ``timings.json`` records each stage's seconds.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

STAGES = ("games", "agent", "quantize", "collect", "label", "sft", "grpo", "eval", "report")
# paths an earlier call's stage put into the config, restored when that stage is skipped:
# stage -> (config section, field, key in stages.json)
RESTORED_PATHS = {"games": ("env", "data_dir", "data_dir"), "agent": ("hp", "model_path", "hp_model"),
                  "quantize": ("lp", "model_path", "lp_model")}


class MainJob:
    """Holds the config, the run directory and the timers; one method per stage."""

    def __init__(self, cfg, progress: bool = True, train_agent: bool = False):
        from dmr_rl.pipeline.timing import Timers

        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.progress = progress
        self.train_agent = train_agent
        self.timers = Timers()
        self.done_path = self.run_dir / "stages.json"
        self.done: dict = json.loads(self.done_path.read_text()) if self.done_path.is_file() else {}

    # ---- bookkeeping ---------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.progress:
            print(f"[dmr run {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def _mark(self, stage: str, info: Optional[dict] = None) -> None:
        from dmr_rl.atomic_io import write_atomic

        self.done[stage] = info or {}
        write_atomic(self.done_path, json.dumps(self.done, indent=1, default=str))

    def _stage(self, stage: str, fn) -> None:
        if stage in self.done:
            self._say(f"{stage}: already done in {self.run_dir}, skipped")
            return
        self._say(f"{stage} ...")
        with self.timers(stage):
            info = fn()
        self._mark(stage, {**(info or {}), "seconds": self.timers.seconds[stage]})
        self._say(f"{stage}: done in {self.timers.seconds[stage]:.1f} s")

    # ---- stages ----------------------------------------------------------------------------
    def games(self) -> dict:
        from dmr_rl.rollout.envs import ensure_env_data

        self.cfg.env.data_dir = ensure_env_data(self.cfg)
        return {"data_dir": self.cfg.env.data_dir}

    def agent(self) -> dict:
        """HP = ``hp.model_path`` when set; else the committed agent for the env, or (missing, or
        ``--train-agent``) one trained now by behaviour cloning into ``<run_dir>/models/agent``."""
        from dmr_rl.errors import ModelError
        from dmr_rl.models import agent as agents

        hp = self.cfg.hp
        if not hp.model_path:
            try:
                hp.model_path = "" if self.train_agent else str(agents.agent_dir(agents.agent_name(self.cfg)))
            except ModelError:
                hp.model_path = ""
            if not hp.model_path:
                from dmr_rl.models.train_agent import TrainAgentConfig, train_agent

                out = self.run_dir / "models" / "agent"
                tcfg = TrainAgentConfig(env=self.cfg.env.name, data=self.cfg.env.data_dir, out=str(out),
                                        minutes=self.cfg.agent.train_minutes, seed=self.cfg.seed)
                train_agent(tcfg, progress=self._say)
                hp.model_path = str(out)
        return {"hp_model": hp.model_path}

    def quantize(self) -> dict:
        """LP = ``lp.model_path`` when set; else the HP checkpoint quantized as ``lp`` asks
        (method, bits, group size) into ``<run_dir>/models/``, calibrated on the agent's prompts."""
        import shutil

        from dmr_rl.models.agent import AGENT_CONFIG, calibration_prompts, lp_spec
        from dmr_rl.models.quantize import copy_dir_name, quantize_checkpoint

        lp, src = self.cfg.lp, Path(self.cfg.hp.model_path)
        if lp.model_path:
            return {"lp_model": lp.model_path}
        if lp.quant_method == "none":
            lp.model_path = str(src)
            return {"lp_model": lp.model_path}
        out = self.run_dir / "models" / copy_dir_name(lp.quant_method, lp.bits, lp.group_size, lp.group_size_overrides)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small models: 1 thread is several times faster than 2 here
        try:
            spec = lp_spec(src)  # the agent's own LP recipe names the AWQ engine when it is this one
            recipe = (lp.quant_method, lp.bits, lp.group_size, list(lp.group_size_overrides.items()))
            same = recipe == (spec["method"], int(spec["bits"]), int(spec["group_size"]),
                              list(spec["group_size_overrides"].items()))  # in order: the first match wins
            info = quantize_checkpoint(str(src), str(out), lp.quant_method, lp.bits, lp.group_size,
                                       calibration_prompts(src), engine=spec["engine"] if same else "llmcompressor",
                                       group_size_overrides=lp.group_size_overrides)
        finally:
            torch.set_num_threads(threads)
        if (src / AGENT_CONFIG).is_file():  # the copy acts with its agent's prompt settings
            shutil.copy(src / AGENT_CONFIG, out / AGENT_CONFIG)
        lp.model_path = str(out)
        return {"lp_model": lp.model_path, "packed_bytes": info.get("packed_bytes"),
                "source_bytes": info.get("source_bytes")}

    def collect(self) -> dict:
        from dmr_rl.pipeline import collect

        s = collect.run(self.cfg, progress=self.progress)
        return {"episodes": s.get("stored_episodes"), "success": s.get("success_rate")}

    def label(self) -> dict:
        from dmr_rl.pipeline import label

        s = label.run(self.cfg, progress=self.progress)
        if self.progress:
            label.print_stats(s)
        return {k: v for k, v in s.items() if not isinstance(v, (list, dict))}

    def sft(self) -> dict:
        from dmr_rl.pipeline import train_sft
        from dmr_rl.pipeline.label import labels_path

        m = train_sft.fit(self.cfg, labels_path(self.run_dir), self.run_dir / "router_sft",
                          log_dir=str(self.run_dir / "tb" / "sft"), progress=self.progress)
        out = {k: v for k, v in m.items() if isinstance(v, (int, float, str))}
        out.update({f"holdout_{k}": v for k, v in m.get("holdout", {}).items()})
        self._say("stage 1 router, held-out steps: " + ", ".join(
            f"{k} {m.get('holdout', {}).get(k, float('nan')):.3f}" for k in ("auroc", "precision", "recall")))
        return out

    def grpo(self) -> dict:
        """The GRPO router at ``grpo.hp_cost``, then one per other lambda of ``grpo.lambda_sweep``."""
        import dataclasses

        from dmr_rl.pipeline import train_grpo

        resume = (self.run_dir / "router_grpo" / "checkpoints" / "LATEST").is_file()
        if resume:
            self._say(f"grpo: continuing from checkpoint {train_grpo.latest_checkpoint(self.run_dir / 'router_grpo')}")
        r = train_grpo.run(self.cfg, resume=resume, progress=self.progress)
        out = {"iterations": r["iteration"], "router_dir": r["router_dir"], "last": r["history"][-1:]}
        for lam, d in self.lambda_sweep_dirs().items():
            if (d / "router" / "router.json").is_file():
                continue
            self._say(f"grpo, lambda sweep: hp_cost {lam:g}")
            cfg = dataclasses.replace(self.cfg, grpo=dataclasses.replace(self.cfg.grpo, hp_cost=float(lam)))
            resume = (d / "checkpoints" / "LATEST").is_file()
            if resume:
                self._say(f"grpo: continuing from checkpoint {train_grpo.latest_checkpoint(d)}")
            train_grpo.run(cfg, out_dir=d, resume=resume, progress=self.progress)
        return out

    def lambda_sweep_dirs(self) -> dict:
        """{lambda: output directory} of the sweep's extra GRPO routers."""
        main = float(self.cfg.grpo.hp_cost)
        return {float(lam): self.run_dir / f"router_grpo_l{float(lam):g}"
                for lam in self.cfg.grpo.lambda_sweep if abs(float(lam) - main) > 1e-12}

    def eval(self) -> dict:
        from dmr_rl.pipeline import causal, evaluate

        ckpts = {"sft": str(self.run_dir / "router_sft"), "grpo": str(self.run_dir / "router_grpo" / "router")}
        played = {m: d for m, d in ckpts.items() if m in self.cfg.eval.routers}
        sweep = {f"grpo_l{lam:g}": str(d / "router") for lam, d in self.lambda_sweep_dirs().items()}
        group, clients = evaluate.start_group(self.cfg)
        try:
            path = evaluate.run(self.cfg, played, group=group, clients=clients, sweep_ckpts=sweep,
                                progress=self.progress)
            out = {"results": str(path)}
            if self.cfg.eval.causal_episodes > 0:
                out["causal"] = str(causal.run(self.cfg, ckpts["grpo"], group=group, progress=self.progress))
        finally:
            evaluate.stop_group(group, clients)
        return out

    def report(self) -> dict:
        from dmr_rl.report import write

        return {"report": str(write(self.run_dir, n_boot=self.cfg.eval.bootstrap))}

    # ---- the driver --------------------------------------------------------------------------
    def fit(self) -> Path:
        from dmr_rl.atomic_io import write_atomic
        from dmr_rl.pipeline.rundir import record_filled

        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stage, (section, field, key) in RESTORED_PATHS.items():
            if stage in self.done:
                setattr(getattr(self.cfg, section), field, self.done[stage][key])
        t0 = time.perf_counter()
        for stage in STAGES:
            self._stage(stage, getattr(self, stage))
            if stage in ("games", "agent", "quantize"):  # the paths they produced, into the recorded config
                record_filled(self.cfg)
        total = time.perf_counter() - t0
        # every stage's seconds, including those done by an earlier, interrupted call
        timings = {stage: float(self.done[stage].get("seconds", 0.0)) for stage in STAGES}
        timings["total"] = sum(timings.values())
        timings["this_call"] = total
        write_atomic(self.run_dir / "timings.json", json.dumps(timings, indent=1))
        report = Path(self.done["report"]["report"])
        self._say(f"finished in {total / 60:.1f} min: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
        return report


def fresh_run_dir(run_dir: str) -> str:
    """``run_dir`` if unused, else ``run_dir-2``, ``run_dir-3``, ... (never overwrite a run)."""
    p, k = Path(run_dir), 2
    while p.exists() and any(p.iterdir()):
        p = Path(f"{run_dir}-{k}")
        k += 1
    return str(p)


def run(cfg, *, fresh: bool = False, train_agent: bool = False, progress: bool = True) -> Path:
    """Run (or continue) the main job; returns the path of ``report/report.md``.

    The run directory is locked for the call (:class:`~dmr_rl.pipeline.rundir.RunLock`); a
    continued run must ask for the config the directory was made with, up to run-only fields
    (:func:`~dmr_rl.pipeline.rundir.check_resume`). Tracebacks of errors go to
    ``<run_dir>/logs/dmr.log``."""
    import sys

    from dmr_rl.errors import set_log_file
    from dmr_rl.pipeline.rundir import RunLock, check_resume

    if fresh:
        cfg.run_dir = fresh_run_dir(cfg.run_dir)

    def note(msg: str) -> None:
        print(f"dmr: {msg}", file=sys.stderr, flush=True)

    with RunLock(cfg.run_dir, say=note):
        set_log_file(Path(cfg.run_dir) / "logs" / "dmr.log")
        check_resume(cfg, say=note)
        return MainJob(cfg, progress=progress, train_agent=train_agent).fit()


def default_preset() -> Optional[str]:
    """``experiments/default.yaml`` of a source checkout, else None (the built-in defaults)."""
    p = Path(__file__).resolve().parents[2] / "experiments" / "default.yaml"
    return str(p) if p.is_file() else None

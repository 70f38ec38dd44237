"""Behaviour-cloning data for ``dmr train agent``: teachers, labelled rollouts, augmentation.

* :data:`TEACHERS` names the observation-driven teacher per environment (ALFWorld:
  ``ExplorerExpert``, which sees only what the agent sees; WebShop: ``FirstMatchTeacher``, which
  buys the first listed product that satisfies the goal).
* :func:`rollout_labelled` plays one episode with the teacher (or, for DAgger, with the learner
  mixed in) and labels every state with the teacher's action: a :class:`Sample` per step
  (prompt, admissible actions, index of the teacher's action).
* :func:`augmented` adds copies of samples with entity classes consistently renamed
  (:func:`rename_entities`), to teach copying names from the task instead of memorising them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dmr_rl.errors import ModelError
from dmr_rl.models.prompting import PromptConfig, build_prompt
from dmr_rl.step import StepContext

#: teacher per environment: "module:Class" of a policy (reset(env), act(obs, info)).
TEACHERS = {
    "alfworld": "environments.alfworld.teacher:ExplorerExpert",
    "webshop": "environments.webshop.teacher:FirstMatchTeacher",
}


@dataclass
class Sample:
    prompt: str
    admissible: list
    target: int  # index of the teacher's action in admissible


def make_teacher(env_name: str):
    import importlib

    if env_name not in TEACHERS:
        raise ModelError(f"no teacher for environment {env_name!r}; known: {sorted(TEACHERS)}")
    module, cls = TEACHERS[env_name].split(":")
    return getattr(importlib.import_module(module), cls)()


def _context(obs: str, history: list, info: dict) -> StepContext:
    return StepContext(task=str(info.get("task", "")), obs=obs, history=list(history),
                       admissible=list(info.get("admissible_commands") or []),
                       step=len(history), task_type=str(info.get("task_type", "")))


def rollout_labelled(env, teacher, task_index: int, prompt_cfg: PromptConfig, learner=None,
                     beta: float = 1.0, rng: Optional[np.random.Generator] = None,
                     max_steps: int = 0) -> tuple[list, bool]:
    """Play one episode; label every state with the teacher's action.

    The acting policy is the teacher (``learner`` None or with probability ``beta`` per step) or
    the learner (an :class:`LMAgent`). Returns (samples, won)."""
    rng = rng or np.random.default_rng(0)
    obs, info = env.reset(options={"task_index": task_index})
    cap = max_steps or 10**9
    teacher.reset(env)
    history: list = []
    samples: list = []
    done = False
    while not done:
        ctx = _context(obs, history, info)
        label = teacher.act(obs, info)
        if ctx.admissible and label in ctx.admissible:
            samples.append(Sample(build_prompt(ctx, prompt_cfg.history_window, prompt_cfg),
                                  ctx.admissible, ctx.admissible.index(label)))
        action = label
        if learner is not None and ctx.admissible and rng.random() >= beta:
            action = learner.act([ctx], rng)[0][0]  # the teacher reads what it did off the next observation
        obs, _, terminated, truncated, info = env.step(action)
        history.append((action, obs))
        done = terminated or truncated or len(history) >= cap
    return samples, bool(info.get("won"))


#: classes the teacher reaches without the task naming them (clean/heat/cool): never renamed
FIXED_CLASSES = {"sinkbasin", "microwave", "fridge"}


def entity_classes(sample: Sample) -> tuple[set, set]:
    """(place classes, thing classes) of the numbered entities a sample mentions: a place is
    something the agent can "go to" ("shelf 1" -> shelf), a thing anything else ("keychain 2")."""
    import re

    text = (sample.prompt + "\n" + "\n".join(sample.admissible)).lower()
    places = set(re.findall(r"\bgo to ([a-z]+) \d+\b", text))
    things = set(re.findall(r"\b([a-z]+) \d+\b", text)) - places
    return places - FIXED_CLASSES, things - FIXED_CLASSES


def rename_entities(sample: Sample, pools: tuple, rng: random.Random) -> Sample:
    """The same step with its place and thing classes consistently renamed to other classes of the
    same kind from ``pools`` (prompt, task words, candidates and label alike): a world where, say,
    the shelf is called a drawer. It teaches the agent to copy names from the task and the
    observations instead of memorising which object goes where, as unseen pairs need."""
    import re

    mapping = {}
    for classes, pool in zip(entity_classes(sample), pools):
        classes = sorted(classes)
        if classes and len(pool) >= len(classes):
            mapping.update(zip(classes, rng.sample(pool, len(classes))))
    if not mapping:
        return sample
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping))) + r")\b")

    def sub(text: str) -> str:
        return pattern.sub(lambda m: mapping[m.group(1)], text)

    return Sample(sub(sample.prompt), [sub(a) for a in sample.admissible], sample.target)


def augmented(samples: list, share: float, rng: random.Random) -> list:
    if share <= 0 or not samples:
        return []
    kinds = [entity_classes(s) for s in samples]
    places = sorted(set().union(*(k[0] for k in kinds)))
    things = sorted(set().union(*(k[1] for k in kinds)) - set(places))
    chosen = [s for s in samples if rng.random() < share]
    return [rename_entities(s, (places, things), rng) for s in chosen]

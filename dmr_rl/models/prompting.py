"""A compact ReAct-style prompt for text agents: task, memory, a window of recent steps, actions.

The prompt length dominates the cost of a step on a CPU, so the prompt is short and plain:

    Task: put a clean apple in fridge.
    Holding: apple 1
    At: sinkbasin 1
    Unvisited: cabinet 1, drawer 1, fridge 1
    > go to sinkbasin 1
    On the sinkbasin 1, you see nothing.
    Actions: clean apple 1 with sinkbasin 1 | go to fridge 1 | ...
    >

* ``Task`` is the goal text (the first line, or with ``task_last`` the last one before the
  action: a small model trained from scratch matches the task's verb and object to the candidate
  actions more reliably when they are close).
* Memory, read off the history alone (ALFWorld-style commands; for other families these lines
  are simply absent), no privileged state: ``Seen`` says where each object named in the task
  was last seen; ``Holding`` is what the take/put actions leave in hand; ``Done`` lists the other
  state-changing actions (put, clean, heat, cool, use, slice, ...); ``At`` is the place the
  agent went to last; ``Unvisited`` lists the places it may go to (the ``go to`` commands among
  the admissible ones, in their order) where it has not been yet, so an agent that sees only a
  short window of steps can still explore without revisiting (a positive list to copy from is
  far easier for a small model than a list of places to avoid).
* The window holds the last ``history_window`` (action, observation) pairs; with an empty
  history the first observation is shown instead. Observations are cut at ``max_obs_chars``.
* ``Actions`` lists the admissible commands (optional: in score mode the candidates are scored
  anyway, so ``show_admissible=False`` saves many tokens).
* The prompt ends with ``"\\n>"``: an action is scored or generated as its continuation (no
  leading space), and the same text in the window starts with ``"> "``.

:class:`PromptConfig` bundles these options; a trained agent stores its own in
``agent_config.json`` beside its weights so it is always prompted the way it was trained.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from dmr_rl.step import StepContext

ACTION_PREFIX = ">"
_MOVE = re.compile(r"^go to (.+)$")
_TAKE = re.compile(r"^take (.+?) from (.+)$")
_PUT = re.compile(r"^(?:put|move) (.+?) (?:in/on|in|on|to) (.+)$")
_OPEN = re.compile(r"^open (.+)$")
_PASSIVE = ("look", "inventory", "help")


@dataclass
class PromptConfig:
    """How an agent is prompted (stored with a trained agent)."""

    history_window: int = 2
    show_admissible: bool = True
    show_memory: bool = True
    max_obs_chars: int = 400
    max_listed_actions: int = 60
    task_last: bool = False  # the Task line just before the action (small models attend to recent text best)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _location_of(action: str) -> str:
    for pattern in (_MOVE, _OPEN):
        if m := pattern.match(action):
            return m.group(1)
    return ""


def _items_seen(obs: str) -> list[str]:
    """Names after "you see" in an observation ("a apple 1, and a mug 2." -> [apple 1, mug 2])."""
    low = obs.lower()
    if "you see " not in low:
        return []
    text = low.split("you see ", 1)[1].split("\n", 1)[0].strip().rstrip(".")
    if not text or text == "nothing":
        return []
    parts = re.split(r", and |, | and ", text)
    return [re.sub(r"^(a|an|some) ", "", p.strip()) for p in parts if p.strip()]


def memory_lines(history: list, task: str = "", admissible: tuple = ()) -> list[str]:
    """Compact memory of the whole history: sightings of task objects, what is held, other
    state-changing actions, the current place and the places not visited yet (out of the
    ``go to`` commands in ``admissible``). ``history`` is [(action, observation)], oldest first.

    ``Seen`` keeps, for every object whose class word occurs in ``task``, where it was last seen
    (dropped once taken; where the agent put it down once put). Returns the lines to show."""
    task_words = set(re.findall(r"[a-z]+", task.lower()))
    visited: list[str] = []
    holding: list[str] = []
    done: list[str] = []
    seen: dict[str, str] = {}
    for action, obs in history:
        a = " ".join(str(action).lower().split())
        obs_l = str(obs).lower()
        if obs_l.startswith("nothing happens"):
            continue
        where = _location_of(a)
        if where:
            for name in [n for n, r in seen.items() if r == where]:
                del seen[name]
            for name in _items_seen(obs_l):
                if name.rsplit(" ", 1)[0] in task_words:
                    seen[name] = where
        if m := _MOVE.match(a):
            place = m.group(1)
            if place in visited:
                visited.remove(place)
            visited.append(place)
        elif m := _TAKE.match(a):
            holding.append(m.group(1))
            seen.pop(m.group(1), None)
        elif m := _PUT.match(a):
            if m.group(1) in holding:
                holding.remove(m.group(1))
            if m.group(1).rsplit(" ", 1)[0] in task_words:
                seen[m.group(1)] = m.group(2)
            done.append(a)
        elif a and not a.startswith(_PASSIVE) and not a.startswith("examine") and not _OPEN.match(a):
            done.append(a)
    lines = []
    if seen:
        lines.append("Seen: " + "; ".join(f"{n} at {r}" for n, r in seen.items()))
    if holding:
        lines.append("Holding: " + ", ".join(holding))
    if done:
        lines.append("Done: " + "; ".join(done[-6:]))
    if visited:
        lines.append("At: " + visited[-1])
    places = [m.group(1) for a in admissible if (m := _MOVE.match(" ".join(str(a).lower().split())))]
    unvisited = [p for p in places if p not in visited]
    if unvisited:
        lines.append("Unvisited: " + ", ".join(unvisited))
    return lines


def build_prompt(ctx: StepContext, history_window: int = 2, config: PromptConfig | None = None) -> str:
    """The prompt for one decision step (ends with ``"\\n>"``; the action is its continuation).

    ``history_window`` = number of recent (action, observation) pairs shown; ``config`` overrides
    it and sets the other options (see :class:`PromptConfig`).
    """
    cfg = config or PromptConfig(history_window=history_window)
    if cfg.history_window < 0:
        raise ValueError(f"history_window must be >= 0, got {cfg.history_window}")
    task_line = f"Task: {_clip(ctx.task, 300)}"
    lines = [] if cfg.task_last else [task_line]
    history = list(ctx.history or [])
    if cfg.show_memory:
        lines.extend(memory_lines(history, ctx.task, ctx.admissible or ()))
    window = history[-cfg.history_window:] if cfg.history_window > 0 else []
    for action, obs in window:
        lines.append(f"{ACTION_PREFIX} {action}")
        lines.append(_clip(obs, cfg.max_obs_chars))
    if not window or str(window[-1][1]) != str(ctx.obs):
        # the current observation, unless the window's last step already shows it
        lines.append(_clip(ctx.obs, cfg.max_obs_chars))
    if cfg.show_admissible and ctx.admissible:
        listed = list(ctx.admissible)[: cfg.max_listed_actions]
        lines.append("Actions: " + " | ".join(listed))
    if cfg.task_last:
        lines.append(task_line)
    return "\n".join(lines) + "\n" + ACTION_PREFIX


def context_after(ctx: StepContext, action: str, obs: str, admissible: list) -> StepContext:
    """The next step's context: ``action`` taken in ``ctx`` led to ``obs`` with ``admissible``."""
    return StepContext(task=ctx.task, obs=obs, history=list(ctx.history) + [(action, obs)],
                       admissible=list(admissible), step=ctx.step + 1, task_type=ctx.task_type)

"""ALFWorld as a :class:`~environments.base.TextEnv`, on alfworld's real TextWorld PDDL engine.

The engine is the direct path ALFWorld's own tools wrap: ``textworld.envs.pddl.PddlEnv`` with
alfworld's ``AlfredDemangler`` (ALFRED ids -> "apple 1") and ``AlfredInfos`` (game file in the
infos), not the asynchronous ``textworld.gym`` path (3-10x slower per step here). The engine is
asked only for what the interface needs (won, admissible commands).

The expert (``expert_type``):
- ``"planner"`` (default): Fast Downward's plan from the current state, the same call
  (``PddlState.replan``) that ``AlfredExpert(expert_type="planner")`` copies into
  ``policy_commands`` after every step; here it runs only when :meth:`expert_action` is asked,
  so policies that never ask do not pay ~20 ms a step for it.
- ``"handcoded"``: alfworld's ``AlfredExpert(expert_type="handcoded")`` wrapper (it reads
  ``traj_data.json`` beside the game and fails on some pick-two games).
"""
from __future__ import annotations

from typing import Optional

from environments.alfworld.loader import GameEntry, collect_games, resolve_root
from environments.base import TaskState, TextEnv
from environments.errors import DataError

EXPERT_TYPES = ("planner", "handcoded")
TASK_PREFIX = "Your task is to: "


def task_text(observation: str) -> str:
    """The goal sentence of ALFWorld's welcome text ("put a clean mug in coffeemachine")."""
    if TASK_PREFIX not in observation:
        return ""
    return observation.split(TASK_PREFIX, 1)[1].strip().splitlines()[0].rstrip(".")


class AlfWorldEnv(TextEnv):
    """ALFWorld games of one split; task ``i`` is the i-th game in sorted task-id order."""

    default_max_steps = 50
    name = "alfworld"

    def __init__(self, games: list[GameEntry], max_steps: Optional[int] = None, expert_type: str = "planner",
                 data_dir: str = "", split: str = "", fast_text: bool = True):
        super().__init__(max_steps=max_steps)
        if expert_type not in EXPERT_TYPES:
            raise ValueError(f"unknown expert_type {expert_type!r}; known: {list(EXPERT_TYPES)}")
        if not games:
            raise DataError(f"no playable ALFWorld games in split {split!r}", path=data_dir or None)
        self.games = list(games)
        self.expert_type = expert_type
        self.data_dir, self.split = data_dir, split
        self.skipped: dict = {}
        if fast_text:
            from environments.alfworld import speedups

            speedups.install()
        self._engine, self._pddl = self._build_engine(expert_type)
        self._loaded: Optional[str] = None
        self._game_state = None
        self._task = ""
        self._expert_cache: Optional[tuple[int, list[str]]] = None

    @classmethod
    def from_data(cls, data_dir: Optional[str], split: str, max_steps: Optional[int] = None,
                  expert_type: str = "planner", **kwargs) -> "AlfWorldEnv":
        """Games of ``split`` under ``data_dir`` (or ``$ALFWORLD_DATA``) in ALFWorld's layout."""
        root = resolve_root(data_dir)
        games, skipped = collect_games(root, split)
        if not games:
            raise DataError(f"no playable games in split {split!r} (skipped: {skipped})", path=root)
        env = cls(games, max_steps=max_steps, expert_type=expert_type, data_dir=root, split=split, **kwargs)
        env.skipped = skipped
        return env

    @staticmethod
    def _build_engine(expert_type: str):
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos
        from textworld.envs.pddl import PddlEnv

        pddl = PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"]))
        engine = AlfredInfos(AlfredDemangler(pddl))
        if expert_type == "handcoded":
            engine = AlfredExpert(engine, expert_type="handcoded")
        return engine, pddl

    # ---- TextEnv hooks ---------------------------------------------------------------------
    def _num_tasks(self) -> int:
        return len(self.games)

    def _task_id(self, index: int) -> str:
        return self.games[index].task_id

    def _reset_task(self, index: int) -> TaskState:
        game = self.games[index]
        try:
            if self._loaded != game.game_file:
                self._loaded = None
                self._engine.load(game.game_file)
                self._loaded = game.game_file
            self._game_state = self._engine.reset()
        except DataError:
            raise
        except Exception as e:  # the engine's parsers raise many types; name the file
            raise DataError(f"the PDDL engine could not load this game ({type(e).__name__}: {e})",
                            path=game.game_file, field="pddl_problem") from e
        self._expert_cache = None
        obs = self._game_state.feedback
        self._task = task_text(obs)
        return self._task_state(obs, reward=0.0)

    def _step_task(self, command: str) -> TaskState:
        self._game_state, reward, _ = self._engine.step(command)
        self._expert_cache = None
        return self._task_state(self._game_state.feedback, reward=float(reward))

    def _task_state(self, obs: str, reward: float) -> TaskState:
        s = self._game_state
        won = bool(s["won"])
        return TaskState(obs=obs, admissible_commands=list(s["admissible_commands"]),
                         task_type=self.games[self._task_index].task_type, task=self._task,
                         won=won, score=1.0 if won else 0.0, done=won, reward=reward,
                         extra={"gamefile": self.games[self._task_index].game_file})

    def expert_plan(self) -> list[str]:
        """The expert's remaining plan from the current state (planner), or its next command."""
        if self._game_state is None:
            raise RuntimeError("expert_plan() called before reset()")
        if self.expert_type == "handcoded":
            return list(self._game_state.get("extra.expert_plan") or [])
        if self._expert_cache is None or self._expert_cache[0] != self._steps:
            plan = self._pddl._pddl_state.replan(self._pddl._entity_infos)
            self._expert_cache = (self._steps, list(plan or []))
        return list(self._expert_cache[1])

    def expert_action(self) -> str:
        plan = self.expert_plan()
        return plan[0] if plan else "look"

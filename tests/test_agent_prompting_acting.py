"""Prompt builder, score-mode and generate-mode acting (pure functions, no model)."""
import math

import numpy as np
import pytest

from dmr_rl.models.acting import choose_action, match_action, normalise_command
from dmr_rl.models.backends.base import ActionScores
from dmr_rl.models.prompting import PromptConfig, build_prompt, context_after, memory_lines
from dmr_rl.step import StepContext

HISTORY = [("go to countertop 1", "On the countertop 1, you see a apple 1."),
           ("take apple 1 from countertop 1", "You pick up the apple 1 from the countertop 1."),
           ("go to sinkbasin 1", "On the sinkbasin 1, you see nothing."),
           ("clean apple 1 with sinkbasin 1", "You clean the apple 1 using the sinkbasin 1.")]


def ctx(history=HISTORY, admissible=("go to fridge 1", "look")):
    obs = history[-1][1] if history else "You are in the middle of a room."
    return StepContext(task="put a clean apple in fridge.", obs=obs, history=list(history),
                       admissible=list(admissible), step=len(history))


def test_prompt_shows_task_window_memory_and_actions():
    p = build_prompt(ctx(), history_window=2)
    lines = p.split("\n")
    assert lines[0] == "Task: put a clean apple in fridge."
    assert p.endswith("\n>")
    # window 2: the last two steps only, the current observation not repeated
    assert "> go to sinkbasin 1" in lines and "> clean apple 1 with sinkbasin 1" in lines
    assert "> take apple 1 from countertop 1" not in lines
    assert p.count("You clean the apple 1 using the sinkbasin 1.") == 1
    assert "At: sinkbasin 1" in lines
    assert "Unvisited: fridge 1" in lines  # the admissible "go to" places not visited yet
    assert "Holding: apple 1" in lines
    assert "Actions: go to fridge 1 | look" in lines


def test_prompt_window_sizes_and_options():
    p0 = build_prompt(ctx(), history_window=0)
    assert ">" not in p0[:-1].replace("> ", "")  # no window lines
    assert "You clean the apple 1" in p0  # the current observation is still there
    p4 = build_prompt(ctx(), history_window=4)
    assert sum(line.startswith("> ") for line in p4.split("\n")) == 4
    short = build_prompt(ctx(), 2, PromptConfig(history_window=1, show_admissible=False, show_memory=False))
    assert "Actions:" not in short and "At:" not in short
    assert sum(line.startswith("> ") for line in short.split("\n")) == 1
    assert len(short) < len(p4)
    first = build_prompt(ctx(history=[]), history_window=2)
    assert "You are in the middle of a room." in first and "At:" not in first
    assert "Unvisited: fridge 1" in first
    with pytest.raises(ValueError):
        build_prompt(ctx(), history_window=-1)


def test_memory_ignores_failed_actions_and_tracks_put():
    hist = HISTORY + [("go to fridge 1", "Nothing happens."), ("go to fridge 1", "The fridge 1 is closed."),
                      ("put apple 1 in/on fridge 1", "You put the apple 1 in/on the fridge 1.")]
    admissible = ["go to countertop 1", "go to cabinet 2", "go to sinkbasin 1", "examine fridge 1"]
    lines = memory_lines(hist, admissible=admissible)
    assert lines[-2:] == ["At: fridge 1", "Unvisited: cabinet 2"]  # in the admissible order
    assert not any(line.startswith("Holding") for line in lines)
    assert "put apple 1 in/on fridge 1" in lines[-3]
    assert not any(line.startswith("Unvisited") for line in memory_lines(hist))
    nxt = context_after(ctx(), "go to fridge 1", "The fridge 1 is closed.", ["open fridge 1"])
    assert nxt.step == ctx().step + 1 and nxt.history[-1] == ("go to fridge 1", "The fridge 1 is closed.")


def test_choose_action_argmax_and_length_normalisation():
    s = ActionScores(sum_logprobs=np.array([-2.0, -3.0, -5.0]), num_tokens=np.array([1, 3, 1]))
    i, p = choose_action(s, ["a", "b", "c"], temperature=0.0)
    z = np.exp([-2.0, -3.0, -5.0])
    assert i == 0 and np.allclose(p, z / z.sum())
    j, q = choose_action(s, ["a", "b", "c"], temperature=0.0, length_normalised=True)
    assert j == 1  # mean log-prob -1 beats -2
    assert np.allclose(q, np.exp([-2, -1, -5]) / np.exp([-2, -1, -5]).sum())


def test_choose_action_samples_from_tempered_distribution():
    s = ActionScores(sum_logprobs=np.log(np.array([0.2, 0.8])), num_tokens=np.array([2, 2]))
    rng = np.random.default_rng(0)
    picks = [choose_action(s, ["x", "y"], 1.0, rng)[0] for _ in range(4000)]
    assert abs(np.mean(picks) - 0.8) < 0.03
    _, p2 = choose_action(s, ["x", "y"], 2.0, rng)
    assert math.isclose(p2[1], math.sqrt(0.8) / (math.sqrt(0.8) + math.sqrt(0.2)), rel_tol=1e-9)
    with pytest.raises(ValueError):
        choose_action(s, ["x"], 0.0)
    with pytest.raises(ValueError):
        choose_action(s, ["x", "y"], -1.0)


def test_match_action_exact_prefix_fuzzy():
    adm = ["go to fridge 1", "go to fridge 10", "open fridge 1", "take apple 1 from countertop 1"]
    assert match_action("open fridge 1", adm) == "open fridge 1"
    assert match_action("> Go to  Fridge 1.\nthen more", adm) == "go to fridge 1"
    assert match_action("Action: open fridge 1", adm) == "open fridge 1"
    assert match_action("take apple 1", adm) == "take apple 1 from countertop 1"  # unfinished
    assert match_action("open fridge 1 and look", adm) == "open fridge 1"  # ran on
    assert match_action("tak aple 1 from countertp 1", adm) == "take apple 1 from countertop 1"
    assert normalise_command("  > LOOK. ") == "look"
    with pytest.raises(ValueError):
        match_action("look", [])

"""An honest run directory: config drift refused, one run at a time, OS errors named, files whole."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import yaml

from dmr_rl.config import load_config
from dmr_rl.errors import RunDirError
from dmr_rl.pipeline import rundir
from dmr_rl.atomic_io import write_atomic
from dmr_rl.pipeline.rundir import RunLock, check_resume


def _cfg(run_dir, *sets):
    return load_config(None, [f"run_dir={run_dir}", *sets])


def test_resume_with_result_changing_fields_is_refused_with_a_diff(tmp_path):
    d = tmp_path / "run"
    check_resume(_cfg(d, "eval.episodes=12"))
    recorded = (d / "config.yaml").read_text()
    with pytest.raises(RunDirError) as e:
        check_resume(_cfg(d, "eval.episodes=20", "lp.bits=4"))
    msg = str(e.value)
    assert "\n" not in msg and "eval.episodes 12 -> 20" in msg and "lp.bits 2 -> 4" in msg and "--fresh" in msg
    assert (d / "config.yaml").read_text() == recorded  # never rewritten to claim what was not run
    notes = []
    check_resume(_cfg(d, "eval.episodes=12", "collect.num_workers=5", "ray.num_cpus=3"), say=notes.append)
    assert len(notes) == 1 and "collect.num_workers 2 -> 5" in notes[0] and "ray.num_cpus" in notes[0]
    assert (d / "config.yaml").read_text() == recorded
    assert json.loads((d / "resumes.jsonl").read_text().splitlines()[-1])["changes"][0][0] == "collect.num_workers"


def test_stage_filled_paths_are_recorded_and_an_empty_request_matches_them(tmp_path):
    d = tmp_path / "run"
    cfg = _cfg(d)
    check_resume(cfg)
    cfg.lp.model_path = str(tmp_path / "lp-copy")  # what the quantize stage produced
    rundir.record_filled(cfg)
    assert yaml.safe_load((d / "config.yaml").read_text())["lp"]["model_path"] == str(tmp_path / "lp-copy")
    check_resume(_cfg(d))  # the same request: fine
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(RunDirError, match="lp.model_path"):
        check_resume(_cfg(d, f"lp.model_path={other}"))


def test_cli_run_refuses_drift_in_one_line_and_leaves_the_run_alone(tmp_path, capsys):
    from dmr_rl.cli import main

    d = tmp_path / "run"
    check_resume(_cfg(d))
    before = sorted(p.name for p in d.iterdir())
    assert main(["run", "--set", f"run_dir={d}", "--set", "lp.bits=4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmr: error: ") and "lp.bits 2 -> 4" in err[0]
    assert sorted(p.name for p in d.iterdir()) == sorted(before + ["logs"])  # no stage ran, no lock left


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    with RunLock(tmp_path) as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunDirError, match=rf"in use by another dmr run \(pid {os.getpid()} .*started"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()
    # a killed run leaves its lock behind: its pid is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({**holder, "pid": int(dead.stdout), "proc_start": "1"}))
    notes = []
    with RunLock(tmp_path, say=notes.append):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and "stale lock" in notes[0] and dead.stdout.strip() in notes[0]


def test_cli_run_on_a_directory_in_use_is_refused(tmp_path, capsys):
    from dmr_rl.cli import main

    d = tmp_path / "run"
    with RunLock(d):
        assert main(["run", "--set", f"run_dir={d}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {os.getpid()}" in err[0]


def test_full_disk_names_the_file_and_leaves_nothing_partial(tmp_path, monkeypatch):
    from dmr_rl.rollout.records import EpisodeRecord, TrajectoryStore

    target = write_atomic(tmp_path / "stages.json", '{"games": {}}')

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        write_atomic(target, '{"games": {}, "agent": {}}')
    assert e.value.filename == str(target) and e.value.errno == errno.ENOSPC
    assert target.read_text() == '{"games": {}}' and [p.name for p in tmp_path.iterdir()] == ["stages.json"]
    store = TrajectoryStore(tmp_path / "shards", "worker-0")
    with pytest.raises(OSError) as e:
        store.append(EpisodeRecord("e", 0, "t", "x", "task"))
    assert e.value.filename == str(store.path)


def test_cli_names_the_path_of_an_os_error(tmp_path, capsys):
    from dmr_rl.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["run", "--set", f"run_dir={blocker}/run", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmr: error: ") and str(blocker) in err[0]


def test_publish_dir_is_whole_or_absent_and_tolerates_a_racing_winner(tmp_path):
    from dmr_rl.atomic_io import publish_dir

    out = tmp_path / "ckpt"

    def broken(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        publish_dir(out, broken)
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its partial copy

    def build(value):
        return lambda tmp: (tmp / "config.json").write_text(value)

    assert publish_dir(out, build("first")) == out and (out / "config.json").read_text() == "first"
    publish_dir(out, build("second"))  # another process published first: its copy stays, ours goes
    assert (out / "config.json").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    (out / "config.json").unlink()  # a half-written directory that is not a checkpoint
    (out / "junk").write_text("x")
    with pytest.raises(OSError):  # a failed rename with no winner is an error, not a silent success
        publish_dir(out, build("third"))

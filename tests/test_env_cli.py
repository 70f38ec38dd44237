"""``dmr env eval --json``: stdout carries the JSON object alone, whatever the policy's libraries print."""
import json
import os

from dmr_rl.cli import main


def test_env_eval_json_stdout_is_the_json_alone(webshop_data, capfd, monkeypatch):
    import dmr_rl.cli.env_cmds as env_cmds

    real = env_cmds._policy

    def noisy(args, env):  # as llmcompressor's import does: a warning written to stdout
        os.write(1, b"fd-level noise\n")
        print("print noise")
        return real(args, env)

    monkeypatch.setattr(env_cmds, "_policy", noisy)
    rc = main(["env", "eval", "--env", "webshop", "--data", webshop_data, "--split", "valid_unseen",
               "--policy", "random", "--episodes", "2", "--json"])
    out, err = capfd.readouterr()
    assert rc == 0
    summary = json.loads(out)
    assert summary["episodes"] == 2 and summary["policy"] == "random"
    assert "fd-level noise" in err and "print noise" in err
    print("after")  # stdout is stdout again
    assert capfd.readouterr().out == "after\n"

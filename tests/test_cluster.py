"""cluster/: the `ray up` YAML passes Ray's validator, the KubeRay manifests are well formed, and
on a simulated three-node cluster the model servers land on the nodes carrying their resources."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def test_ray_up_yaml_validates_with_rays_validator():
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)  # raises on any schema violation
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and types["head"]["resources"]["CPU"] == 0
    assert types["hp_gpu"]["resources"]["hp_model"] >= 1 and types["hp_gpu"]["resources"]["GPU"] >= 1
    assert types["lp_gpu"]["resources"]["lp_model"] >= 1 and types["lp_gpu"]["resources"]["GPU"] >= 1
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cfg["max_workers"]


def test_ray_validator_rejects_a_broken_copy():
    """The validation above can fail: an unknown key or a head type that does not exist."""
    pytest.importorskip("ray")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["hp_gpu"]["resourcez"] = {"hp_model": 1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(raw)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(prepare_config(bad))


def _custom_resources(params: dict, where: str) -> dict:
    for k, v in params.items():
        assert isinstance(v, str), f"{where}: rayStartParams.{k} must be a string, got {v!r}"
    if "resources" not in params:
        return {}
    # an escaped JSON string: the YAML value is a JSON string literal holding a JSON object
    inner = json.loads(params["resources"])
    assert isinstance(inner, str), f"{where}: resources must be an escaped JSON string"
    return json.loads(inner)


def _check_cluster_spec(spec: dict, where: str) -> dict:
    head = spec["headGroupSpec"]
    _custom_resources(head["rayStartParams"], f"{where} head")
    assert head["template"]["spec"]["containers"][0]["image"]
    found = {}
    for g in spec["workerGroupSpecs"]:
        name = g["groupName"]
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        res = _custom_resources(g["rayStartParams"], f"{where} {name}")
        c = g["template"]["spec"]["containers"][0]
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        if res:
            assert gpus == g["rayStartParams"]["num-gpus"] == "1", name
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in g["template"]["spec"].get("volumes", [])}
        assert mounts <= volumes, f"{name}: mounts {mounts} without volumes"
        found.update(res)
    return found


def test_kuberay_raycluster_manifest():
    rc = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    res = _check_cluster_spec(rc["spec"], "RayCluster")
    assert res == {"hp_model": 1, "lp_model": 2}


def test_kuberay_rayjob_manifest():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("dmr run") and "ray.address=auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert _check_cluster_spec(spec["rayClusterSpec"], "RayJob") == {"hp_model": 1, "lp_model": 2}


def test_escaped_resources_check_can_fail():
    with pytest.raises(AssertionError, match="escaped JSON string"):
        _custom_resources({"resources": '{"hp_model": 1}'}, "x")
    with pytest.raises(AssertionError, match="must be a string"):
        _custom_resources({"num-gpus": 1}, "x")


# ---- multi-node placement -------------------------------------------------------------------
def _multinode_check() -> dict:
    """Runs in a fresh process (the session's ray_session must not be up beside a Cluster);
    the caller's RAY_TMPDIR keeps its Ray files out of /tmp/ray."""
    import functools

    import ray
    from ray.cluster_utils import Cluster

    from dmr_rl.config import TierConfig
    from dmr_rl.errors import ActorError
    from dmr_rl.serving.fake_backend import FakeBackend
    from dmr_rl.serving.launcher import create_model_servers, shutdown_all

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    hp_node = cluster.add_node(num_cpus=1, resources={"hp_model": 1})
    lp_node = cluster.add_node(num_cpus=1, resources={"lp_model": 2})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        hp = create_model_servers("hp", TierConfig(num_replicas=1, resources={"hp_model": 1}),
                                  functools.partial(FakeBackend, salt="hp"), place_timeout_s=60)
        lp = create_model_servers("lp", TierConfig(num_replicas=2, resources={"lp_model": 1}),
                                  functools.partial(FakeBackend, salt="lp"), place_timeout_s=60)
        actor_nodes = {}
        for tier, client in (("hp", hp), ("lp", lp)):
            actor_nodes[tier] = [ray._private.state.actors(h._actor_id.hex())["Address"]["NodeID"]
                                 for h in client.handles]
        scores = hp.score_actions(["go"], [["north", "south"]])
        try:
            create_model_servers("hp2", TierConfig(num_replicas=1, resources={"hp_model": 2}),
                                 functools.partial(FakeBackend, salt="hp"), place_timeout_s=3)
            error = ""
        except ActorError as e:
            error = str(e)
        shutdown_all(None, {"hp": hp, "lp": lp})
        return {"hp_node": hp_node.node_id, "lp_node": lp_node.node_id, "head": cluster.head_node.node_id,
                "actor_nodes": actor_nodes, "n_scores": len(scores), "error": error}
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_model_servers_land_on_nodes_with_their_resources():
    pytest.importorskip("ray")
    pytest.importorskip("dmr_rl.serving.launcher")
    root = Path(__file__).resolve().parents[1]
    tmp = f"/tmp/dmr_cl_{os.getpid()}"  # short: Ray's unix sockets live under it
    code = ("import json, sys; sys.path.insert(0, 'tests'); import test_cluster as t; "
            f"print('RESULT ' + json.dumps(t._multinode_check()))")
    os.makedirs(tmp, exist_ok=True)
    env = dict(os.environ, RAY_ADDRESS="", RAY_TMPDIR=tmp)  # all of this Ray's files under tmp
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                              timeout=240, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["actor_nodes"]["hp"] == [r["hp_node"]]
    assert r["actor_nodes"]["lp"] == [r["lp_node"], r["lp_node"]]
    assert r["head"] not in r["actor_nodes"]["hp"] + r["actor_nodes"]["lp"]
    assert r["n_scores"] == 1
    assert "cannot place tier 'hp2'" in r["error"] and "hp_model" in r["error"]

"""Shared fixtures: one Ray session for the whole test run, and small generated data sets."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray (2 CPUs) started once; ray.init costs ~10 s and ~740 MB here."""
    ray = pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def alfworld_data(tmp_path_factory):
    """ALFWorld-format games (all six task types in every split), generated once."""
    from environments.alfworld.generator import generate

    root = tmp_path_factory.mktemp("alfworld")
    generate(str(root), n=24, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def webshop_data(tmp_path_factory):
    """A small WebShop catalog in the real file format, generated once."""
    from environments.webshop.generator import generate

    root = tmp_path_factory.mktemp("webshop")
    generate(str(root), n_products=300, n_instructions=60, seed=0)
    return str(root)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

"""Which environments a rollout worker hosts: a picklable spec, and the run's data directory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class EnvSpec:
    """Everything a worker process needs to build its environments (``environments.make_env``)."""

    name: str
    data_dir: str
    split: str
    max_steps: Optional[int] = None

    def make(self):
        from environments import make_env

        return make_env(self.name, self.data_dir, self.split, max_steps=self.max_steps or None)


def ensure_env_data(cfg) -> str:
    """The data root of ``cfg.env``: ``env.data_dir`` when set, else games generated once under
    ``<run_dir>/data/<env>`` (``env.generate_n``/``env.generate_seed``) and reused after."""
    if cfg.env.data_dir:
        return cfg.env.data_dir
    root = Path(cfg.run_dir) / "data" / cfg.env.name
    marker = root / ".generated"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        if cfg.env.name == "alfworld":
            from environments.alfworld.generator import generate

            generate(str(root), n=cfg.env.generate_n, seed=cfg.env.generate_seed, train_n=cfg.env.generate_train_n)
        elif cfg.env.name == "webshop":
            from environments.webshop.generator import generate

            generate(str(root), n_products=max(10, 10 * cfg.env.generate_n),
                     n_instructions=cfg.env.generate_n, seed=cfg.env.generate_seed)
        else:  # pragma: no cover - config validation allows only the two families
            raise ValueError(f"no generator for environment {cfg.env.name!r}")
        marker.write_text(f"n={cfg.env.generate_n} train_n={cfg.env.generate_train_n} seed={cfg.env.generate_seed}\n")
    return str(root)


def env_spec_from_config(cfg, split: Optional[str] = None) -> EnvSpec:
    return EnvSpec(cfg.env.name, ensure_env_data(cfg), split or cfg.env.train_split, cfg.env.max_steps or None)

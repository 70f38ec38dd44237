"""dmr-rl: Dynamic Mixed-Precision Routing for multi-step LLM agents (metadata in setup.cfg)."""
from setuptools import setup

setup()

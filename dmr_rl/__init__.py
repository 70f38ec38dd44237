"""dmr-rl: Dynamic Mixed-Precision Routing for multi-step LLM agents on Ray."""

__version__ = "0.1.0"

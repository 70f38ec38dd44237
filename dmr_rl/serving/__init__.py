"""Serving the precision tiers to rollout workers.

- ``model_server.ModelServer``: one tier's Backend behind a request-batching async Ray actor.
- ``clients.TierClient`` (Ray replicas, load-balanced) and ``clients.LocalTierClient`` (in-process):
  the same calls, so rollouts and tests run with or without Ray actors.
- ``launcher``: the one place that starts Ray and creates actors and placement groups.

Nothing here imports Ray or torch at package import time.
"""

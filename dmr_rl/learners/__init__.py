"""RLlib learners for the router: stage 1 (BCE on KL labels) and stage 2 (GRPO).

Import ``dmr_rl.learners.router_learners`` (it imports Ray); this ``__init__`` stays light.
"""

"""Pure algorithm functions of DMR (no Ray): KL labels, router losses and metrics, GRPO.

Tensors (torch or numpy) in, ``(loss, metrics)`` or arrays out; shapes in each docstring.
Import the submodules directly (``from dmr_rl.algos.grpo import grpo_loss``): this package
``__init__`` imports nothing heavy.
"""

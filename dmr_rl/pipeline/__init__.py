"""Drivers, one ``run()``/``fit()`` each: collect, label, train_sft, train_grpo, evaluate.

Import a driver module directly (``from dmr_rl.pipeline.collect import run``); this package
imports nothing heavy.
"""

"""Evaluation metrics, tables, plots and the report writer.

``from dmr_rl.report import write; write(run_dir)`` writes ``<run_dir>/report/``. Submodules:
``metrics`` (pure numpy), ``layout`` (where results live), ``tables``, ``plots``, ``writer``.
"""
from __future__ import annotations


def write(run_dir, **kwargs):
    """See :func:`dmr_rl.report.writer.write`."""
    from dmr_rl.report.writer import write as _write

    return _write(run_dir, **kwargs)

"""Held-out speech for ``bench/engine_quality.py``: sentences with references, synthesised on demand."""

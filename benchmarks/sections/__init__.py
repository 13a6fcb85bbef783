"""Sections of ``benchmarks/run.py``: each module's ``run(options)`` measures one part of sekd."""

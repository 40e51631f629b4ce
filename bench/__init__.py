"""Benchmarks, run from the repo root as modules: ``python -m bench.<name> [--doc]``.

Each compares against a baseline measured in the same run and can rewrite its own section of
docs/benchmarks.md (``bench._report.write_section``).
"""

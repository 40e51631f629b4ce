"""Ray applications, run from the repo root.

``ray job submit --working-dir . -- python -m jobs.<name> ...``
"""

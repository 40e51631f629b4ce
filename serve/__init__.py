"""The Ray Serve application, run from the repo root (``serve run serve/config.yaml``)."""

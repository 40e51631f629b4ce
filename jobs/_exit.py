"""Exit codes shared by the job entrypoints, as in the CLIs: 0 ok; 1 failed (one line on
stderr, no traceback); 3 store unavailable."""

from __future__ import annotations

import sys
from collections.abc import Callable

from config_store.errors import ConfigStoreError, StoreUnavailable
from deepfix.errors import DeepfixError

__all__ = ["run_reporting_errors"]


def run_reporting_errors(body: Callable[[], int]) -> int:
    """Run a job's body; expected failures become one stderr line and their exit code."""
    try:
        return body()
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (ConfigStoreError, DeepfixError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

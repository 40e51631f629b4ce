"""``deepfix``: run the local stack and manage models.

    deepfix up        start etcd + a Ray head on loopback (idempotent)
    deepfix status    show both with their addresses
    deepfix down      stop what `up` started

Exit codes: 0 ok; 1 operation failed (the message says why); 2 usage; 3 store unavailable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from config_store.errors import ConfigStoreError, StoreUnavailable
from deepfix import stack
from deepfix.errors import DeepfixError
from deepfix.models_cli import models_app

__all__ = ["app", "main"]

app = typer.Typer(
    help="deepfix: restore degraded face images at scale. Exit codes: 0 ok; 1 failed; "
    "2 usage; 3 store unavailable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Map the library's error classes to one-line messages and exit codes."""
    try:
        yield
    except StoreUnavailable as exc:
        _fail(str(exc), 3)
    except (ConfigStoreError, DeepfixError) as exc:
        _fail(str(exc), 1)


def _table(rows: list[stack.ServiceStatus]) -> Table:
    table = Table(title="deepfix local stack")
    for col in ("Service", "Running", "Address", "PID", "Detail"):
        table.add_column(col)
    for s in rows:
        table.add_row(
            s.name, "yes" if s.running else "no", s.address or "", str(s.pid or ""), s.detail
        )
    return table


@app.command()
def up(
    ray: bool = typer.Option(True, help="also start the Ray head (--no-ray: etcd only)"),
) -> None:
    """Start etcd and a Ray head on loopback (token auth on); reuse them if running."""
    with errors():
        rows = stack.up(ray=ray)
    out.print(_table(rows))
    address = stack.ray_address()
    if ray and address:
        out.print(
            "submit jobs with:\n"
            f"  export RAY_AUTH_MODE=token RAY_ADDRESS={address}\n"
            "  ray job submit --working-dir . -- python -m jobs.<name> ..."
        )


@app.command()
def status() -> None:
    """Show etcd and the Ray head with their addresses (exit 1 if either is down)."""
    rows = stack.status()
    out.print(_table(rows))
    if not all(r.running for r in rows):
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop the processes that `deepfix up` started, and nothing else."""
    with errors():
        stopped = stack.down()
    if not stopped:
        out.print("nothing to stop")
    for s in stopped:
        out.print(f"stopped {s.name} (pid {s.pid})")


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="deepfix")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

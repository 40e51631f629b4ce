"""``deepfix models``: list, inspect, promote and delete registered models; summarise networks.

    deepfix models list [--name NAME]
    deepfix models show NAME[:VERSION|@ALIAS]
    deepfix models promote NAME:VERSION --alias production
    deepfix models delete NAME:VERSION
    deepfix models summary ARCH [--size 256]

Exit codes: 0 ok; 1 operation failed (one line says why); 2 usage; 3 store unavailable.
Mounted by ``deepfix/cli.py`` with ``app.add_typer(models_app, name="models")``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from config_store.errors import ConfigStoreError, StoreUnavailable
from deepfix.errors import DeepfixError, ModelStoreError

if TYPE_CHECKING:
    from deepfix.model_store import ModelStore


def _models() -> ModelStore:
    # Imported on use: model_store pulls in torch (~1 s), which `deepfix up/status` never need.
    from deepfix.model_store import ModelStore

    return ModelStore()


__all__ = ["EXIT_CODES", "app", "models_app"]

app = typer.Typer(
    help="Registered models: list, show, promote, delete; network summaries.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = app
out = Console()
err = Console(stderr=True)

# Most specific first: the first matching class decides the exit code.
EXIT_CODES: list[tuple[type[Exception], int]] = [
    (StoreUnavailable, 3),
    (ConfigStoreError, 1),
    (DeepfixError, 1),
]


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except tuple(cls for cls, _ in EXIT_CODES) as exc:
        code = next(c for cls, c in EXIT_CODES if isinstance(exc, cls))
        _fail(str(exc), code)


def _exact(ref: str) -> tuple[str, int]:
    from deepfix.model_store import parse_ref

    name, version, _ = parse_ref(ref)
    if version is None:
        raise ModelStoreError(f"{ref!r}: name an exact version, NAME:VERSION")
    return name, version


@app.command("list")
def list_(
    name: str | None = typer.Option(None, "--name", help="only this model"),
) -> None:
    """Every registered version, with its aliases and validation metrics."""
    with _errors():
        models = _models()
        versions = models.list(name)
        aliases = {n: models.aliases(n) for n in sorted({v.name for v in versions})}
    table = Table(title="registered models")
    table.add_column("Model", no_wrap=True)
    for col in ("Version", "Aliases", "Arch", "Dataset", "val PSNR", "Created"):
        table.add_column(col)
    for v in versions:
        held = ", ".join(a for a, ver in aliases[v.name].items() if ver == v.version)
        psnr = v.metrics.get("val_psnr")
        table.add_row(
            v.name,
            str(v.version),
            held,
            str(v.architecture.get("name", "")),
            f"{v.dataset or ''}{':' + v.dataset_version if v.dataset_version else ''}",
            f"{psnr:.2f}" if psnr is not None else "",
            v.created_at,
        )
    if not versions:
        out.print("no models registered")
        return
    out.print(table)


@app.command()
def show(ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS")) -> None:
    """One version's metadata as JSON (training history included)."""
    with _errors():
        models = _models()
        version = models.resolve(ref)
        held = [a for a, v in models.aliases(version.name).items() if v == version.version]
    out.print_json(json.dumps({**version.model_dump(mode="json"), "aliases": held}))


@app.command()
def promote(
    ref: str = typer.Argument(..., help="NAME:VERSION"),
    alias: str = typer.Option("production", "--alias", help="alias to point at the version"),
) -> None:
    """Point an alias at a version (compare-and-swap in etcd)."""
    with _errors():
        name, version = _exact(ref)
        _models().promote(name, version, alias)
    out.print(f"{name}@{alias} -> {version}")


@app.command()
def delete(ref: str = typer.Argument(..., help="NAME:VERSION")) -> None:
    """Delete a version and its artifacts (refused while an alias points to it)."""
    with _errors():
        name, version = _exact(ref)
        _models().delete(name, version)
    out.print(f"deleted {name}:{version}")


@app.command()
def summary(
    arch: str = typer.Argument(..., help="packaged config (unet_r2_large) or architecture"),
    size: int = typer.Option(256, "--size", min=8, help="probe image side"),
) -> None:
    """Layer table, parameters and FLOPs of a network."""
    from deepfix.models import render, summarize

    with _errors():
        result = summarize(arch, (size, size))
    out.print(render(result))

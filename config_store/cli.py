"""``deepfix-config``: manage the documents of the config store from a shell.

Exit codes (also in ``--help`` and the README):
  0  ok
  1  not found, already exists, conflict, or invalid document
  2  usage error (bad option, bad --set syntax, unreadable file)
  3  store unavailable (etcd not reachable)
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from config_store.collections import get_collection
from config_store.config import lookup
from config_store.errors import (
    AlreadyExists,
    ConfigStoreError,
    Conflict,
    HistoryCompacted,
    NotFound,
    StoreUnavailable,
    ValidationError,
)
from config_store.store import ConfigStore

__all__ = ["EXIT_CODES", "app", "apply_sets", "main", "parse_sets"]

EXIT_OK, EXIT_DOCUMENT, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
# One table from error class to exit code; the first matching class wins.
EXIT_CODES: list[tuple[type[Exception], int]] = [
    (StoreUnavailable, EXIT_UNAVAILABLE),
    (NotFound, EXIT_DOCUMENT),
    (AlreadyExists, EXIT_DOCUMENT),
    (Conflict, EXIT_DOCUMENT),
    (ValidationError, EXIT_DOCUMENT),
    (HistoryCompacted, EXIT_DOCUMENT),
    (ConfigStoreError, EXIT_DOCUMENT),
]

HELP = """Manage deepfix's documents (dataset parameter sets, ...) in etcd.

Exit codes: 0 ok; 1 not found, already exists, conflict or invalid document;
2 usage; 3 store unavailable. etcd is found through DEEPFIX_ETCD, else the local
stack's record (`deepfix up`), else http://127.0.0.1:2379."""

app = typer.Typer(
    help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)
out = Console()
err = Console(stderr=True)


class _State:
    collection = "datasets"
    endpoints: str | None = None
    timeout = 5.0


state = _State()


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ConfigStoreError as exc:
        code = next(c for cls, c in EXIT_CODES if isinstance(exc, cls))
        _fail(str(exc), code)


def _store() -> ConfigStore:
    return ConfigStore(state.endpoints, timeout=state.timeout)


def _dump(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def _parse_value(raw: str) -> Any:
    """``--set`` values are JSON when they parse as JSON (numbers, true, lists), else strings."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_sets(assignments: list[str]) -> list[tuple[list[str], Any]]:
    """Parse ``dotted.key=value`` items up front, so a typo fails before etcd is asked."""
    parsed = []
    for item in assignments:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            raise typer.BadParameter(f"--set {item!r}: expected KEY=VALUE with a dotted KEY")
        parsed.append((parts, _parse_value(raw)))
    return parsed


def apply_sets(
    document: dict[str, Any], assignments: list[tuple[list[str], Any]]
) -> dict[str, Any]:
    """Apply parsed ``--set`` assignments to a copy of ``document``."""
    doc: dict[str, Any] = json.loads(json.dumps(document))
    for parts, value in assignments:
        node: Any = doc
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise typer.BadParameter(f"--set {'.'.join(parts)}: {part!r} is not an object")
        last = parts[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise typer.BadParameter(f"--set {'.'.join(parts)}: cannot set {last!r} here")
    return doc


def _read_json(path: Path) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        return json.loads(text)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read JSON from {path}: {exc}", EXIT_USAGE)


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="KEY=VALUE with a dotted KEY and a JSON (or plain) VALUE"),
]


@app.callback()
def _root(
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="collection of documents")
    ] = "datasets",
    endpoints: Annotated[
        str | None,
        typer.Option("--endpoints", envvar="DEEPFIX_ETCD", help="comma-separated etcd URLs"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds per etcd request")] = 5.0,
) -> None:
    state.collection, state.endpoints, state.timeout = collection, endpoints, timeout


@app.command("list")
def list_() -> None:
    """Table of the collection's documents: No, Name, Details, updated."""
    with _errors():
        docs = _store().list(state.collection)
    table = Table(title=f"{state.collection} ({len(docs)})")
    for col in ("No", "Name", "Details", "Updated", "Revision"):
        table.add_column(col)
    for i, d in enumerate(docs, 1):
        details = str(d.value.get("details", ""))
        table.add_row(
            str(i),
            d.name,
            details[:60] + ("..." if len(details) > 60 else ""),
            str(d.value.get("updated_at") or ""),
            str(d.revision),
        )
    out.print(table)


@app.command()
def show(name: str) -> None:
    """The whole document as JSON."""
    with _errors():
        _dump(_store().get(state.collection, name).value)


@app.command()
def get(name: str, key: Annotated[str | None, typer.Argument(help="dotted key")] = None) -> None:
    """One value by dotted KEY (JSON), or the whole document."""
    with _errors():
        doc = _store().get(state.collection, name).value
        _dump(doc if key is None else lookup(doc, key))


@app.command()
def create(
    name: str,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", "-f", help="JSON document ('-' for stdin)")
    ] = None,
    sets: SetOpt = None,
) -> None:
    """Create NAME from a file and/or --set values; fails if it exists."""
    base = _read_json(from_file) if from_file else {}
    if not isinstance(base, dict):
        _fail("the document must be a JSON object", EXIT_USAGE)
    doc = apply_sets(base, parse_sets(sets or []))
    with _errors():
        created = _store().create(state.collection, name, doc)
    err.print(f"created {state.collection}/{name} at revision {created.revision}")


@app.command()
def edit(name: str, sets: SetOpt = None) -> None:
    """Change fields of NAME; refuses (exit 1) if someone else changed it meanwhile."""
    if not sets:
        _fail("edit needs at least one --set KEY=VALUE", EXIT_USAGE)
    assignments = parse_sets(sets)
    with _errors():
        store = _store()
        current = store.get(state.collection, name)
        changed = apply_sets(current.value, assignments)
        updated = store.update(state.collection, name, changed, revision=current.revision)
    err.print(f"updated {state.collection}/{name} to revision {updated.revision}")


@app.command()
def delete(
    name: str,
    revision: Annotated[int | None, typer.Option(help="only if still at this revision")] = None,
) -> None:
    """Delete NAME."""
    with _errors():
        _store().delete(state.collection, name, revision=revision)
    err.print(f"deleted {state.collection}/{name}")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix.rstrip("."): value}


def _describe_change(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """``key: old -> new`` for each leaf that differs (timestamps left out)."""
    if before is None:
        return "created"
    a, b = _flatten(before), _flatten(after)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k != "updated_at")
    return "; ".join(f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys)


@app.command()
def history(name: str, limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """Earlier versions of NAME, newest first, as long as etcd has not compacted them."""
    with _errors():
        h = _store().history(state.collection, name, limit=limit)
    table = Table(title=f"{state.collection}/{name}")
    for col in ("Version", "Revision", "Updated", "Change"):
        table.add_column(col, overflow="fold")
    older = [*h.versions[1:], None]
    for d, before in zip(h.versions, older, strict=True):
        table.add_row(
            str(d.version),
            str(d.revision),
            str(d.value.get("updated_at") or ""),
            _describe_change(before.value if before else None, d.value),
        )
    out.print(table)
    if h.compacted:
        err.print("older versions were compacted by etcd and can no longer be shown")


@app.command()
def watch(
    name: Annotated[str | None, typer.Argument()] = None,
    count: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
) -> None:
    """Print a JSON line per change (of NAME, or of the whole collection) until Ctrl-C."""
    with _errors():
        watcher = _store().watch(state.collection, name)

    def _stop(*_: object) -> None:
        watcher.cancel()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    seen = 0
    try:
        for ev in watcher:
            line = {"type": ev.type, "name": ev.name, "revision": ev.revision, "value": ev.value}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        watcher.cancel()


@app.command()
def export(file: Annotated[Path | None, typer.Argument(help="default: stdout")] = None) -> None:
    """The whole collection as one JSON file."""
    with _errors():
        data = _store().export(state.collection)
    text = json.dumps(data, indent=2) + "\n"
    if file is None:
        sys.stdout.write(text)
    else:
        file.write_text(text)
        err.print(f"exported {len(data['documents'])} documents to {file}")


@app.command("import")
def import_(
    file: Path,
    overwrite: Annotated[bool, typer.Option(help="replace documents that exist")] = False,
) -> None:
    """Load an export; every document is validated before anything is written."""
    data = _read_json(file)
    if not isinstance(data, dict):
        _fail("an import file is a JSON object", EXIT_USAGE)
    with _errors():
        counts = _store().import_(state.collection, data, overwrite=overwrite)
    err.print(", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command()
def schema() -> None:
    """The collection's JSON Schema."""
    registered = get_collection(state.collection)
    if registered is None:
        _fail(f"collection {state.collection!r} has no registered schema", EXIT_DOCUMENT)
    _dump(registered.model.model_json_schema())


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (usage errors exit 2 via typer)."""
    try:
        app(args=argv, prog_name="deepfix-config")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return EXIT_OK

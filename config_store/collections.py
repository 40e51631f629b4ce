"""Collection schemas: which pydantic model validates the documents of a collection.

Schemas are registered in code (``register_collection``) or, for packages above config_store,
through the ``config_store.collections`` entry-point group, so that this lower layer never
imports them. Entry points are read lazily, on first lookup, never at import.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points

from pydantic import BaseModel

from config_store.errors import ValidationError

__all__ = [
    "NAME_PATTERN",
    "CollectionSchema",
    "check_name",
    "get_collection",
    "register_collection",
    "registered_collections",
]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENTRY_POINT_GROUP = "config_store.collections"


@dataclass(frozen=True)
class CollectionSchema:
    """How one collection's documents are checked on write.

    Args:
        model: the pydantic model every document must satisfy; what is stored is its JSON dump,
            defaults included, so readers see the whole document.
        timestamps: stamp ``created_at`` on create and ``updated_at`` on every write.
        name_field: a document field that must equal the key's name (e.g. ``name``), or None.
    """

    model: type[BaseModel]
    timestamps: bool = False
    name_field: str | None = None


_registry: dict[str, CollectionSchema] = {}
_lock = threading.Lock()
_loaded: set[str] = set()  # collection names whose entry point was looked up


def check_name(kind: str, name: str) -> str:
    """Refuse anything that is not a slug, so names are safe in keys, paths and URLs."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValidationError(
            f"invalid {kind} name {name!r}: use 1-63 characters [a-z0-9_-], starting with a "
            "letter or digit"
        )
    return name


def register_collection(name: str, schema: CollectionSchema, *, replace: bool = False) -> None:
    """Register the schema of collection ``name``; a second registration raises unless replace."""
    check_name("collection", name)
    with _lock:
        if name in _registry and not replace and _registry[name] != schema:
            raise ValueError(f"collection {name!r} already has a schema")
        _registry[name] = schema


def _load_entry_point(name: str | None = None) -> None:
    """Load the entry point of collection ``name`` (all of them when None), once each.

    One at a time, because loading imports the defining module: the models schema pulls in
    torch, which a ``deepfix-config`` call on datasets should not pay for.
    """
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (name is not None and ep.name != name) or ep.name in _loaded:
            continue
        schema = ep.load()
        if not isinstance(schema, CollectionSchema):
            raise TypeError(f"entry point {ep.value} is not a CollectionSchema")
        with _lock:
            _registry.setdefault(ep.name, schema)
            _loaded.add(ep.name)


def get_collection(name: str) -> CollectionSchema | None:
    """The schema of collection ``name``, or None when it holds free-form JSON."""
    if name not in _registry and name not in _loaded:
        _load_entry_point(name)
        _loaded.add(name)  # looked up: a schemaless collection is not searched for again
    return _registry.get(name)


def registered_collections() -> dict[str, CollectionSchema]:
    _load_entry_point()
    return dict(_registry)

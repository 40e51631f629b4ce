"""Architecture registry: a name -> constructor table, and configs that pick an entry.

Modelled on timm's ``models/_registry.py``: a constructor registers itself with
``@register_model("name")`` in the module that defines the network, and a model is built from a
small JSON document, ``{"name": "unet_r2", "kwargs": {"base_channels": 16}}``. Packaged variants
(``deepfix/models/configs/<variant>.json``) are such documents. Unknown and duplicate names raise
:class:`~deepfix.errors.RegistryError` naming what is known; nothing falls back silently.

This module knows nothing about the networks themselves (those are U-Nets after Ronneberger et
al. 2015 and Alom et al. 2018, see :mod:`deepfix.models.unet_r2`), nor about optimisers,
checkpoints or Ray.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepfix.errors import RegistryError

__all__ = [
    "ArchitectureConfig",
    "build_model",
    "list_arch_configs",
    "list_models",
    "load_arch_config",
    "model_entrypoint",
    "register_model",
]

ModelFn = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFn)

# Names double as file stems of packaged configs, so keep them to a safe, boring alphabet
# (this is also what stops "../x" from reaching outside the configs folder).
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_CONFIG_PACKAGE = "deepfix.models"
_CONFIG_DIR = "configs"

_MODELS: dict[str, ModelFn] = {}


class ArchitectureConfig(BaseModel):
    """Which registered architecture to build, and the keyword arguments of its constructor.

    Attributes:
        name: a name from :func:`list_models`.
        kwargs: keyword arguments of the constructor; each constructor validates its own.
    """

    # A typo in a hand-written config ("kwarg") must fail loudly, not build a default model.
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


def _known(names: list[str]) -> str:
    return ", ".join(names) if names else "(none)"


def register_model(name: str) -> Callable[[F], F]:
    """Register a constructor ``(**kwargs) -> nn.Module`` under ``name``.

    Args:
        name: lower-case identifier, unique across the registry.

    Raises:
        RegistryError: the name is malformed or already taken.
    """
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(f"architecture name {name!r} must match {_NAME_RE.pattern}")

    def decorator(fn: F) -> F:
        if name in _MODELS:
            owner = _MODELS[name]
            raise RegistryError(
                f"architecture {name!r} is already registered by "
                f"{owner.__module__}.{owner.__qualname__}; known: {_known(list_models())}"
            )
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(_MODELS)


def model_entrypoint(name: str) -> ModelFn:
    """The constructor registered under ``name``.

    Raises:
        RegistryError: unknown name; the message lists the known ones.
    """
    try:
        return _MODELS[name]
    except KeyError:
        raise RegistryError(
            f"unknown architecture {name!r}; known: {_known(list_models())}"
        ) from None


def build_model(config: ArchitectureConfig | dict[str, Any]) -> nn.Module:
    """Build a freshly initialised network from an architecture config.

    Args:
        config: an :class:`ArchitectureConfig` or a dict of the same shape (e.g. parsed JSON).

    Raises:
        RegistryError: the name is not registered.
        pydantic.ValidationError: the config or the constructor's kwargs are invalid.
    """
    cfg = ArchitectureConfig.model_validate(config)
    return model_entrypoint(cfg.name)(**cfg.kwargs)


def list_arch_configs() -> list[str]:
    """Variants packaged as ``deepfix/models/configs/<variant>.json``, sorted."""
    folder = resources.files(_CONFIG_PACKAGE).joinpath(_CONFIG_DIR)
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".json")
    )


def load_arch_config(variant: str) -> ArchitectureConfig:
    """Read the packaged architecture config of ``variant`` (e.g. ``"unet_r2_large"``).

    The file is read through :mod:`importlib.resources`, so this works from a wheel as well as
    from a source checkout. The name inside is not checked against the registry here;
    :func:`build_model` does that.

    Raises:
        RegistryError: no such packaged variant; the message lists the known ones.
        pydantic.ValidationError: the file is not a valid architecture config.
    """
    known = list_arch_configs()
    if not _NAME_RE.fullmatch(variant) or variant not in known:
        raise RegistryError(f"unknown architecture config {variant!r}; known: {_known(known)}")
    path = resources.files(_CONFIG_PACKAGE).joinpath(_CONFIG_DIR, f"{variant}.json")
    return ArchitectureConfig.model_validate_json(path.read_text(encoding="utf-8"))

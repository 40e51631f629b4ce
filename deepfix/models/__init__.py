"""Restoration networks and their registry.

U-Nets after Ronneberger et al. (2015) and their recurrent residual form, R2U-Net, after Alom
et al. (2018). Build one from an architecture config::

    from deepfix.models import build_model, load_arch_config

    model = build_model(load_arch_config("unet_r2"))

Each module that defines a network registers it with ``@register_model``; the imports below
are explicit (no filename scanning), and importing this package does nothing beyond filling
the registry.
"""

from deepfix.models import unet_r2 as _unet_r2  # noqa: F401  (registers unet_r2, unet_plain)
from deepfix.models.registry import (
    ArchitectureConfig,
    build_model,
    list_arch_configs,
    list_models,
    load_arch_config,
    model_entrypoint,
    register_model,
)
from deepfix.models.summary import LayerRow, ModelSummary, render, summarize
from deepfix.models.unet_r2 import UNet

__all__ = [
    "ArchitectureConfig",
    "LayerRow",
    "ModelSummary",
    "UNet",
    "build_model",
    "list_arch_configs",
    "list_models",
    "load_arch_config",
    "model_entrypoint",
    "register_model",
    "render",
    "summarize",
]

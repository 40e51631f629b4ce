"""Layer table, parameter counts and FLOPs of a network at a given input size.

Used by ``deepfix models summary NAME`` and by ``bench/infer.py``. For the networks themselves
(U-Net, Ronneberger et al. 2015; R2U-Net, Alom et al. 2018) see :mod:`deepfix.models.unet_r2`.

FLOPs are counted from forward hooks on one image, so a module applied several times (the
shared convolution of a recurrent unit is applied ``t + 1`` times) is counted once per call,
and the sizes are those actually computed (after any padding inside ``forward``). Only
convolutions, transposed convolutions and linear layers are counted, as multiply-adds x 2;
biases, normalisation, activations, pooling, up-sampling and additions are left out (for the
default R2U-Net they add well under 5 %), which is the usual convention of papers' "FLOPs".
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from deepfix.errors import RegistryError
from deepfix.models.registry import (
    ArchitectureConfig,
    build_model,
    list_arch_configs,
    list_models,
    load_arch_config,
)

if TYPE_CHECKING:  # rich is only needed to draw, not to count
    from rich.table import Table

__all__ = ["LayerRow", "ModelSummary", "layer_flops", "render", "summarize"]


class LayerRow(BaseModel):
    """One leaf module of the network.

    Attributes:
        name: dotted path of the module in the network.
        type: class name of the module.
        output_shape: output shape per image (without the batch dimension), of the last call.
        params: parameters held by this module itself.
        flops: FLOPs per image summed over all calls (0 for uncounted module types).
        calls: how often the module ran in one forward pass.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    flops: int
    calls: int


class ModelSummary(BaseModel):
    """What :func:`summarize` measured.

    Attributes:
        name: the architecture name or config variant, or the class name of a given module.
        input_shape: shape of the probe input, ``(1, C, H, W)``.
        layers: leaf modules in the order they first ran.
        total_params: all parameters.
        trainable_params: parameters with ``requires_grad``.
        flops: FLOPs per image (conv/linear multiply-adds x 2, see the module docstring).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    input_shape: tuple[int, int, int, int]
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    flops: int

    @property
    def gflops(self) -> float:
        """FLOPs per image in units of 1e9."""
        return self.flops / 1e9


def layer_flops(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """FLOPs of one call of ``module`` over the whole batch; 0 for uncounted types.

    Convolution: ``2 * Cin/groups * prod(kernel) * Cout * prod(output spatial)`` per image;
    a transposed convolution scatters each *input* pixel, so its spatial factor is the
    input's; linear: ``2 * in * out`` per output row.
    """
    if isinstance(module, _ConvNd):
        kernel = math.prod(module.kernel_size)
        per_position = 2 * (module.in_channels // module.groups) * kernel * module.out_channels
        if module.transposed:
            x = inputs[0]
            return per_position * x.shape[0] * math.prod(x.shape[2:])
        return per_position * output.shape[0] * math.prod(output.shape[2:])
    if isinstance(module, nn.Linear):
        rows = output.numel() // module.out_features
        return 2 * module.in_features * module.out_features * rows
    return 0


def _resolve(model_or_name: nn.Module | str | ArchitectureConfig) -> tuple[str, nn.Module]:
    if isinstance(model_or_name, nn.Module):
        return type(model_or_name).__name__, model_or_name
    if isinstance(model_or_name, ArchitectureConfig):
        return model_or_name.name, build_model(model_or_name)
    # A packaged variant wins over a bare registry name: "unet_r2" exists as both, with the
    # same defaults, and "unet_r2_large" only as a variant.
    if model_or_name in list_arch_configs():
        return model_or_name, build_model(load_arch_config(model_or_name))
    if model_or_name in list_models():
        return model_or_name, build_model(ArchitectureConfig(name=model_or_name))
    raise RegistryError(
        f"unknown model {model_or_name!r}; architectures: {', '.join(list_models())}; "
        f"configs: {', '.join(list_arch_configs())}"
    )


def summarize(
    model_or_name: nn.Module | str | ArchitectureConfig,
    input_hw: tuple[int, int] = (256, 256),
    *,
    in_channels: int = 3,
) -> ModelSummary:
    """Run one zero image through the network and tabulate its leaf modules.

    The network runs in eval mode (restored afterwards) without autograd, on the device and
    dtype of its parameters.

    Args:
        model_or_name: a network, a packaged config variant or architecture name, or a config.
        input_hw: height and width of the probe image.
        in_channels: channels of the probe image.

    Raises:
        RegistryError: an unknown name.
    """
    name, model = _resolve(model_or_name)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    probe = torch.zeros(1, in_channels, *input_hw, device=device, dtype=dtype)

    paths = {module: path for path, module in model.named_modules()}
    order: list[nn.Module] = []
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    flops: dict[nn.Module, int] = {}
    calls: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if module not in calls:
            order.append(module)
            calls[module] = flops[module] = 0
        calls[module] += 1
        flops[module] += layer_flops(module, inputs, output)
        if isinstance(output, Tensor):
            shapes[module] = tuple(output.shape[1:])

    # Leaves, plus any container that owns parameters directly, so the rows' params add up.
    watched = [
        m
        for m in model.modules()
        if not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False))
    ]
    handles = [m.register_forward_hook(hook) for m in watched]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    layers = [
        LayerRow(
            name=paths[m] or "(root)",
            type=type(m).__name__,
            output_shape=shapes.get(m, ()),
            params=sum(p.numel() for p in m.parameters(recurse=False)),
            flops=flops[m],
            calls=calls[m],
        )
        for m in order
    ]
    return ModelSummary(
        name=name,
        input_shape=(1, in_channels, input_hw[0], input_hw[1]),
        layers=layers,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=sum(row.flops for row in layers),
    )


def render(summary: ModelSummary) -> Table:
    """The summary as a :class:`rich.table.Table` (layers, then totals in the caption)."""
    from rich.table import Table

    _, channels, height, width = summary.input_shape
    table = Table(
        title=f"{summary.name} @ {channels}x{height}x{width}",
        caption=(
            f"params {summary.total_params:,} (trainable {summary.trainable_params:,}) · "
            f"{summary.gflops:.3f} GFLOPs/image (conv/linear multiply-adds x 2)"
        ),
    )
    table.add_column("Layer")
    table.add_column("Type")
    table.add_column("Output (C, H, W)")
    table.add_column("Params", justify="right")
    table.add_column("Calls", justify="right")
    table.add_column("MFLOPs", justify="right")
    for row in summary.layers:
        table.add_row(
            row.name,
            row.type,
            " x ".join(map(str, row.output_shape)),
            f"{row.params:,}",
            str(row.calls),
            f"{row.flops / 1e6:,.1f}" if row.flops else "",
        )
    return table

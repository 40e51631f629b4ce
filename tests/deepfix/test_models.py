"""The architecture registry, the U-Nets (Ronneberger et al. 2015; Alom et al. 2018) and the
model summary. Everything runs on CPU with small inputs."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from deepfix.errors import RegistryError
from deepfix.models import (
    ArchitectureConfig,
    UNet,
    build_model,
    list_arch_configs,
    list_models,
    load_arch_config,
    register_model,
    render,
    summarize,
)
from deepfix.models import registry as registry_module
from deepfix.models.summary import layer_flops
from deepfix.models.unet_r2 import RecurrentConv

PAPER_PARAMS = 134_067


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish with it."""
    monkeypatch.setattr(registry_module, "_MODELS", dict(registry_module._MODELS))


# --- registry ------------------------------------------------------------------------------


def test_registry_lists_the_unets() -> None:
    assert {"unet_r2", "unet_plain"} <= set(list_models())


def test_unknown_architecture_raises_listing_known_names() -> None:
    with pytest.raises(RegistryError, match=r"unet_nope.*known:.*unet_r2"):
        build_model({"name": "unet_nope"})


def test_duplicate_registration_raises(scratch_registry: None) -> None:
    with pytest.raises(RegistryError, match="already registered"):
        register_model("unet_r2")(lambda: nn.Identity())


def test_malformed_name_is_refused() -> None:
    with pytest.raises(RegistryError):
        register_model("Bad-Name")


def test_registered_constructor_is_built_with_kwargs(scratch_registry: None) -> None:
    @register_model("test_linear")
    def test_linear(*, width: int = 2) -> nn.Module:
        return nn.Linear(width, width)

    model = build_model(ArchitectureConfig(name="test_linear", kwargs={"width": 5}))
    assert isinstance(model, nn.Linear) and model.in_features == 5


def test_unknown_kwarg_is_a_validation_error() -> None:
    with pytest.raises(pydantic.ValidationError):
        build_model({"name": "unet_r2", "kwargs": {"base_chanels": 8}})


def test_config_refuses_unknown_top_level_keys() -> None:
    with pytest.raises(pydantic.ValidationError):
        ArchitectureConfig.model_validate({"name": "unet_r2", "kwarg": {}})


def test_unknown_config_variant_raises_listing_known_ones() -> None:
    with pytest.raises(RegistryError, match=r"unet_r2_large"):
        load_arch_config("unet_huge")


def test_config_variant_cannot_escape_the_configs_folder() -> None:
    with pytest.raises(RegistryError):
        load_arch_config("../registry")


@pytest.mark.parametrize("variant", list_arch_configs())
def test_packaged_config_loads_and_builds(variant: str) -> None:
    config = load_arch_config(variant)
    assert config.name in list_models()
    model = build_model(config)
    x = torch.rand(1, 3, 16, 16)
    assert model.eval()(x).shape == x.shape


def test_default_constructor_matches_the_default_config() -> None:
    from_config = build_model(load_arch_config("unet_r2"))
    from_defaults = build_model({"name": "unet_r2"})
    shapes = {k: v.shape for k, v in from_config.state_dict().items()}
    assert shapes == {k: v.shape for k, v in from_defaults.state_dict().items()}


# --- networks ------------------------------------------------------------------------------


def test_default_r2unet_is_within_2_percent_of_the_paper_count() -> None:
    params = _trainable(build_model(load_arch_config("unet_r2")))
    assert params == 136_067  # pinned so a layout change is a deliberate decision
    assert abs(params - PAPER_PARAMS) / PAPER_PARAMS < 0.02


def test_large_variant_has_about_a_million_params() -> None:
    params = _trainable(build_model(load_arch_config("unet_r2_large")))
    assert 0.8e6 < params < 1.3e6


def test_recurrence_shares_weights() -> None:
    counts = {_trainable(build_model({"name": "unet_r2", "kwargs": {"t": t}})) for t in (0, 1, 3)}
    assert len(counts) == 1


def test_each_recurrent_step_keeps_its_own_batchnorm_statistics() -> None:
    unit = RecurrentConv(4, t=2).train()
    unit(torch.randn(8, 4, 6, 6) * 3 + 1)
    means = [norm.running_mean for norm in unit.norms]
    assert len(means) == 3
    # Step 0 normalises conv(x), steps 1 and 2 conv(x + state): different distributions.
    assert not torch.allclose(means[0], means[1]) and not torch.allclose(means[1], means[2])


def test_eval_mode_matches_train_mode_on_the_batch_its_statistics_came_from() -> None:
    # With momentum 1 the running statistics are those of the last batch, so eval mode must
    # reproduce train mode on that batch; one BatchNorm shared by the steps did not.
    torch.manual_seed(0)
    unit = RecurrentConv(4, t=2)
    for norm in unit.norms:
        norm.momentum = 1.0
    x = torch.randn(64, 4, 8, 8) * 2 + 0.5
    trained = unit.train()(x)
    evaluated = unit.eval()(x)
    # Train mode divides by the biased batch variance, the running one is unbiased (n / n-1).
    assert torch.allclose(trained, evaluated, atol=5e-3)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_step_computes_what_nn_batchnorm_with_that_affine_computes(
    momentum: float | None,
) -> None:
    torch.manual_seed(0)
    unit = RecurrentConv(4, t=0)
    unit.norms[0].momentum = momentum
    reference = nn.BatchNorm2d(4, momentum=momentum)
    with torch.no_grad():
        unit.weight.uniform_(0.5, 1.5)
        unit.bias.uniform_(-1, 1)
        reference.weight.copy_(unit.weight)
        reference.bias.copy_(unit.bias)
    for scale in (1.0, 2.0, 3.0):
        x = torch.randn(8, 4, 5, 5) * scale
        expected = unit.act(reference.train()(unit.conv(x)))
        assert torch.allclose(unit.train()(x), expected, atol=1e-6)
    stats = unit.norms[0]
    assert torch.allclose(stats.running_mean, reference.running_mean)
    assert torch.allclose(stats.running_var, reference.running_var)
    assert int(stats.num_batches_tracked) == int(reference.num_batches_tracked) == 3
    x = torch.randn(2, 4, 5, 5)
    expected = unit.act(reference.eval()(unit.conv(x)))
    assert torch.allclose(unit.eval()(x), expected, atol=1e-6)


class _SharedNormUnit(nn.Module):
    """The recurrent unit as it was before per-step statistics: one BatchNorm for all steps."""

    def __init__(self, channels: int, t: int) -> None:
        super().__init__()
        self.t = t
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.act(self.norm(self.conv(x)))
        for _ in range(self.t):
            state = self.act(self.norm(self.conv(x + state)))
        return state


def test_weights_saved_with_one_shared_batchnorm_still_load_and_compute_the_same() -> None:
    torch.manual_seed(0)
    legacy = _SharedNormUnit(4, t=2)
    with torch.no_grad():
        legacy.norm.running_mean.uniform_(-1, 1)
        legacy.norm.running_var.uniform_(0.5, 2)
        legacy.norm.weight.uniform_(0.5, 1.5)
        legacy.norm.bias.uniform_(-0.5, 0.5)
    unit = RecurrentConv(4, t=2)
    unit.load_state_dict(legacy.state_dict())  # strict: every key mapped, none left over
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(unit.eval()(x), legacy.eval()(x), atol=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_every_architecture_runs_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    model = build_model({"name": name})
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize("hw", [(37, 53), (1, 1), (5, 3), (30, 17), (32, 32)])
def test_output_shape_equals_input_shape_for_any_size(hw: tuple[int, int], upsample: str) -> None:
    model = build_model({"name": "unet_r2", "kwargs": {"upsample": upsample}}).eval()
    x = torch.rand(1, 3, *hw)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_zeroed_last_conv_makes_the_model_the_identity() -> None:
    model = build_model({"name": "unet_r2"})
    assert isinstance(model, UNet)
    nn.init.zeros_(model.head.weight)
    assert model.head.bias is not None
    nn.init.zeros_(model.head.bias)
    x = torch.rand(2, 3, 37, 53)
    assert torch.equal(model(x), x)


def test_enhance_clamps_to_unit_range_without_autograd() -> None:
    model = build_model({"name": "unet_r2"})
    assert isinstance(model, UNet)
    with torch.no_grad():
        model.head.bias.fill_(5.0)  # type: ignore[union-attr]
    out = model.eval().enhance(torch.rand(1, 3, 16, 16))
    assert not out.requires_grad
    assert out.min() >= 0.0 and out.max() <= 1.0 and torch.all(out == 1.0)


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=generator)
    y = torch.rand(3, 3, 32, 32, generator=generator)
    model = build_model(load_arch_config("unet_r2"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, f"loss {losses[0]:.4g} -> {losses[-1]:.4g}"


# --- summary -------------------------------------------------------------------------------


def test_summary_flops_of_one_conv_match_hand_count() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 8, kernel_size=3, padding=1))
    summary = summarize(conv, input_hw=(16, 20))
    assert summary.flops == 2 * 3 * 3 * 3 * 8 * 16 * 20
    assert summary.total_params == 3 * 8 * 9 + 8
    assert [row.output_shape for row in summary.layers] == [(8, 16, 20)]


def test_summary_flops_of_strided_grouped_conv_use_output_size() -> None:
    conv = nn.Conv2d(4, 8, kernel_size=3, stride=2, padding=1, groups=2)
    summary = summarize(conv, input_hw=(16, 20), in_channels=4)
    assert summary.flops == 2 * (4 // 2) * 9 * 8 * 8 * 10


def test_transposed_conv_flops_use_input_size() -> None:
    up = nn.ConvTranspose2d(8, 4, kernel_size=2, stride=2)
    x = torch.zeros(1, 8, 5, 7)
    assert layer_flops(up, (x,), up(x)) == 2 * 8 * 4 * 4 * 5 * 7


def test_summary_counts_each_call_of_a_shared_conv() -> None:
    summary = summarize(build_model({"name": "unet_r2", "kwargs": {"t": 2}}), input_hw=(32, 32))
    first = next(row for row in summary.layers if row.name == "encoder.0.body.0.conv")
    assert first.calls == 3
    assert first.flops == 3 * 2 * 16 * 9 * 16 * 32 * 32


def test_summary_by_name_totals_add_up_and_render() -> None:
    summary = summarize("unet_r2", input_hw=(64, 64))
    assert summary.total_params == summary.trainable_params == 136_067
    assert sum(row.params for row in summary.layers) == summary.total_params
    assert summary.flops == sum(row.flops for row in summary.layers) > 0
    table = render(summary)
    assert table.row_count == len(summary.layers)


def test_summary_of_unknown_name_raises() -> None:
    with pytest.raises(RegistryError, match="unet_r2"):
        summarize("nope")


def test_summary_leaves_training_mode_as_it_was() -> None:
    model = build_model({"name": "unet_r2"}).train()
    summarize(model, input_hw=(8, 8))
    assert model.training

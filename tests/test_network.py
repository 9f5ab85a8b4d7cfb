"""The TomoGAN generator: shapes, options, cost, and that training lowers the loss."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the network tests need the train extra (torch)")

from bluesky_tomogan.errors import InputShapeError  # noqa: E402
from bluesky_tomogan.model.network import (  # noqa: E402
    GeneratorConfig,
    TomoGANDiscriminator,
    TomoGANGenerator,
)


@pytest.mark.parametrize("hw", [(8, 8), (64, 64), (40, 96), (128, 24)])
def test_output_has_the_input_shape_for_any_multiple_of_8(hw):
    gen = TomoGANGenerator().eval()
    with torch.no_grad():
        out = gen(torch.rand(2, 3, *hw))
    assert out.shape == (2, 1, *hw)


@pytest.mark.parametrize("hw", [(30, 64), (64, 4), (0, 8)])
def test_shape_the_architecture_cannot_take_is_a_clear_error(hw):
    with pytest.raises(InputShapeError, match="multiples of 8"):
        TomoGANGenerator()(torch.rand(1, 3, *hw))


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(InputShapeError, match=r"\(N, 3, H, W\)"):
        TomoGANGenerator()(torch.rand(1, 1, 16, 16))


def test_paper_architecture_layout():
    gen = TomoGANGenerator()
    convs = [m for m in gen.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 32, 32, 64, 64, 128, 128, 128, 64, 64, 32, 32, 32, 32, 16, 1]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gen.modules())


def test_transposed_upsampling_learns_its_upsampling():
    gen = TomoGANGenerator(GeneratorConfig(upsample="transposed"))
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in gen.modules()) == 3
    assert gen(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_input_downscale_returns_full_resolution_at_lower_cost():
    full = TomoGANGenerator()
    low = TomoGANGenerator(GeneratorConfig(input_downscale=2))
    assert low(torch.rand(1, 3, 64, 48)).shape == (1, 1, 64, 48)
    assert low.config.size_multiple == 16
    with pytest.raises(InputShapeError, match="multiples of 16"):
        low(torch.rand(1, 3, 40, 40))
    # encoder/decoder run on a quarter of the pixels; the SR tail adds a little back
    assert low.macs_per_pixel() < 0.45 * full.macs_per_pixel()


def test_space_to_depth_runs_at_half_resolution_without_averaging_pixels_away():
    torch.manual_seed(0)
    s2d = TomoGANGenerator(GeneratorConfig(input_downscale=2, downscale="space-to-depth")).eval()
    area = TomoGANGenerator(GeneratorConfig(input_downscale=2, residual=False)).eval()
    x = torch.rand(1, 3, 64, 48)
    assert s2d(x).shape == (1, 1, 64, 48) and s2d.config.size_multiple == 16
    assert s2d.adds_residual and isinstance(s2d.head[2], torch.nn.ConvTranspose2d)
    assert s2d.stem[0].stride == (2, 2) and s2d.stem[0].kernel_size == (2, 2)
    # a pattern with zero mean in every 2x2 block: invisible after area averaging, seen by space-to-depth
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(32, 24).expand(1, 3, 64, 48) * 0.1
    with torch.no_grad():
        assert torch.allclose(area(x), area(x + checker), atol=1e-6)  # equal up to float rounding
        correction = s2d.correction_network()
        assert float((correction(x) - correction(x + checker)).abs().max()) > 1e-3
    # every level runs on a quarter of the pixels, and there is no full-resolution tail
    assert s2d.macs_per_pixel() < 0.3 * TomoGANGenerator().macs_per_pixel()


def test_width_multiplier_scales_cost_quadratically():
    full = TomoGANGenerator().macs_per_pixel()
    half = TomoGANGenerator(GeneratorConfig(width=0.5)).macs_per_pixel()
    assert 0.2 < half / full < 0.3


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="upsample"):
        GeneratorConfig(upsample="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_downscale"):
        GeneratorConfig(input_downscale=3)
    with pytest.raises(ValueError, match="downscale must be"):
        GeneratorConfig(input_downscale=2, downscale="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels"):
        GeneratorConfig(in_channels=2)
    with pytest.raises(ValueError, match="upsampled_padding must be"):
        GeneratorConfig(upsampled_padding="reflect")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs upsample='bilinear'"):
        GeneratorConfig(upsample="transposed", upsampled_padding="edge")


def _light_projection(padding: str) -> TomoGANGenerator:
    """The shipped light projection network's weights (trained, so its edges carry signal) with ``padding``."""
    from bluesky_tomogan.model.train import load_generator, resolve_weights

    trained = load_generator(resolve_weights("tomogan-projection-light"))
    gen = TomoGANGenerator(GeneratorConfig.from_dict(trained.config.to_dict() | {"upsampled_padding": padding}))
    gen.load_state_dict(trained.state_dict())
    return gen.eval()


def test_edge_padding_of_the_upsampled_maps_changes_only_the_frames_edge():
    zeros, edge = _light_projection("zeros"), _light_projection("edge")
    assert "upsampled_padding" not in zeros.config.to_dict()  # cards written before the option are unchanged
    assert GeneratorConfig.from_dict(edge.config.to_dict()) == edge.config
    x = torch.rand(1, edge.config.in_channels, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (zeros(x) - edge(x)).abs()[0, 0].numpy()
    rows, cols = np.arange(96), np.arange(80)
    from_edge = np.minimum.outer(np.minimum(rows, rows[::-1]), np.minimum(cols, cols[::-1]))
    # measured: nothing reaches beyond 16 pixels from the edge (the deepest decoder works at 1/4 scale)
    assert diff[from_edge >= 17].max() < 1e-5
    assert diff[from_edge == 0].max() > 1e-3


def test_residual_network_starts_near_identity_on_the_centre_frame():
    torch.manual_seed(0)
    gen = TomoGANGenerator().eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = gen(x)
    assert torch.corrcoef(torch.stack([out.flatten(), x[:, 1].flatten()]))[0, 1] > 0.9


def test_discriminator_gives_one_logit_and_features():
    d = TomoGANDiscriminator()
    x = torch.rand(4, 1, 32, 32)
    assert d(x).shape == (4, 1)
    assert len(d.features(x)) == 6

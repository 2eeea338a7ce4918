"""SigLIP 2 (transformers ``Siglip2VisionModel``, NaFlex) loaded into our ViT: per-block parity with transformers.

transformers takes the image as flattened patches (channels last) with its patch grid (``spatial_shapes``) and an
attention mask; an unpadded image of rows x cols patches is our ViT's input at (rows * patch, cols * patch).
"""

from __future__ import annotations

import pytest
import torch
from parity import TINY_ENCODER, assert_tower_matches, save_tiny_tower

import sinder
from sinder.models.backbone import describe

transformers = pytest.importorskip("transformers")
PATCH = 8


def _patchify(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, rows * cols, patch * patch * C) as ``convert_image_to_patches`` lays them out."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // PATCH) * (w // PATCH), PATCH * PATCH * c)


@pytest.fixture(scope="module")
def siglip2_folder(tmp_path_factory):
    config = transformers.Siglip2VisionConfig(
        **TINY_ENCODER,
        num_patches=16,
        patch_size=PATCH,
    )
    folder = tmp_path_factory.mktemp("siglip2")
    model = save_tiny_tower(transformers.Siglip2VisionModel, config, folder)
    return folder, model


@pytest.mark.parametrize("size", [(32, 32), (24, 56), (48, 40)])
def test_siglip2_per_block_parity_with_transformers(siglip2_folder, size):
    folder, reference = siglip2_folder
    ours = sinder.load_backbone(str(folder))
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    grid = torch.tensor([[size[0] // PATCH, size[1] // PATCH]] * 2)
    patches = _patchify(x)
    with torch.no_grad():
        out = reference(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
            spatial_shapes=grid,
            output_hidden_states=True,
        )
    assert len(out.hidden_states) == 4
    assert_tower_matches(
        ours, x, out, prefix=0
    )  # no class token: every token is a patch; pooled: the attention pool


def test_siglip2_description(siglip2_folder):
    ours = sinder.load_backbone(str(siglip2_folder[0]))
    d = describe(ours)
    assert (d.family, d.num_prefix_tokens, d.patch_size, d.pooling) == ("siglip", 0, PATCH, "attention")
    assert ours.config["img_size"] == 4 * PATCH and ours.config["interpolate_mode"] == "bilinear"


def test_a_non_square_position_grid_is_refused():
    from sinder.models.formats import CheckpointError, config_from_hf

    with pytest.raises(CheckpointError, match="num_patches 200 is not a square grid"):
        config_from_hf({"model_type": "siglip2_vision_model", "num_patches": 200}, "x")

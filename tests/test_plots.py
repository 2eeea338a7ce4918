import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA

from sinder.models.defective import defective_tiny_state_dict
from sinder.plots import figures as plots
from sinder.remedies.clamp import clamp_singular_values

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, width, height):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size == (width, height)


def test_pca_rgb_equals_sklearn_pca():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(7, 9, 20, generator=gen) @ torch.diag(torch.linspace(3, 0.1, 20))
    rgb = plots.pca_rgb(tokens)
    assert rgb.shape == (7, 9, 3) and rgb.min() == pytest.approx(0) and rgb.max() == pytest.approx(1)
    ref = PCA(n_components=3).fit_transform(tokens.reshape(-1, 20).double().numpy())
    ref = (ref - ref.min(axis=0)) / (ref.max(axis=0) - ref.min(axis=0))
    ours = rgb.reshape(-1, 3)
    for c in range(3):  # principal components are defined up to sign: min-max scaling maps -x to 1 - x
        assert np.allclose(ours[:, c], ref[:, c], atol=1e-6) or np.allclose(ours[:, c], 1 - ref[:, c], atol=1e-6)


def test_pca_and_norm_figure(tmp_path):
    tokens = torch.randn(6, 8, 12)
    path = plots.plot_pca_and_norms(tokens, tmp_path / "sub" / "fig1.png", image=torch.randn(3, 84, 112),
                                    title="t", figsize=(6, 2), dpi=50)
    assert path == tmp_path / "sub" / "fig1.png"
    assert_png(path, 300, 100)
    assert [p.name for p in path.parent.iterdir()] == ["fig1.png"]  # written atomically, nothing left over


def test_pca_panel_shows_each_tokens_pca_colour(tmp_path):
    # Two clusters of tokens: the PCA panel must show, as blocks of pixels, the colour that pca_rgb (checked
    # against sklearn above) gives each cluster; a figure of other tokens or a blank panel fails.
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(6, 8, 12, generator=gen) * 0.01
    tokens[:, :4] += torch.linspace(-3, 3, 12)  # left half one cluster, right half the other
    tokens[:, 4:] -= torch.linspace(-3, 3, 12)
    path = plots.plot_pca_and_norms(tokens, tmp_path / "pca.png", figsize=(8, 4), dpi=100)
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    expected = (plots.pca_rgb(tokens) * 255).round().astype(int)
    for colour in (expected[0, 0], expected[0, 7]):
        distance = np.abs(pixels - colour).max(axis=1)
        assert (distance <= 2).sum() > 100, colour  # a block of pixels of that colour, not a stray one
    assert np.abs(expected[0, 0] - expected[0, 7]).max() > 100  # the clusters look different


def test_angle_figure(tmp_path):
    layers = [0, 1, 2]
    emp = {"cumulative": [40.0, float("nan"), 5.0], "block": [60.0, 50.0, 30.0]}
    tokens = {k: [torch.rand(30) * 90 for _ in layers] for k in emp}
    path = plots.plot_direction_angles(layers, emp, tokens, tmp_path / "fig2.png", figsize=(5, 4), dpi=60)
    assert_png(path, 300, 240)
    # default: 8 x (0.5 + 2.5 per kind) inches, the 0.5 for the legend under the panels
    assert_png(plots.plot_direction_angles(layers, emp, None, tmp_path / "lines.png", dpi=50), 400, 275)


def test_norm_violins(tmp_path):
    path = plots.plot_norm_violins({"defective": torch.rand(5) * 100, "normal": torch.rand(200), "none": torch.zeros(0)},
                                   tmp_path / "v.png", title="norms", figsize=(4, 3), dpi=50)
    assert_png(path, 200, 150)
    with pytest.raises(ValueError, match="every group of norms is empty"):
        plots.plot_norm_violins({"a": torch.zeros(0)}, tmp_path / "empty.png")


def test_singular_value_differences_and_figure(tmp_path):
    old = defective_tiny_state_dict(0)
    new, _ = clamp_singular_values(old, 1.2)
    diff = plots.singular_value_differences(old, new, top=3)
    assert set(diff) == {"attn.qkv", "attn.proj", "mlp.w12", "mlp.w3"}
    for name, values in diff.items():
        assert values.shape == (8, 3)
        for block in (0, 5):
            key = f"blocks.{block}.{name}.weight"
            s_old = torch.linalg.svdvals(old[key].double())[:3]
            s_new = torch.linalg.svdvals(new[key].double())[:3]
            assert np.allclose(values[block], (s_new - s_old).numpy(), atol=1e-6)
        assert (values <= 1e-6).all()  # clamping only lowers singular values
    assert diff["mlp.w3"][1, 0] < -1  # the defect circuit's gain was cut
    path = plots.plot_singular_value_differences(diff, tmp_path / "fig7.png", figsize=(6, 8), dpi=40)
    assert_png(path, 240, 320)
    with pytest.raises(KeyError, match="not in the new one"):
        plots.singular_value_differences(old, {k: v for k, v in new.items() if "blocks.3.mlp.w3" not in k})


def test_norm_violins_per_layer(tmp_path):
    gen = torch.Generator().manual_seed(1)
    defective = [torch.zeros(0), torch.tensor([30.0]), torch.rand(6, generator=gen) * 50 + 40]  # empty, one, many
    normal = [torch.rand(100, generator=gen) * 4 + 2 for _ in range(3)]
    path = plots.plot_norm_violins_per_layer([0, 1, 2], defective, normal, tmp_path / "n.png", title="t", dpi=50)
    assert_png(path, 300, 200)  # default width max(6, 1.5 + 0.45 * layers) inches, height 4
    wide = plots.plot_norm_violins_per_layer(list(range(40)), [torch.zeros(0)] * 40, [torch.rand(9) + 1] * 40,
                                             tmp_path / "w.png", dpi=10)
    assert_png(wide, 195, 40)
    with pytest.raises(ValueError, match="3 layers but 2 defective"):
        plots.plot_norm_violins_per_layer([0, 1, 2], defective[:2], normal, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="every group of norms is empty"):
        plots.plot_norm_violins_per_layer([0], [torch.zeros(0)], [torch.zeros(0)], tmp_path / "empty.png")


def test_defect_masks_figure(tmp_path):
    images = [torch.zeros(3, 56, 56), torch.zeros(3, 56, 56)]
    masks = [[torch.zeros(4, 4, dtype=torch.bool)] * 2, [torch.eye(4, dtype=torch.bool)] * 2]
    path = plots.plot_defect_masks(images, masks, [3, 7], tmp_path / "m.png", image_names=["a.png", "b" * 40],
                                   cell=1.5, dpi=60)
    assert_png(path, 270, 204)  # (1 + 2 layers) x 1.5 in wide, 2 x 1.5 + 0.4 in high
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    assert red[: rgb.shape[0] // 2].sum() == 0 and red[rgb.shape[0] // 2 :].sum() > 50  # only the 2nd row's eye
    with pytest.raises(ValueError, match="masks must be 2 rows"):
        plots.plot_defect_masks(images, masks[:1], [3, 7], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no images"):
        plots.plot_defect_masks([], [], [3], tmp_path / "none.png")


def test_singular_value_differences_reject_other_architectures():
    old = defective_tiny_state_dict(0)
    wider = {k: (torch.zeros(v.shape[0], v.shape[1] + 1) if k == "blocks.2.attn.proj.weight" else v)
             for k, v in old.items()}
    with pytest.raises(ValueError, match=r"blocks\.2\.attn\.proj\.weight has shape \(96, 96\).*\(96, 97\)"):
        plots.singular_value_differences(old, wider)
    deeper = {**old, "blocks.8.attn.proj.weight": old["blocks.7.attn.proj.weight"]}
    with pytest.raises(KeyError, match=r"blocks\.8\.attn\.proj\.weight .* not in the old one"):
        plots.singular_value_differences(old, deeper)

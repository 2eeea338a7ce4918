import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA

from sinder import plots
from sinder.clamp import clamp_singular_values
from sinder.defective_model import defective_tiny_state_dict

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
    assert_png(plots.plot_pca_and_norms(tokens, tmp_path / "no_image.png", dpi=40), 360, 120)


def test_angle_figure(tmp_path):
    layers = [0, 1, 2]
    emp = {"cumulative": [40.0, float("nan"), 5.0], "block": [60.0, 50.0, 30.0]}
    tokens = {k: [torch.rand(30) * 90 for _ in layers] for k in emp}
    path = plots.plot_direction_angles(layers, emp, tokens, tmp_path / "fig2.png", figsize=(5, 4), dpi=60)
    assert_png(path, 300, 240)
    assert_png(plots.plot_direction_angles(layers, emp, None, tmp_path / "lines.png", dpi=50), 400, 250)


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

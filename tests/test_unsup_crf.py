"""DenseCRF wrapper: both backends agree, the CRF cleans up noisy predictions, odd sizes work."""

import numpy as np
import pytest
import torch

from benchmarks.unsupervised.crf import CRFParams, PermutohedralLattice, backend_name, crf_batch, dense_crf

HAS_PYDENSECRF = backend_name("auto") == "pydensecrf"
BACKENDS = ["torch-permutohedral"] + (["pydensecrf"] if HAS_PYDENSECRF else [])



def two_region_scene(height=24, width=31, seed=0):
    """Left half red, right half green (with noise); logits that favour the right class but are noisy."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    split = width // 2
    image[:, :split] = (190, 40, 40)
    image[:, split:] = (40, 170, 60)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((height, width), np.int64)
    truth[:, split:] = 1
    logits = torch.from_numpy(np.stack([(truth == 0), (truth == 1)]).astype(np.float32)) * 0.6
    logits = logits + torch.from_numpy(rng.normal(0, 0.8, logits.shape).astype(np.float32))
    return image, torch.from_numpy(truth), logits


def test_torch_fallback_matches_pydensecrf():
    if not HAS_PYDENSECRF:
        pytest.skip("pydensecrf not installed (the optional [crf] extra)")
    image, _, logits = two_region_scene()
    extra = torch.randn(3, 24, 31, generator=torch.Generator().manual_seed(1))
    logits = torch.cat([logits, extra])  # 5 labels
    a = dense_crf(image, logits, backend="pydensecrf")
    b = dense_crf(image, logits, backend="torch-permutohedral")
    assert a.shape == b.shape == (5, 24, 31)
    assert (a - b).abs().max() < 1e-3
    assert torch.equal(a.argmax(0), b.argmax(0))


def test_torch_fallback_matches_a_stored_pydensecrf_output():
    """Runs without the C++ library (the optional [crf] extra): its output on this input ships in fixtures/crf."""
    from pathlib import Path

    from safetensors.torch import load_file

    ref = load_file(str(Path(__file__).parent / "fixtures" / "crf" / "pydensecrf_5labels.safetensors"))
    out = dense_crf(ref["image"].numpy(), ref["logits"], backend="torch-permutohedral")
    assert out.shape == ref["probabilities"].shape == (5, 24, 31)
    assert (out - ref["probabilities"]).abs().max() < 1e-3
    assert torch.equal(out.argmax(0), ref["probabilities"].argmax(0))


def test_auto_falls_back_to_torch_without_the_cxx_library(monkeypatch):
    from benchmarks.unsupervised import crf

    monkeypatch.setattr(crf, "_pydensecrf", lambda: None)
    assert backend_name("auto") == "torch-permutohedral"
    with pytest.raises(ImportError, match=r"\[crf\]"):
        backend_name("pydensecrf")


@pytest.mark.parametrize("backend", BACKENDS)
def test_crf_cleans_noisy_prediction(backend):
    image, truth, logits = two_region_scene()
    before = logits.argmax(0)
    probs = dense_crf(image, logits, backend=backend)
    after = probs.argmax(0)
    assert not torch.equal(before, after)  # the CRF changes the prediction
    assert (after == truth).float().mean() > (before == truth).float().mean() + 0.1
    assert torch.allclose(probs.sum(0), torch.ones(24, 31), atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(1, 1), (1, 9), (7, 3), (13, 17)])
def test_odd_sizes(backend, size):
    height, width = size
    rng = np.random.default_rng(height * 100 + width)
    image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    logits = torch.from_numpy(rng.normal(size=(4, max(1, height // 2), max(1, width // 3))).astype(np.float32))
    probs = dense_crf(image, logits, backend=backend)  # logits are resized to the image
    assert probs.shape == (4, height, width)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(0), torch.ones(height, width), atol=1e-4)


def test_batch_and_channel_first_images():
    image, _, logits = two_region_scene()
    images = np.stack([image, image[:, ::-1]])
    out = crf_batch(images, torch.stack([logits, logits.flip(-1)]), backend="torch-permutohedral")
    assert out.shape == (2, 2, 24, 31)
    chw = dense_crf(torch.from_numpy(image).permute(2, 0, 1), logits, backend="torch-permutohedral")
    assert torch.allclose(chw, out[0], atol=1e-6)


def test_process_pool_gives_the_same_result():
    if not HAS_PYDENSECRF:
        pytest.skip("pydensecrf not installed (the optional [crf] extra)")
    image, _, logits = two_region_scene()
    images, batch = np.stack([image, image[::-1]]), torch.stack([logits, logits.flip(-2)])
    pooled = crf_batch(images, batch, backend="pydensecrf", workers=2)
    assert torch.allclose(pooled, crf_batch(images, batch, backend="pydensecrf", workers=0), atol=1e-6)


def test_zero_iterations_return_the_softmax():
    image, _, logits = two_region_scene()
    probs = dense_crf(image, logits, CRFParams(iterations=0), backend="torch-permutohedral")
    expected = torch.softmax(logits, 0).clamp(1e-5, 1)
    assert torch.allclose(probs, expected / expected.sum(0), atol=1e-5)


def test_lattice_approximates_a_gaussian_filter():
    # 1-D points on a line, unit sigma: the lattice blur is an approximation of sum_j exp(-(x_i-x_j)^2 / 2)
    x = torch.arange(40, dtype=torch.float32)[:, None] * 0.5
    out = PermutohedralLattice(x).filter(torch.ones(40, 1))[:, 0]
    exact = torch.exp(-((x - x.t()) ** 2) / 2).sum(1)
    interior = slice(8, 32)
    ratio = out[interior] / exact[interior]
    assert ratio.std() / ratio.mean() < 0.05  # proportional to the exact filter away from the ends


def test_bad_inputs_name_the_problem():
    image, _, logits = two_region_scene()
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), logits)
    with pytest.raises(ValueError, match="C x H x W"):
        dense_crf(image, logits[0])
    with pytest.raises(ValueError, match="unknown CRF backend"):
        dense_crf(image, logits, backend="cuda-magic")

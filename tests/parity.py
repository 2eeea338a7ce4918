"""The per-block parity check every family test makes: our ViT's patch tokens against a reference's."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

TOLERANCE = 1e-5  # float32, max abs error (issue 21)


def assert_blocks_match(
    mine: Sequence[Tensor], theirs: Sequence[Tensor], prefix: int, label: str = ""
) -> None:
    """``mine[i]``: block i's patch tokens from ``get_intermediate_layers(norm=False)``; ``theirs[i]``: the
    reference's block i output with its ``prefix`` leading tokens (class token, registers) still in."""
    assert len(mine) == len(theirs), f"{label} {len(mine)} blocks against {len(theirs)}"
    for i, (tokens, ref) in enumerate(zip(mine, theirs)):
        ref = ref[:, prefix:]
        assert tokens.shape == ref.shape, f"{label} block {i}: {tuple(tokens.shape)} vs {tuple(ref.shape)}"
        err = (tokens.double() - ref.double()).abs().max().item()
        assert err <= TOLERANCE, f"{label} block {i}: max abs error {err:.3g}"


def assert_tower_matches(ours, x: Tensor, out, prefix: int) -> None:
    """Our model on ``x`` against a transformers vision tower's output ``out`` (run with
    ``output_hidden_states=True``): every block's patch tokens, the final normed patch tokens and the pooled feature
    (``pooler_output``: the class token after the norm, or the attention pool's output)."""
    import torch

    with torch.no_grad():
        mine = ours.get_intermediate_layers(x, n=len(out.hidden_states) - 1, norm=False)
        features = ours.forward_features(x)
    assert_blocks_match(mine, out.hidden_states[1:], prefix)
    patches = out.last_hidden_state[:, prefix:]
    assert (features["x_norm_patchtokens"] - patches).abs().max().item() <= TOLERANCE
    assert (features["x_norm_clstoken"] - out.pooler_output).abs().max().item() <= TOLERANCE


def save_tiny_tower(model_class, config, folder):
    """A random transformers vision tower, with norms and biases moved off their init so that a key-mapping
    mistake shows, saved with ``save_pretrained``. Returns the model (eval mode)."""
    import torch

    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return model


# The encoder size of every tiny transformers tower in the family tests.
TINY_ENCODER = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 128}

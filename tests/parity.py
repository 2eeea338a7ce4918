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

"""``+clamp:gamma=G``: SINDER's Appendix B baseline, every block linear weight's singular values clamped to G."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.core.remedy import Remedy, key_value_args, register_remedy, remedy_role

SMOKE_GAMMA = 5.0  # the tiny defective model's circuit layers reach ~5.7: 5 cuts its high-norm tokens by 2/3


@register_remedy
class Clamp(Remedy):
    name = "clamp"
    title = "singular-value clamping (SINDER Appendix B)"
    args_help = "gamma=G"

    def parse_args(self, text: str | None) -> dict[str, Any]:
        from sinder.remedies.clamp import gamma_problem

        params = key_value_args(self.name, text, {"gamma": float}, positional="gamma")
        if "gamma" not in params:
            raise ValueError("remedy clamp needs the singular value bound: gamma=G")
        problem = gamma_problem(params["gamma"])
        if problem:
            raise ValueError(f"remedy clamp: gamma={params['gamma']}: {problem}")
        return params

    def smoke_args(self, base, cache_dir, seed=0, log=print) -> str:
        return f"gamma={SMOKE_GAMMA:g}"

    def load(self, base, params: dict[str, Any], device="cpu"):
        from benchmarks.core.backbones import load
        from sinder.models.weights import content_sha256
        from sinder.remedies.clamp import clamp_singular_values

        model = load(base, device="cpu")
        base_sha = model.weights_sha256
        start = time.perf_counter()
        state, _ = clamp_singular_values(model, params["gamma"])
        model.load_state_dict(state)
        seconds = time.perf_counter() - start
        model.weights_sha256 = content_sha256(model.state_dict())
        # The role a file written by `sinder clamp` has: the same tensors and gamma are the same work.
        model.weights_role = remedy_role("repair", "clamp", {"gamma": float(params["gamma"])}, base_sha)
        model.remedy_cost = {"setup_s": seconds, "extra_tokens": 0}
        return model.to(device).eval()

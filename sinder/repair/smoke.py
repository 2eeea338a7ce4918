"""A short SINDER repair on synthetic photographs, for the smoke suite."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from torch import Tensor, nn

from sinder.repair.config import SMOKE_CONFIG, RepairConfig
from sinder.repair.run import RepairRun
from sinder.utils.atomic import temp_prefix


def repair_for_smoke(model: nn.Module, config: RepairConfig | None = None, seed: int = 0,
                     directions: Sequence[Tensor] | None = None) -> nn.Module:
    """A short SINDER repair on synthetic photographs, for the smoke suite; returns the repaired model.

    ``directions``: the model's singular defect directions when the caller has them (see RepairRun)."""
    from sinder.models.backbone import normalization
    from sinder.utils.images import resize_center_crop, to_normalized_tensor
    from sinder.utils.synthetic_images import synthetic_photos

    config = config or RepairConfig(**SMOKE_CONFIG)
    photos = synthetic_photos(config.num_images, size=config.resolution + 16, seed=seed)
    stats = normalization(model)  # the backbone's own mean/std
    tensors = [to_normalized_tensor(resize_center_crop(p, config.resolution), **stats) for p in photos]
    with tempfile.TemporaryDirectory(prefix=temp_prefix("sinder-smoke-repair")) as work_dir:
        run = RepairRun(model, list(range(len(tensors))), config, work_dir, load=tensors.__getitem__,
                        directions=directions, device=next(model.parameters()).device, progress=False)
        result = run.run()
    model.load_state_dict(result.state_dict)
    return model

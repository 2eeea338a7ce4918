"""``+ttr:NEURONS.json[,init=...,value=...]``: test-time registers (``sinder.remedies.ttr``) driven by a neuron file
fitted on the base. By default the official computation (``init=zeros``, ``value=layer_max``); ``init=patch_mean``
and ``value=per_unit`` are the earlier variants. Every departure from the reference, these and the neuron file's
(``selection``, image count and size), is the loaded model's ``remedy_deviations``, which the run records carry
in ``deviations``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.core.remedy import Remedy, key_value_args, register_remedy, remedy_role
from sinder.utils.hashing import canonical_sha256

SMOKE_IMAGES = 80  # train images of the synthetic ImageNet twin the register neurons are fitted on
SMOKE_RESOLUTION = 112
# The smoke fit flags outliers by the census rule: the reference's norm threshold is set by hand per model (150 for
# ViT-L) and a tiny model has none; recorded as the deviation selection=robust_z.
SMOKE_SELECTION = "robust_z"


@register_remedy
class TestTimeRegisterRemedy(Remedy):
    __test__ = False
    name = "ttr"
    title = "test-time registers (Jiang et al. 2025)"
    args_help = "NEURONS.json[,init=zeros|patch_mean][,value=layer_max|per_unit] (from `sinder-bench ttr fit`)"

    def parse_args(self, text: str | None) -> dict[str, Any]:
        from sinder.remedies.ttr import INIT_CHOICES, VALUE_CHOICES, check_choice

        params = key_value_args(self.name, text, {"neurons": str, "init": str, "value": str}, positional="neurons")
        if not params.get("neurons"):
            raise ValueError("remedy ttr needs a neuron file: +ttr:NEURONS.json (write one with `sinder-bench ttr fit`)")
        for key, choices in (("init", INIT_CHOICES), ("value", VALUE_CHOICES)):
            if key in params:
                check_choice(f"remedy ttr: {key}", params[key], choices)
        return params

    def problem(self, base, params: dict[str, Any]) -> str | None:
        from sinder.models import weights as W
        from sinder.remedies.ttr import load_neurons

        try:
            neurons = load_neurons(params["neurons"])  # format and content; the weights hash is checked on loading
        except (OSError, ValueError) as err:
            return str(err)
        try:  # the architecture, without building the model (a named checkpoint is checked on loading)
            config = W.architecture_config(base.name)
        except (OSError, ValueError):
            return None
        fitted = {k: neurons.architecture.get(k) for k in ("depth", "embed_dim")}
        if None not in fitted.values() and fitted != {k: config.get(k) for k in fitted}:
            return (f"neuron file {params['neurons']} was fitted on an architecture with {fitted}, not "
                    f"{base.name}'s (depth {config.get('depth')}, embed_dim {config.get('embed_dim')}): "
                    "fit the neurons on this backbone with `sinder-bench ttr fit`")  # fmt: skip
        return None

    def load(self, base, params: dict[str, Any], device="cpu"):
        from benchmarks.core.backbones import load
        from sinder.models.weights import file_sha256
        from sinder.remedies.ttr import apply_test_time_registers, deviations, load_neurons

        model = load(base, device=device)
        neurons = load_neurons(params["neurons"], model)  # refuses a file fitted on other weights
        init, value = params.get("init", "zeros"), params.get("value", "layer_max")
        wrapped = apply_test_time_registers(model, neurons, init=init, value=value)
        base_sha = model.weights_sha256
        # init and value are part of the work's identity: a record of one variant is never reused for another.
        config = {"neurons_sha256": file_sha256(params["neurons"]), "n_neurons": len(neurons.neurons),
                  "init": init, "value": value}
        role = remedy_role("remedy", "ttr", config, base_sha)
        # The tensors are the base's: the hash of the model that runs also names the neurons, so feature caches
        # keyed by it never hand the base's features to the remedy.
        wrapped.weights_sha256 = canonical_sha256({"base": base_sha, "remedy": "ttr", "config": config})
        wrapped.weights_role = role
        wrapped.weights_source = f"{model.weights_source} + test-time registers {Path(params['neurons']).name}"
        wrapped.remedy_cost = {"setup_s": neurons.fit.get("seconds"), "extra_tokens": wrapped.num_extra_tokens}
        wrapped.remedy_deviations = deviations(neurons.settings, init=init, value=value)
        return wrapped.eval()

    def smoke_args(self, base, cache_dir: Path, seed: int = 0, log: Callable[[str], None] = print) -> str:
        return str(smoke_neurons(base, cache_dir, seed, log))


def smoke_neurons(spec, cache_dir: Path, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """The register neurons of ``spec`` fitted on the synthetic ImageNet twin's train images (cached by the
    base's content hash)."""
    from benchmarks.core.backbones import load
    from sinder.remedies.ttr import fit_register_neurons, save_neurons
    from sinder.utils.images import list_images, load_image, stride_subset

    base = load(spec)
    path = Path(cache_dir) / "backbones" / f"{Path(spec.name).stem}_ttr-{SMOKE_SELECTION}-{base.weights_sha256[:16]}.json"
    if path.is_file():
        return path
    images_dir = Path(cache_dir) / "synth" / f"imagenet-seed{seed}"
    if not images_dir.is_dir():
        from benchmarks.data.synth import write_synthetic

        write_synthetic("imagenet", images_dir, seed=seed)  # built beside and renamed into place
    files = stride_subset(list_images(images_dir / "train"), SMOKE_IMAGES)
    log(f"fitting test-time register neurons of {spec.label} on {len(files)} synthetic images (cached at {path})")
    import torch

    from sinder.models.backbone import normalization

    # the base's own mean/std, as the tasks feed it (its family's when the checkpoint says none)
    images = torch.stack([load_image(f, SMOKE_RESOLUTION, base.patch_size, **normalization(base)) for f in files])
    start = time.perf_counter()
    neurons = fit_register_neurons(base, images.split(16), selection=SMOKE_SELECTION)
    neurons.fit["seconds"] = round(time.perf_counter() - start, 3)
    neurons.settings.update({"resolution": SMOKE_RESOLUTION, "max_images": SMOKE_IMAGES})
    neurons.fit["images"] = f"synthetic ImageNet twin (seed {seed}), {len(files)} train images at {SMOKE_RESOLUTION} px"
    save_neurons(neurons, path)
    return path

"""Section 3 of SINDER: linearize every block and predict the singular defect directions.

For one token the attention of a block is linear (the softmax over a single key is 1), and the MLP is
replaced by its least-squares linear fit. With the LayerNorm's division by the standard deviation ignored:

    attention   A_i = diag(ls1.gamma) W_proj W_v diag(norm1.weight) P,   P = I - 11^T / D
    MLP         C_i = diag(ls2.gamma) W_out L_i diag(norm2.weight) P
    block       E_i = (I + C_i)(I + A_i)          (the residual block x -> x + A x, then x -> x + C x)
    prefix      G_i = E_i E_{i-1} ... E_0
    nu_i        = the leading left singular vector of G_i (the singular defect direction of block i)

The official code builds ``A + I`` and ``C + I`` and composes them as ``(C + I) @ (A + I)``, which is the
E_i above and the paper's Eq. 3 without its offset; biases are left out of the directions, as there.
``L_i`` is the least-squares fit, without intercept, of the MLP's hidden activation (SwiGLU: silu(x1) * x2 from
``w12``; otherwise act(fc1 x + b) with the family's own activation: exact GELU for DINOv2, QuickGELU
x sigmoid(1.702 x) for OpenAI CLIP, tanh-GELU for SigLIP, as ``sinder.models.adapter.mlp_activation`` says) on
inputs x drawn from N(0, I). A family without LayerScale has ls1 = ls2 = 1. N(0, I) rather than the LayerNorm's real output
distribution because that is what the official code samples: the released directions (and the checkpoint
repaired with them) are defined by it.

Two estimators of ``L_i``:
- ``"sampled"`` (default, the official estimator): ``n_samples`` Gaussian inputs from a seeded generator,
  normal equations accumulated chunk by chunk in float64 (X^T X is well conditioned for n >> D).
- ``"expectation"``: its n -> infinity limit in closed form. For x ~ N(0, I) the least-squares map is
  E[h(x) x^T] = E[grad h(x)] (Stein's lemma), which reduces to one-dimensional Gaussian integrals per hidden
  unit: seconds instead of minutes for ViT-g, and no sampling noise. Exact GELU has a closed form; the other
  activations are integrated on the same fine grid as SwiGLU.

Everything is a pure function of the weights; results can be cached on disk, keyed by a hash of the tensors
used, the estimator, ``n_samples`` and ``seed``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sinder.models.adapter import BLOCK_PARTS, MLP_LAYERS, mlp_activation
from sinder.utils.atomic import atomic_path
from sinder.utils.hashing import new_digest, text_sha256

KINDS = ("attention", "mlp", "block", "cumulative")  # leading left singular vectors of I+A, I+C, E, G
METHODS = ("sampled", "expectation")
CACHE_VERSION = 1
DEFAULT_N_SAMPLES = 100_000  # least-squares inputs per MLP (official); every n_samples default refers to this


# --------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class BlockWeights:
    """The tensors of one transformer block that its linearization needs (float32, on the CPU)."""

    norm1_weight: Tensor
    norm1_bias: Tensor
    v_weight: Tensor  # value rows of qkv, (D, D)
    v_bias: Tensor | None
    proj_weight: Tensor
    proj_bias: Tensor | None
    ls1: Tensor
    norm2_weight: Tensor
    norm2_bias: Tensor
    ls2: Tensor
    # The MLP's activation: "swiglu" (w12/w3), or the fc1/fc2 MLP's activation by its transformers name
    # ("gelu" exact, "quick_gelu", "gelu_pytorch_tanh": sinder.models.vit.ACTIVATIONS)
    mlp_kind: str
    mlp_in_weight: Tensor  # w12 (2H, D) or fc1 (H, D)
    mlp_in_bias: Tensor | None
    mlp_out_weight: Tensor  # w3 or fc2 (D, H)
    mlp_out_bias: Tensor | None

    @property
    def dim(self) -> int:
        return self.norm1_weight.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, Tensor)}

    @property
    def device(self) -> torch.device:
        return self.norm1_weight.device

    def to(self, device) -> BlockWeights:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return BlockWeights(**moved)


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to(torch.float32)  # stays on its device


def _from_tensors(get, dim_hint: str, config: Mapping | None = None) -> BlockWeights:
    """Assemble BlockWeights from a getter ``get(name) -> Tensor | None`` over block-relative names; ``config``
    (the model's architecture dict) gives the MLP's activation (None: the DINOv2 rule, exact GELU)."""
    part = BLOCK_PARTS  # the names come from the model adapter, the one place that knows the block anatomy
    qkv_w = get(f"{part['qkv']}.weight")
    if qkv_w is None:
        raise KeyError(f"{dim_hint}: no {part['qkv']}.weight; is this a ViT block?")
    dim = qkv_w.shape[1]
    qkv_b = get(f"{part['qkv']}.bias")
    ones = torch.ones(dim, device=qkv_w.device)
    mlp = next((kind for kind, (first, _) in MLP_LAYERS.items() if get(f"{first}.weight") is not None), None)
    if mlp is None:
        raise KeyError(f"{dim_hint}: the MLP has neither w12/w3 (SwiGLU) nor fc1/fc2 weights")
    kind = mlp_activation(config, mlp == "swiglu")
    w_in, w_out = MLP_LAYERS[mlp]
    ls1, ls2 = get(part["ls1"]), get(part["ls2"])  # absent when the model has no layer scale
    return BlockWeights(
        norm1_weight=_f32(get(f"{part['norm1']}.weight")),
        norm1_bias=_f32(get(f"{part['norm1']}.bias")),
        v_weight=_f32(qkv_w.chunk(3, dim=0)[2]),
        v_bias=None if qkv_b is None else _f32(qkv_b.chunk(3, dim=0)[2]),
        proj_weight=_f32(get(f"{part['proj']}.weight")),
        proj_bias=_f32(get(f"{part['proj']}.bias")),
        ls1=ones if ls1 is None else _f32(ls1),
        norm2_weight=_f32(get(f"{part['norm2']}.weight")),
        norm2_bias=_f32(get(f"{part['norm2']}.bias")),
        ls2=ones if ls2 is None else _f32(ls2),
        mlp_kind=kind,
        mlp_in_weight=_f32(get(f"{w_in}.weight")),
        mlp_in_bias=_f32(get(f"{w_in}.bias")),
        mlp_out_weight=_f32(get(f"{w_out}.weight")),
        mlp_out_bias=_f32(get(f"{w_out}.bias")),
    )


def block_weights(model) -> list[BlockWeights]:
    """The linearization inputs of every block of a model (anything with ``.blocks``; its ``config``, when it has
    one, gives the MLP's activation)."""
    config = getattr(model, "config", None)
    out = []
    for i, block in enumerate(model.blocks):
        params = dict(block.named_parameters())
        out.append(_from_tensors(params.get, f"block {i}", config if isinstance(config, Mapping) else None))
    return out


def state_dict_block_weights(state_dict: Mapping[str, Tensor], config: Mapping | None = None) -> list[BlockWeights]:
    """The same from a state dict (``blocks.<i>.`` keys; wrapper prefixes and chunked blocks are accepted).

    ``config``: the architecture dict the weights belong to (a written checkpoint keeps it in its metadata,
    ``sinder.models.formats.CONFIG_METADATA``); without one, the DINOv2 rule (exact GELU or SwiGLU)."""
    from sinder.models.weights import normalize_keys

    state = normalize_keys(state_dict)
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    if not indices:
        raise KeyError("state dict has no blocks.<i>.* keys: not a DINOv2 ViT state dict")
    return [
        _from_tensors(lambda name, i=i: state.get(f"blocks.{i}.{name}"), f"state dict block {i}", config)
        for i in indices
    ]


def weights_fingerprint(blocks: Sequence[BlockWeights]) -> str:
    """sha256 over every tensor the linearization reads, in block order."""
    digest = new_digest()
    for i, bw in enumerate(blocks):
        digest.update(f"{i}|{bw.mlp_kind}|".encode())
        for name, t in bw.tensors().items():
            t = t.cpu().contiguous()
            digest.update(f"{name}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- pieces
def _center_columns(m: Tensor) -> Tensor:
    # M (I - 11^T/D) subtracts each row's mean: no D x D product needed.
    return m - m.mean(dim=1, keepdim=True)


def attention_linear(bw: BlockWeights, with_bias: bool = False):
    """A = diag(ls1) W_proj W_v diag(norm1.weight) P (float64); with ``with_bias`` also the paper's b (Eq. 1)."""
    wp, wv = bw.proj_weight.double(), bw.v_weight.double()
    a = _center_columns(bw.ls1.double()[:, None] * (wp @ wv) * bw.norm1_weight.double()[None, :])
    if not with_bias:
        return a
    v_bias = wv @ bw.norm1_bias.double() + (0 if bw.v_bias is None else bw.v_bias.double())
    out = wp @ v_bias + (0 if bw.proj_bias is None else bw.proj_bias.double())
    return a, bw.ls1.double() * out


def activation(kind: str):
    """The elementwise activation of an fc1/fc2 MLP (``BlockWeights.mlp_kind``), the ViT's own module."""
    from sinder.models.vit import ACTIVATIONS

    if kind not in ACTIVATIONS:
        raise ValueError(f"MLP activation {kind!r} cannot be linearized; known: swiglu, {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[kind]()


def mlp_hidden(bw: BlockWeights, x: Tensor) -> Tensor:
    """The MLP's hidden activation on inputs ``x`` (n, D): silu(x1) * x2 (SwiGLU) or act(fc1 x + b)."""
    pre = F.linear(x, bw.mlp_in_weight.to(x.dtype), None if bw.mlp_in_bias is None else bw.mlp_in_bias.to(x.dtype))
    if bw.mlp_kind == "swiglu":
        x1, x2 = pre.chunk(2, dim=-1)
        return F.silu(x1) * x2
    if bw.mlp_kind == "gelu":
        return F.gelu(pre)
    return activation(bw.mlp_kind)(pre)


def block_seed(seed: int, index: int) -> int:
    """An independent generator seed per (seed, block): blocks can be computed in any order."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def mlp_least_squares(bw: BlockWeights, n_samples: int, seed: int, chunk_size: int = 4096) -> Tensor:
    """L (H, D), float64: the least-squares fit (no intercept) of the hidden activation on N(0, I) inputs."""
    if n_samples < bw.dim:
        raise ValueError(f"n_samples={n_samples} is below the width {bw.dim}: the least squares is underdetermined")
    gen = torch.Generator().manual_seed(seed)
    xtx = torch.zeros(bw.dim, bw.dim, dtype=torch.float64, device=bw.device)
    xty = None
    for start in range(0, n_samples, chunk_size):
        # Drawn on the CPU whatever the device, so that a seed gives the same samples everywhere.
        x = torch.randn(min(chunk_size, n_samples - start), bw.dim, generator=gen).to(bw.device)
        y = mlp_hidden(bw, x)
        # float32 products within a chunk, float64 accumulation across chunks.
        xtx += (x.T @ x).double()
        part = (x.T @ y).double()
        xty = part if xty is None else xty + part
    chol = torch.linalg.cholesky(xtx)
    return torch.cholesky_solve(xty, chol).T.contiguous()


def _gaussian_grid(n: int = 4001, width: float = 8.0, device=None) -> tuple[Tensor, Tensor]:
    # A fine uniform grid resolves sharp gates (large pre-activation scales) where Gauss-Hermite would not.
    z = torch.linspace(-width, width, n, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * z**2)
    return z, w / w.sum()


def mlp_expected_linear(bw: BlockWeights, grid_points: int = 4001, chunk_size: int = 256) -> Tensor:
    """The population limit of ``mlp_least_squares``: L = E[grad h(x)] for x ~ N(0, I) (Stein's lemma).

    GELU unit gelu(a.x + p): L_j = E[gelu'(u)] a with u ~ N(p, |a|^2), in closed form; the same for any other
    elementwise activation (QuickGELU, tanh-GELU), E[act'(u)] on a fine grid (the derivative by autograd).
    SwiGLU unit silu(a.x + p) (c.x + q): L_j = (q E[silu'(u)] + (a.c / |a|) E[silu'(u) z]) a + E[silu(u)] c,
    with u = p + |a| z, z ~ N(0, 1): one-dimensional integrals on a fine grid.
    """
    w_in = bw.mlp_in_weight.double()
    if bw.mlp_in_bias is None:
        b_in = torch.zeros(w_in.shape[0], dtype=torch.float64, device=w_in.device)
    else:
        b_in = bw.mlp_in_bias.double()
    if bw.mlp_kind == "gelu":
        s2 = (w_in**2).sum(dim=1)
        var = 1.0 + s2
        # E[Phi(u)] = Phi(p / sqrt(1 + s^2)); E[u phi(u)] = p / (1 + s^2) * N(p; 0, 1 + s^2).
        e_phi = 0.5 * (1 + torch.erf(b_in / torch.sqrt(2 * var)))
        e_uphi = b_in / var * torch.exp(-0.5 * b_in**2 / var) / torch.sqrt(2 * math.pi * var)
        return (e_phi + e_uphi)[:, None] * w_in
    if bw.mlp_kind != "swiglu":
        return _expected_slope(activation(bw.mlp_kind), b_in, w_in.norm(dim=1), grid_points, chunk_size)[:, None] * w_in
    a, c = w_in.chunk(2, dim=0)
    p, q = b_in.chunk(2, dim=0)
    s = a.norm(dim=1)
    z, w = _gaussian_grid(grid_points, device=w_in.device)
    e_d, e_dz, e_f = [], [], []
    for start in range(0, a.shape[0], chunk_size):
        u = p[start : start + chunk_size, None] + s[start : start + chunk_size, None] * z[None, :]
        sig = torch.sigmoid(u)
        deriv = sig * (1 + u * (1 - sig))
        e_d.append(deriv @ w)
        e_dz.append(deriv @ (w * z))
        e_f.append((u * sig) @ w)
    e_d, e_dz, e_f = torch.cat(e_d), torch.cat(e_dz), torch.cat(e_f)
    ac_over_s = torch.where(s > 0, (a * c).sum(dim=1) / s.clamp_min(1e-300), torch.zeros_like(s))
    return (q * e_d + ac_over_s * e_dz)[:, None] * a + e_f[:, None] * c


def _expected_slope(act, p: Tensor, s: Tensor, grid_points: int, chunk_size: int) -> Tensor:
    """E[act'(p + s z)], z ~ N(0, 1), per unit (float64), on the fine grid of ``_gaussian_grid``."""
    z, w = _gaussian_grid(grid_points, device=p.device)
    out = []
    for start in range(0, p.shape[0], chunk_size):
        u = (p[start : start + chunk_size, None] + s[start : start + chunk_size, None] * z[None, :]).detach()
        with torch.enable_grad():
            u.requires_grad_(True)
            (deriv,) = torch.autograd.grad(act(u).sum(), u)
        out.append(deriv @ w)
    return torch.cat(out)


def mlp_linear(bw: BlockWeights, lin: Tensor, with_bias: bool = False):
    """C = diag(ls2) W_out L diag(norm2.weight) P (float64); with ``with_bias`` also the paper's d (Eq. 2)."""
    w_out = bw.mlp_out_weight.double()
    c = _center_columns(bw.ls2.double()[:, None] * (w_out @ lin) * bw.norm2_weight.double()[None, :])
    if not with_bias:
        return c
    out = w_out @ (lin @ bw.norm2_bias.double()) + (0 if bw.mlp_out_bias is None else bw.mlp_out_bias.double())
    return c, bw.ls2.double() * out


def mlp_fit(bw: BlockWeights, method: str, n_samples: int, seed: int) -> Tensor:
    if method == "sampled":
        return mlp_least_squares(bw, n_samples, seed)
    if method == "expectation":
        return mlp_expected_linear(bw)
    raise ValueError(f"unknown linearization method {method!r}; use one of {METHODS}")


def block_affine(bw: BlockWeights, lin: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's Eq. 3 for one block: Layer(x) ~ E x + f with E = (I + C)(I + A), f = (I + C) b + d."""
    a, b = attention_linear(bw, with_bias=True)
    c, d = mlp_linear(bw, lin, with_bias=True)
    eye = torch.eye(bw.dim, dtype=torch.float64, device=bw.device)
    return (eye + c) @ (eye + a), b + c @ b + d


def leading_left_singular_vector(m: Tensor) -> tuple[Tensor, float]:
    """(u, sigma): the leading left singular vector of ``m`` (sign fixed: largest entry positive) and sigma."""
    m = m.double()
    evals, evecs = torch.linalg.eigh(m @ m.T)  # only the top pair is needed; eigh of the Gram is the cheap route
    u = evecs[:, -1]
    if u[u.abs().argmax()] < 0:
        u = -u
    return u, float(evals[-1].clamp_min(0).sqrt())


# --------------------------------------------------------------------------------------------- model level
@dataclass
class DefectDirections:
    """Leading left singular vectors per block (rows, float32, unit norm) of I+A_i, I+C_i, E_i and G_i.

    ``cumulative[i]`` is nu_i. ``sigma[kind][i]`` is the matching leading singular value; for ``cumulative``
    it is log(sigma) since G_i over many blocks outgrows float range.
    """

    method: str
    n_samples: int
    seed: int
    fingerprint: str
    directions: dict[str, Tensor] = field(default_factory=dict)
    sigma: dict[str, Tensor] = field(default_factory=dict)

    @property
    def nu(self) -> list[Tensor]:
        return list(self.directions["cumulative"].unbind(0))

    def __getitem__(self, kind: str) -> list[Tensor]:
        if kind not in self.directions:
            raise KeyError(f"directions of kind {kind!r} were not computed; computed: {sorted(self.directions)}")
        return list(self.directions[kind].unbind(0))


def compute_directions(
    blocks: Sequence[BlockWeights],
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: int = 0,
    kinds: Iterable[str] = KINDS,
    method: str = "sampled",
    fingerprint: str | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = False,
) -> DefectDirections:
    """Directions of the requested kinds for every block, streaming: no per-block matrices are kept.

    ``progress``: a bar over the blocks (None: only on a terminal).

    Computed on ``device`` (default: where the weights are); the results come back on the CPU.
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown direction kinds {bad}; use any of {KINDS}")
    if method not in METHODS:
        raise ValueError(f"unknown linearization method {method!r}; use one of {METHODS}")
    dim = blocks[0].dim
    device = torch.device(device) if device is not None else blocks[0].device
    eye = torch.eye(dim, dtype=torch.float64, device=device)
    vecs = {k: [] for k in kinds}
    sig = {k: [] for k in kinds}
    g, log_scale = eye.clone(), 0.0
    from sinder.utils.progress import progress as progress_bar

    bar = progress_bar(blocks, enabled=progress, desc="defect directions", unit="block")
    for i, bw in enumerate(bar):
        bw = bw.to(device)
        a = attention_linear(bw)
        c = mlp_linear(bw, mlp_fit(bw, method, n_samples, block_seed(seed, i)))
        a += eye
        c += eye
        e = c @ a
        g = e @ g
        norm = float(g.norm())  # rescale: the product grows geometrically, its direction does not
        g /= norm
        log_scale += math.log(norm)
        for kind, mat in (("attention", a), ("mlp", c), ("block", e), ("cumulative", g)):
            if kind in vecs:
                u, s = leading_left_singular_vector(mat)
                vecs[kind].append(u.float().cpu())
                sig[kind].append(math.log(s) + log_scale if kind == "cumulative" else s)
    return DefectDirections(
        method=method,
        n_samples=n_samples,
        seed=seed,
        fingerprint=fingerprint or weights_fingerprint(blocks),
        directions={k: torch.stack(v) for k, v in vecs.items()},
        sigma={k: torch.tensor(v, dtype=torch.float64) for k, v in sig.items()},
    )


def _cache_path(cache_dir: Path, fingerprint: str, method: str, n_samples: int, seed: int) -> Path:
    key = text_sha256(f"v{CACHE_VERSION}|{fingerprint}|{method}|{n_samples}|{seed}")
    return cache_dir / f"directions-{key[:32]}.safetensors"


def _read_cache(path: Path) -> DefectDirections | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["sinder"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception:  # unreadable or foreign file: recompute and overwrite
        return None
    return DefectDirections(
        method=meta["method"],
        n_samples=meta["n_samples"],
        seed=meta["seed"],
        fingerprint=meta["fingerprint"],
        directions={k.removeprefix("u/"): v for k, v in tensors.items() if k.startswith("u/")},
        sigma={k.removeprefix("s/"): v for k, v in tensors.items() if k.startswith("s/")},
    )


def _write_cache(path: Path, result: DefectDirections) -> None:
    from safetensors.torch import save_file

    tensors = {f"u/{k}": v.contiguous() for k, v in result.directions.items()}
    tensors.update({f"s/{k}": v.contiguous() for k, v in result.sigma.items()})
    meta = {k: getattr(result, k) for k in ("method", "n_samples", "seed", "fingerprint")}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"sinder": json.dumps(meta)})


def linearized_directions(
    model_or_state_dict,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: int = 0,
    kinds: Iterable[str] = KINDS,
    method: str = "sampled",
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = False,
    config: Mapping | None = None,
) -> DefectDirections:
    """Directions of every requested kind (``KINDS``) for a model or a state dict; cached when ``cache_dir``.

    The work runs where the weights are unless ``device`` says otherwise (a GPU makes ViT-g take seconds).
    ``config``: a state dict's architecture dict (its MLP activation); a model carries its own.
    """
    if isinstance(model_or_state_dict, Mapping):
        blocks = state_dict_block_weights(model_or_state_dict, config)
    else:
        blocks = block_weights(model_or_state_dict)
    kinds = tuple(dict.fromkeys(kinds))
    fingerprint = weights_fingerprint(blocks)
    path = None
    if cache_dir is not None:
        path = _cache_path(Path(cache_dir), fingerprint, method, n_samples, seed)
        cached = _read_cache(path) if path.is_file() else None
        if cached is not None and cached.fingerprint == fingerprint:
            if set(kinds) <= set(cached.directions):
                return cached
            kinds = tuple(dict.fromkeys((*cached.directions, *kinds)))  # rewrite the cache with the union
    result = compute_directions(blocks, n_samples, seed, kinds, method, fingerprint, device, progress)
    if path is not None:
        _write_cache(path, result)
    return result


def singular_defect_directions(
    model_or_state_dict,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: int = 0,
    method: str = "sampled",
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    config: Mapping | None = None,
) -> list[Tensor]:
    """nu_i for every block i: unit float32 vectors (on the CPU), the leading left singular vectors of G_i."""
    result = linearized_directions(model_or_state_dict, n_samples, seed, ("cumulative",), method, cache_dir, device,
                                   config=config)
    return result.nu

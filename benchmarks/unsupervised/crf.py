"""DenseCRF post-processing of STEGO and CAUSE: one wrapper, two backends.

Both references refine each image with Krähenbühl's fully connected CRF: 10 mean-field iterations, a Gaussian
kernel (sxy 1, Potts compat 3) and a bilateral kernel (sxy 67, srgb 3, compat 4), unaries ``-log(softmax)``.

Backends:
- ``pydensecrf``: the C++ implementation through ``pydensecrf2`` (the optional ``[crf]`` extra; checked with
  pydensecrf2==1.1, which imports as ``pydensecrf.densecrf``). Used whenever it imports.
- ``torch-permutohedral``: a fallback written here in vectorized torch: the same mean-field updates with the
  same permutohedral-lattice filtering (Adams, Baek & Davis 2010) and symmetric kernel normalization, so it agrees
  with the C++ library up to float rounding (tests/fixtures/crf holds a C++ output it is checked against). Slower
  on CPU, but runs on any machine (and on GPU). The default install's path.

``backend_name()`` says which one ``"auto"`` resolves to; tasks record it in their run record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("auto", "pydensecrf", "torch-permutohedral")
UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's clip: -log(p) of at most ~11.5


@dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0

    def as_dict(self) -> dict:
        return asdict(self)


def _pydensecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        return None
    return dcrf


def backend_name(backend: str = "auto") -> str:
    """The backend ``backend`` resolves to here (``auto``: pydensecrf if it imports, else the torch fallback)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown CRF backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "pydensecrf" and _pydensecrf() is None:
        raise ImportError(
            "CRF backend 'pydensecrf' requested but pydensecrf does not import: `pip install -e '.[crf]'` "
            "(pydensecrf2, a source build that needs a C++ compiler), or use backend='torch-permutohedral'"
        )
    if backend == "auto":
        return "pydensecrf" if _pydensecrf() is not None else "torch-permutohedral"
    return backend


def _as_hwc_uint8(image) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[2] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"CRF image must be H x W x 3 (or 3 x H x W) RGB, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"CRF image must be uint8 (0..255, not normalized), got {array.dtype}")
    return array


def _probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    logits = torch.as_tensor(logits).float()
    if logits.ndim != 3:
        raise ValueError(f"CRF logits must be C x H x W, got shape {tuple(logits.shape)}")
    if tuple(logits.shape[1:]) != size:
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    return torch.softmax(logits, dim=0)


def dense_crf(image, logits, params: CRFParams = CRFParams(), backend: str = "auto") -> torch.Tensor:
    """Refined class probabilities (C x H x W, float32, CPU) of one image.

    ``image``: uint8 RGB, H x W x 3 (or 3 x H x W); ``logits``: C x h x w scores (log-probabilities or raw
    logits; softmax is taken), bilinearly resized to H x W when they differ. Any H, W >= 1 work.
    """
    rgb = _as_hwc_uint8(image)
    height, width = rgb.shape[:2]
    probs = _probabilities(logits, (height, width)).cpu()
    # The references hand the CRF a BGR array (PIL RGB reversed); the bilateral kernel sees the channels in
    # that order, so we do the same (it matters only at float-rounding level).
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    unary = -torch.log(probs.clamp(UNARY_CLIP, 1.0))
    name = backend_name(backend)
    if name == "pydensecrf":
        return _crf_pydensecrf(bgr, unary, params)
    return _crf_torch(torch.from_numpy(bgr), unary, params)


def _crf_pydensecrf(bgr: np.ndarray, unary: torch.Tensor, params: CRFParams) -> torch.Tensor:
    return torch.from_numpy(_pydensecrf_job((bgr, unary.numpy().astype(np.float32), params)))


# ------------------------------------------------------------------------------------------- torch fallback
class PermutohedralLattice:
    """Gaussian filtering in a d-dimensional feature space on the permutohedral lattice (Adams et al. 2010).

    ``features`` (N x d) are already divided by the kernel's standard deviations; ``filter(values)`` returns
    approximately ``sum_j exp(-|f_i - f_j|^2 / 2) values_j`` for every i (self included).
    """

    def __init__(self, features: torch.Tensor):
        f = features.to(torch.float64)
        n, d = f.shape
        self.d = d
        device = f.device
        # Elevate onto the plane sum(x) = 0 in R^{d+1}, scaled so that the lattice blur is the Gaussian.
        inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
        idx = torch.arange(d, device=device, dtype=torch.float64)
        scaled = f * (inv_std / torch.sqrt((idx + 1) * (idx + 2)))  # cf_k
        tail = torch.flip(torch.cumsum(torch.flip(scaled, [1]), 1), [1])  # tail[:, k] = sum_{m>=k} cf_m
        elevated = torch.zeros(n, d + 1, dtype=torch.float64, device=device)
        elevated[:, 0] = tail[:, 0]
        j = torch.arange(1, d + 1, device=device, dtype=torch.float64)
        after = torch.cat([tail[:, 1:], torch.zeros(n, 1, dtype=torch.float64, device=device)], 1)
        elevated[:, 1:] = after - j * scaled  # sum_{m>=j} cf_m - j cf_{j-1}
        # The closest remainder-0 lattice point, then the simplex (ranks of the residuals) holding the point.
        rounded = torch.round(elevated / (d + 1))
        rem0 = rounded * (d + 1)
        total = rounded.sum(1, keepdim=True).long()
        resid = elevated - rem0
        ri, rj = resid[:, :, None], resid[:, None, :]
        order = torch.arange(d + 1, device=device)
        earlier = order[None, :] < order[:, None]  # [i, j]: j comes before i
        rank = ((rj > ri) & ~earlier[None]).sum(2) + ((rj >= ri) & earlier[None]).sum(2)
        rank = rank + total
        low, high = rank < 0, rank > d
        rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
        rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))
        # Barycentric weights of the d+1 vertices.
        value = (elevated - rem0) / (d + 1)
        bary = torch.zeros(n, d + 2, dtype=torch.float64, device=device)
        bary.scatter_add_(1, d - rank, value)
        bary.scatter_add_(1, d - rank + 1, -value)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self.weights = bary[:, : d + 1].to(torch.float32)
        # Vertex keys: rem0 + the canonical simplex's vertex r, looked up by each coordinate's rank.
        r = torch.arange(d + 1, device=device)
        canonical = torch.where(r[None, :] <= d - r[:, None], r[:, None], r[:, None] - (d + 1))  # [remainder, rank]
        keys = rem0[:, None, :d].long() + canonical[:, rank[:, :d]].permute(1, 0, 2)  # n x (d+1) x d
        keys = keys.reshape(-1, d)
        # Mixed-radix integer codes of the keys (room for the +-(d+1) steps of the blur neighbours).
        self.low = keys.min(0).values - (d + 1)
        self.radix = keys.max(0).values + (d + 1) - self.low + 1
        if float(torch.prod(self.radix.double())) >= 2.0**62:
            raise ValueError("CRF lattice too large for int64 keys: the kernel widths are too small for the image")
        self.codes, inverse = torch.unique(self._encode(keys), sorted=True, return_inverse=True)
        self.vertex = inverse.reshape(n, d + 1) + 1  # row 0 of the value table is the "no vertex" zero
        lattice_keys = self._decode(self.codes)
        self.neighbours = []
        for axis in range(d + 1):
            n1 = lattice_keys - 1
            n2 = lattice_keys + 1
            if axis < d:
                n1[:, axis] = lattice_keys[:, axis] + d
                n2[:, axis] = lattice_keys[:, axis] - d
            self.neighbours.append((self._find(n1), self._find(n2)))
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    def _encode(self, keys: torch.Tensor) -> torch.Tensor:
        code = torch.zeros(keys.shape[0], dtype=torch.int64, device=keys.device)
        for column in range(self.d):
            code = code * self.radix[column] + (keys[:, column] - self.low[column])
        return code

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        columns = []
        rest = codes.clone()
        for column in reversed(range(self.d)):
            columns.append(rest % self.radix[column] + self.low[column])
            rest = rest // self.radix[column]
        return torch.stack(columns[::-1], 1)

    def _find(self, keys: torch.Tensor) -> torch.Tensor:
        """Row of each key in the value table (0 when the lattice has no such vertex)."""
        inside = ((keys >= self.low) & (keys < self.low + self.radix)).all(1)
        codes = self._encode(keys.clamp(min=self.low, max=self.low + self.radix - 1))
        pos = torch.searchsorted(self.codes, codes).clamp(max=len(self.codes) - 1)
        return torch.where(inside & (self.codes[pos] == codes), pos + 1, torch.zeros_like(pos))

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Filter ``values`` (N x C) -> N x C: splat onto the lattice, blur along its d+1 axes, slice back."""
        n, channels = values.shape
        flat_vertex = self.vertex.reshape(-1)
        table = values.new_zeros(len(self.codes) + 1, channels)
        table.index_add_(0, flat_vertex, (values[:, None, :] * self.weights[:, :, None]).reshape(-1, channels))
        for n1, n2 in self.neighbours:
            blurred = table.index_select(0, n1).add_(table.index_select(0, n2)).mul_(0.5).add_(table[1:])
            table = torch.cat([table[:1], blurred])
        out = table.index_select(0, flat_vertex).view(n, -1, channels).mul_(self.weights[:, :, None]).sum(1)
        return out * self.alpha


def _crf_torch(bgr: torch.Tensor, unary: torch.Tensor, params: CRFParams) -> torch.Tensor:
    n_labels, height, width = unary.shape
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    colour = bgr.reshape(-1, 3).float()
    kernels = [
        (PermutohedralLattice(xy / params.gaussian_sxy), params.gaussian_compat),
        (
            PermutohedralLattice(
                torch.cat([xy / params.bilateral_sxy, colour / params.bilateral_srgb], 1)
            ),
            params.bilateral_compat,
        ),
    ]
    ones = torch.ones(height * width, 1)
    # Symmetric normalization D^-1/2 K D^-1/2, as DenseCRF's default NORMALIZE_SYMMETRIC.
    norms = [1.0 / torch.sqrt(lattice.filter(ones) + 1e-20) for lattice, _ in kernels]
    u = unary.reshape(n_labels, -1).t().float()
    q = torch.softmax(-u, dim=1)
    for _ in range(params.iterations):
        energy = -u
        for (lattice, compat), norm in zip(kernels, norms):
            energy = energy + compat * norm * lattice.filter(q * norm)
        q = torch.softmax(energy, dim=1)
    return q.t().reshape(n_labels, height, width).contiguous()


def _pydensecrf_job(args) -> np.ndarray:
    # runs in pool workers: numpy and the C++ library only (no torch ops after a fork)
    bgr, unary, params = args
    n_labels, height, width = unary.shape
    dcrf = _pydensecrf()
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(n_labels, -1)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=bgr, compat=params.bilateral_compat
    )
    return np.array(crf.inference(params.iterations), dtype=np.float32).reshape(n_labels, height, width)


def resolve_workers(workers, world_size: int = 1) -> int:
    """``"auto"``: the CPU cores of this machine shared among the ranks on it (at most 16); else the int."""
    if workers == "auto":
        import os

        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or 1)
        return max(1, min(16, (os.cpu_count() or 1) // max(1, local)))
    return int(workers or 0)


def crf_batch(images, logits, params: CRFParams = CRFParams(), backend: str = "auto", workers=0) -> torch.Tensor:
    """Refined probabilities (B x C x H x W) of a batch: ``images`` B x H x W x 3 uint8, ``logits`` B x C x h x w.

    ``workers > 1`` spreads the C++ CRF over a process pool (it holds the GIL); the torch fallback runs in
    this process.
    """
    workers = resolve_workers(workers)
    name = backend_name(backend)
    if name != "pydensecrf" or workers <= 1 or len(images) <= 1:
        return torch.stack([dense_crf(images[i], logits[i].detach().float().cpu(), params, name)
                            for i in range(len(images))])  # fmt: skip
    jobs = []
    for i in range(len(images)):
        rgb = _as_hwc_uint8(images[i])
        probs = _probabilities(logits[i].detach().float().cpu(), rgb.shape[:2])
        unary = (-torch.log(probs.clamp(UNARY_CLIP, 1.0))).numpy().astype(np.float32)
        jobs.append((np.ascontiguousarray(rgb[:, :, ::-1]), unary, params))
    import multiprocessing as mp

    with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
        outs = pool.map(_pydensecrf_job, jobs)
    return torch.from_numpy(np.stack(outs))

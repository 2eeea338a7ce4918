"""Plain re-statements of timm's ``VisionTransformer`` and OpenCLIP's ``VisionTransformer`` forwards on their own
state-dict keys (float64, explicit softmax attention, hand-written LayerNorm and activations), sharing no code with
``sinder.models``: the converters are tested against these when timm / open_clip are not installed.

What is restated (timm 1.0 ``vision_transformer.py``; open_clip 3.x ``transformer.py``): patch convolution;
class/register tokens; learned positions, added to the patches only (``no_embed_class``) or to all tokens, resized
with ``F.interpolate`` bicubic antialiased to the grid (timm ``resample_abs_pos_embed``, open_clip
``resize_pos_embed`` on loading); optional pre-norm; pre-norm blocks with fused q/k/v, optional LayerScale, an MLP
with exact GELU or QuickGELU; final norm; pooled: the class token, or timm's ``AttentionPoolLatent`` (one latent
query, q and kv projections, proj, then ``x + mlp(norm(x))``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTS = {
    "gelu": lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2))),
    "quick_gelu": lambda h: h * torch.sigmoid(1.702 * h),
}


def layer_norm(x, sd, name, eps):
    w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def linear(x, sd, name):
    # timm/torch Linear keys "name.weight"; nn.MultiheadAttention's in-projection "name_weight"
    sep = "." if f"{name}.weight" in sd else "_"
    out = x @ sd[f"{name}{sep}weight"].T
    bias = sd.get(f"{name}{sep}bias")
    return out if bias is None else out + bias


def attention(q, k, v, heads):
    bsz, nq, dim = q.shape
    hd = dim // heads
    split = lambda t: t.reshape(bsz, t.shape[1], heads, hd).transpose(1, 2)  # noqa: E731
    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(hd), dim=-1)
    return (att @ split(v)).transpose(1, 2).reshape(bsz, nq, dim)


def resize_grid(pos, rows, cols):
    """(1, n, D) square grid of positions -> (1, rows * cols, D), bicubic antialiased (float32 as the libraries)."""
    side = math.isqrt(pos.shape[1])
    if (side, side) == (rows, cols):
        return pos
    grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).double()


def blocks(tokens, sd, names, *, depth, heads, eps, act):
    """Token tensors after every pre-norm block; ``names`` maps roles to the layout's module names."""
    outs = []
    for i in range(depth):
        b = names["block"].format(i)
        h = layer_norm(tokens, sd, f"{b}.{names['norm1']}", eps)
        q, k, v = linear(h, sd, f"{b}.{names['qkv']}").chunk(3, dim=-1)
        a = linear(attention(q, k, v, heads), sd, f"{b}.{names['proj']}")
        tokens = tokens + a * sd.get(f"{b}.{names['ls1']}", 1.0)
        h = layer_norm(tokens, sd, f"{b}.{names['norm2']}", eps)
        m = linear(ACTS[act](linear(h, sd, f"{b}.{names['fc1']}")), sd, f"{b}.{names['fc2']}")
        tokens = tokens + m * sd.get(f"{b}.{names['ls2']}", 1.0)
        outs.append(tokens)
    return outs


TIMM = {"block": "blocks.{}", "norm1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "ls1": "ls1.gamma",
        "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2", "ls2": "ls2.gamma"}  # fmt: skip
OPEN_CLIP = {"block": "transformer.resblocks.{}", "norm1": "ln_1", "qkv": "attn.in_proj", "proj": "attn.out_proj",
             "ls1": "ls_1.gamma", "norm2": "ln_2", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj", "ls2": "ls_2.gamma"}  # fmt: skip


def timm_forward(sd, x, *, depth, heads, eps, act, no_embed_class, pool="token"):
    """(per-block tokens with prefix, pooled feature) of a timm ``VisionTransformer`` state dict. ``pool='avg'``:
    the mean of the tokens after the class/register tokens, normed by ``fc_norm`` when the state has one (the
    final ``norm`` is then absent: timm's Identity), else taken after ``norm``."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    weight = sd["patch_embed.proj.weight"]
    p = weight.shape[-1]
    rows, cols = x.shape[2] // p, x.shape[3] // p
    tokens = F.conv2d(x, weight, sd.get("patch_embed.proj.bias"), stride=p).flatten(2).transpose(1, 2)
    prefix = [sd[k].expand(x.shape[0], -1, -1) for k in ("cls_token", "reg_token") if k in sd]
    n_prefix = sum(t.shape[1] for t in prefix)
    pos = sd["pos_embed"]
    if no_embed_class:
        tokens = torch.cat([*prefix, tokens + resize_grid(pos, rows, cols)], dim=1)
    else:
        pos = torch.cat([pos[:, :n_prefix], resize_grid(pos[:, n_prefix:], rows, cols)], dim=1)
        tokens = torch.cat([*prefix, tokens], dim=1) + pos
    if "norm_pre.weight" in sd:
        tokens = layer_norm(tokens, sd, "norm_pre", eps)
    outs = blocks(tokens, sd, TIMM, depth=depth, heads=heads, eps=eps, act=act)
    if pool == "avg":
        if "fc_norm.weight" in sd:
            return outs, layer_norm(outs[-1][:, n_prefix:].mean(dim=1), sd, "fc_norm", eps)
        return outs, layer_norm(outs[-1], sd, "norm", eps)[:, n_prefix:].mean(dim=1)
    final = layer_norm(outs[-1], sd, "norm", eps)
    if "attn_pool.latent" not in sd:
        return outs, final[:, 0]
    q = linear(sd["attn_pool.latent"].expand(x.shape[0], -1, -1), sd, "attn_pool.q")
    k, v = linear(final, sd, "attn_pool.kv").chunk(2, dim=-1)
    pooled = linear(attention(q, k, v, heads), sd, "attn_pool.proj")
    hidden = ACTS[act](linear(layer_norm(pooled, sd, "attn_pool.norm", eps), sd, "attn_pool.mlp.fc1"))
    return outs, (pooled + linear(hidden, sd, "attn_pool.mlp.fc2"))[:, 0]


def open_clip_forward(sd, x, *, depth, heads, act):
    """(per-block tokens with the class token, image embedding) of an OpenCLIP image tower (``visual.`` keys
    stripped), positions resized to the input's grid as open_clip does on loading."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    weight = sd["conv1.weight"]
    p = weight.shape[-1]
    rows, cols = x.shape[2] // p, x.shape[3] // p
    tokens = F.conv2d(x, weight, stride=p).flatten(2).transpose(1, 2)
    cls = sd["class_embedding"].reshape(1, 1, -1).expand(x.shape[0], -1, -1)
    pos = sd["positional_embedding"].unsqueeze(0)
    pos = torch.cat([pos[:, :1], resize_grid(pos[:, 1:], rows, cols)], dim=1)
    tokens = layer_norm(torch.cat([cls, tokens], dim=1) + pos, sd, "ln_pre", 1e-5)
    outs = blocks(tokens, sd, OPEN_CLIP, depth=depth, heads=heads, eps=1e-5, act=act)
    return outs, layer_norm(outs[-1], sd, "ln_post", 1e-5)[:, 0] @ sd["proj"]

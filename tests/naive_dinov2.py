"""An independent, deliberately plain re-statement of the DINOv2 forward pass, for tests.

It works on a raw state dict with explicit softmax attention and hand-written LayerNorm, sharing no code
with ``sinder.models.vit``; only the positional-embedding resampling uses ``F.interpolate``, called with the
arguments the reference passes (bicubic; scale factors with the offset, or a size when the offset is 0).
"""

import math

import torch
import torch.nn.functional as F


def layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def pos_embed_for(sd, rows, cols, offset, antialias):
    pos = sd["pos_embed"].double()
    n = pos.shape[1] - 1
    side = int(math.isqrt(n))
    if rows * cols == n and rows == cols:
        return pos
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if offset:
        kw = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)}
    else:
        kw = {"size": (rows, cols)}
    grid = F.interpolate(grid.float(), mode="bicubic", antialias=antialias, **kw).double()
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)


def forward_all_blocks(sd, x, arch):
    """Token tensors (B, 1+R+N, D) after every block, in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    p = arch["patch_size"]
    heads = arch["num_heads"]
    rows, cols = x.shape[2] // p, x.shape[3] // p
    patches = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    tokens = patches.flatten(2).transpose(1, 2)
    tokens = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), tokens], dim=1)
    tokens = tokens + pos_embed_for(sd, rows, cols, arch["interpolate_offset"], arch["interpolate_antialias"])
    if arch.get("num_register_tokens", 0):
        regs = sd["register_tokens"].expand(x.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
    outs = []
    depth = arch["depth"]
    for i in range(depth):
        b = f"blocks.{i}"
        h = layer_norm(tokens, sd[f"{b}.norm1.weight"], sd[f"{b}.norm1.bias"])
        qkv = linear(h, sd, f"{b}.attn.qkv")
        bsz, n, three_d = qkv.shape
        dim = three_d // 3
        q, k, v = qkv.split(dim, dim=-1)
        hd = dim // heads
        q = q.reshape(bsz, n, heads, hd).transpose(1, 2)
        k = k.reshape(bsz, n, heads, hd).transpose(1, 2)
        v = v.reshape(bsz, n, heads, hd).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        a = (att @ v).transpose(1, 2).reshape(bsz, n, dim)
        tokens = tokens + linear(a, sd, f"{b}.attn.proj") * sd[f"{b}.ls1.gamma"]
        h = layer_norm(tokens, sd[f"{b}.norm2.weight"], sd[f"{b}.norm2.bias"])
        if f"{b}.mlp.w12.weight" in sd:
            x12 = linear(h, sd, f"{b}.mlp.w12")
            x1, x2 = x12.chunk(2, dim=-1)
            m = linear(x1 * torch.sigmoid(x1) * x2, sd, f"{b}.mlp.w3")
        else:
            hid = linear(h, sd, f"{b}.mlp.fc1")
            hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
            m = linear(hid, sd, f"{b}.mlp.fc2")
        tokens = tokens + m * sd[f"{b}.ls2.gamma"]
        outs.append(tokens)
    return outs

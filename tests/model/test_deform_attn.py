"""MSDeformableAttention against the formula written out directly: one bilinear sample per head,
level and point at loc = ref_xy + offset / P * ref_wh / 2, weighted by a softmax over levels and
points, for one reference box per query and for one per level; values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rtdetr.model.deform_attn import MSDeformableAttention
from rtdetr.model.testing import randomize_

SHAPES = [(6, 8), (3, 4), (2, 2)]  # non-square levels


def bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """image [C, H, W] sampled at normalised (x, y) (align_corners=False; zeros outside)."""
    _, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= cx < w and 0 <= cy < h:
            out = out + (1 - abs(px - cx)) * (1 - abs(py - cy)) * image[:, cy, cx]
    return out


def reference(attn: MSDeformableAttention, query, ref_points, value) -> torch.Tensor:
    b, q, c = query.shape
    nh, nl, npt, hd = attn.num_heads, attn.num_levels, attn.num_points, attn.head_dim
    v = attn.value_proj(value)
    offsets = attn.sampling_offsets(query).reshape(b, q, nh, nl, npt, 2)
    weights = attn.attention_weights(query).reshape(b, q, nh, nl * npt).softmax(-1).reshape(b, q, nh, nl, npt)
    starts = [0]
    for h, w in SHAPES:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, q, c)
    for bi in range(b):
        for qi in range(q):
            for head in range(nh):
                acc = torch.zeros(hd)
                for lvl, (h, w) in enumerate(SHAPES):
                    image = v[bi, starts[lvl] : starts[lvl + 1], head * hd : (head + 1) * hd].T.reshape(
                        hd, h, w
                    )
                    box = ref_points[bi, qi, lvl if ref_points.shape[2] > 1 else 0]
                    for p in range(npt):
                        dx, dy = offsets[bi, qi, head, lvl, p]
                        x = box[0] + dx / npt * box[2] * 0.5
                        y = box[1] + dy / npt * box[3] * 0.5
                        acc = acc + weights[bi, qi, head, lvl, p] * bilinear(image, float(x), float(y))
                out[bi, qi, head * hd : (head + 1) * hd] = acc
    return attn.output_proj(out)


@pytest.mark.parametrize("refs_per_query", [1, 3])
def test_matches_the_written_out_formula(refs_per_query):
    torch.manual_seed(0)
    attn = randomize_(MSDeformableAttention(embed_dim=16, num_heads=2, num_levels=3, num_points=2), seed=3)
    with torch.no_grad():  # offsets of a few cells, so that samples also fall outside the maps
        attn.sampling_offsets.weight.mul_(3.0)
    query = torch.randn(2, 5, 16)
    centres = torch.rand(2, 5, refs_per_query, 2) * 0.8 + 0.1
    ref_points = torch.cat([centres, torch.rand(2, 5, refs_per_query, 2) * 0.5 + 0.1], -1)
    value = torch.randn(2, sum(h * w for h, w in SHAPES), 16)

    got = attn(query, ref_points, value, SHAPES)
    with torch.no_grad():
        want = reference(attn, query, ref_points, value)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_original_formulation():
    """The grid computed as (2 ref_xy - 1) + offset * ref_wh / P, expanded and transposed once for
    all levels: the parameters get the gradients of 2 (ref_xy + offset / P * ref_wh / 2) - 1
    sampled level by level."""
    torch.manual_seed(1)
    attn = randomize_(MSDeformableAttention(embed_dim=16, num_heads=2, num_levels=3, num_points=2), seed=4)
    query = torch.randn(2, 7, 16)
    ref_points = torch.cat([torch.rand(2, 7, 1, 2) * 0.8 + 0.1, torch.rand(2, 7, 1, 2) * 0.4 + 0.1], -1)
    value = torch.randn(2, sum(h * w for h, w in SHAPES), 16)

    def interleaved(attn):  # the original formulation, grid_sample per level on (x, y) pairs
        b, q, _ = query.shape
        nh, nl, npt, hd = attn.num_heads, attn.num_levels, attn.num_points, attn.head_dim
        v = attn.value_proj(value).reshape(b, -1, nh, hd)
        off = attn.sampling_offsets(query).reshape(b, q, nh, nl, npt, 2)
        wts = attn.attention_weights(query).reshape(b, q, nh, nl * npt).softmax(-1).reshape(b, q, nh, nl, npt)
        ref = ref_points[:, :, None, :, None, :]
        grid = 2 * (ref[..., :2] + off / npt * ref[..., 2:] * 0.5) - 1
        out = 0
        for lvl, (part, (h, w)) in enumerate(zip(v.split([h * w for h, w in SHAPES], 1), SHAPES)):
            image = part.flatten(2).transpose(1, 2).reshape(b * nh, hd, h, w)
            g = grid[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
            sampled = F.grid_sample(image, g, mode="bilinear", padding_mode="zeros", align_corners=False)
            out = out + (sampled * wts[:, :, :, lvl].transpose(1, 2).reshape(b * nh, 1, q, npt)).sum(-1)
        return attn.output_proj(out.reshape(b, nh * hd, q).transpose(1, 2))

    grads = []
    for fn in (lambda: attn(query, ref_points, value, SHAPES), lambda: interleaved(attn)):
        attn.zero_grad()
        (fn() ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in attn.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)

"""Numerical parity with transformers' RTDetrForObjectDetection (r18vd and r50vd, random weights).

In float64 the outputs agree query by query (to ~1e-13). In float32, rounding differences of ~1e-6
can swap two encoder proposals whose scores are that close, which only permutes the (set-valued)
queries; float32 outputs are therefore compared after matching each query to its counterpart.

The random weights are variance-preserving everywhere (transformers' own init uses std 0.01 and
zero heads, which would make the comparison nearly vacuous). The bias of `enc_output` is zeroed so
that the tokens masked out by the anchor valid mask (all identical) do not crowd the top-k proposals.
"""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from transformers import RTDetrForObjectDetection  # noqa: E402
from transformers.models.rt_detr.image_processing_rt_detr import RTDetrImageProcessor  # noqa: E402

from rtdetr.model import PostProcessor, build_model  # noqa: E402
from rtdetr.model.convert_hf import (  # noqa: E402
    hf_state_dict_to_ours,
    model_args_from_hf_config,
    ours_state_dict_to_hf,
)
from rtdetr.model.testing import hf_config  # noqa: E402

SIZES = [(640, 640), pytest.param((480, 640), marks=pytest.mark.slow)]  # the second: batch 2 in float64
TOL = 1e-4


@pytest.fixture(scope="module", params=["r18vd", pytest.param("r50vd", marks=pytest.mark.slow)])
def pair(request, randomize):
    """(transformers model, our converted model), both eval, float32, same random weights."""
    config = hf_config(request.param)
    torch.manual_seed(0)
    hf = randomize(RTDetrForObjectDetection(config), seed=1).eval()
    with torch.no_grad():
        hf.model.enc_output[0].bias.zero_()
    ours = build_model(**model_args_from_hf_config(config)).eval()
    ours.load_state_dict(hf_state_dict_to_ours(hf.state_dict()), strict=True)
    return hf, ours


def _run(hf, ours, size, dtype=torch.float32, batch=1):
    x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(size[0]), dtype=dtype)
    with torch.no_grad():
        return hf(pixel_values=x), ours(x)


def _match(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Permutation p minimising the summed L-inf distance between rows a[i] and b[p[i]]."""
    rows, cols = linear_sum_assignment(torch.cdist(a, b, p=float("inf")).numpy())
    return torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]


def test_state_dict_round_trip(pair):
    hf, ours = pair
    back = ours_state_dict_to_hf(ours.state_dict())
    reference = hf.state_dict()
    assert set(back) == set(reference)
    assert all(torch.equal(back[k], reference[k]) for k in reference)


@pytest.mark.parametrize("size", SIZES, ids=["640x640", "480x640"])
def test_float32_outputs_match_as_query_sets(pair, size):
    hf, ours = pair
    ref, out = _run(hf, ours, size)
    masked_proposals = (ref.init_reference_points > 1e30).any(-1).sum()
    assert masked_proposals < 10, "test weights let masked tokens dominate the proposals"
    for b in range(ref.logits.shape[0]):
        hf_rows = torch.cat([ref.logits[b], ref.pred_boxes[b]], 1)
        our_rows = torch.cat([out["pred_logits"][b], out["pred_boxes"][b]], 1)
        perm = _match(hf_rows, our_rows)
        assert (hf_rows - our_rows[perm]).abs().max() <= TOL


@pytest.mark.parametrize("size", SIZES, ids=["640x640", "480x640"])
def test_float32_top_detections_match(pair, size):
    hf, ours = pair
    ref, out = _run(hf, ours, size)
    orig = torch.tensor([[size[0] * 2, size[1] * 3]])  # (h, w) of a larger original image
    theirs = RTDetrImageProcessor().post_process_object_detection(ref, threshold=0.0, target_sizes=orig)[0]
    mine = PostProcessor(num_select=ref.logits.shape[1])(out, orig)[0]
    # sorted scores are permutation-invariant; the top detections match as (label, box) sets
    assert (theirs["scores"] - mine["scores"]).abs().max() <= TOL
    top = 100
    rows_hf = torch.cat([theirs["labels"][:top, None] * 1e4, theirs["boxes"][:top]], 1).double()
    rows_ours = torch.cat([mine["labels"][:top, None] * 1e4, mine["boxes"][:top]], 1).double()
    perm = _match(rows_hf, rows_ours)
    assert torch.equal(theirs["labels"][:top], mine["labels"][:top][perm])
    assert (theirs["boxes"][:top] - mine["boxes"][:top][perm]).abs().max() <= 1e-2  # pixels of a 1920 image


@pytest.mark.parametrize("size", SIZES, ids=["640x640", "480x640"])
def test_float64_outputs_match_query_by_query(pair, size):
    hf, ours = (copy.deepcopy(m).double() for m in pair)
    ref, out = _run(hf, ours, size, torch.float64, batch=2 if size[0] != size[1] else 1)
    assert (ref.logits - out["pred_logits"]).abs().max() <= 1e-9
    assert (ref.pred_boxes - out["pred_boxes"]).abs().max() <= 1e-9
    orig = torch.tensor([list(size)] * ref.logits.shape[0])
    theirs = RTDetrImageProcessor().post_process_object_detection(ref, threshold=0.0, target_sizes=orig)
    mine = PostProcessor(num_select=ref.logits.shape[1])(out, orig)
    for t, m in zip(theirs, mine):
        assert torch.equal(t["labels"], m["labels"])
        assert (t["boxes"] - m["boxes"]).abs().max() <= 1e-6

"""Numerical parity with transformers' RTDetrHungarianMatcher and RTDetrLoss on random outputs.

transformers names the encoder term as its last auxiliary entry (`_aux_{L-1}`) where we say `_enc`,
and spells the keys `logits` / `class_labels` / `auxiliary_outputs` / `dn_auxiliary_outputs` /
`denoising_meta_values`; otherwise the same outputs must give the same matching and losses.
"""

from __future__ import annotations

import pytest
import torch
from transformers import RTDetrConfig  # noqa: E402
from transformers.loss.loss_rt_detr import RTDetrHungarianMatcher, RTDetrLoss  # noqa: E402

from rtdetr.loss import HungarianMatcher, RTDETRCriterion  # noqa: E402
from rtdetr.model.denoising import contrastive_denoising_group  # noqa: E402

NUM_CLASSES = 5


def hf_config() -> RTDetrConfig:
    return RTDetrConfig(num_labels=NUM_CLASSES)  # its defaults: costs 2/5/2, weights 1/5/2, alphas 0.25/0.75


def to_hf(part: dict) -> dict:
    return {"logits": part["pred_logits"], "pred_boxes": part["pred_boxes"]}


@pytest.mark.parametrize("seed", range(3))
def test_matcher_matches_transformers(seed, make_outputs, make_targets):
    outputs = make_outputs(4, 10, NUM_CLASSES, seed=seed)
    # the last image has more targets than queries
    targets = make_targets([3, 0, 7, 12], NUM_CLASSES, seed=50 + seed)
    ours = HungarianMatcher()(outputs, targets)
    theirs = RTDetrHungarianMatcher(hf_config())(
        to_hf(outputs), [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    )
    for (q1, t1), (q2, t2) in zip(ours, theirs):
        assert q1.tolist() == q2.tolist() and t1.tolist() == t2.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_losses_match_transformers(seed, make_outputs, make_targets):
    """Final layer, two auxiliary layers, encoder and three denoising layers."""
    sizes = [2, 0, 4]
    targets = make_targets(sizes, NUM_CLASSES, seed=60 + seed)
    outputs = make_outputs(3, 12, NUM_CLASSES, seed=seed)
    outputs["aux_outputs"] = [make_outputs(3, 12, NUM_CLASSES, seed=10 + seed + i) for i in range(2)]
    outputs["enc_outputs"] = make_outputs(3, 12, NUM_CLASSES, seed=20 + seed)
    torch.manual_seed(seed)
    dn = contrastive_denoising_group(targets, NUM_CLASSES, 12, torch.nn.Embedding(NUM_CLASSES + 1, 8), 12)
    num_dn = dn.meta["dn_num_split"][0]
    outputs["dn_outputs"] = [make_outputs(3, num_dn, NUM_CLASSES, seed=30 + seed + i) for i in range(3)]
    outputs["dn_meta"] = dn.meta

    ours = RTDETRCriterion(NUM_CLASSES, HungarianMatcher())(outputs, targets)
    hf_outputs = {
        **to_hf(outputs),
        "auxiliary_outputs": [to_hf(a) for a in outputs["aux_outputs"]] + [to_hf(outputs["enc_outputs"])],
        "dn_auxiliary_outputs": [to_hf(d) for d in outputs["dn_outputs"]],
        "denoising_meta_values": dn.meta,
    }
    theirs = RTDetrLoss(hf_config())(
        hf_outputs, [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    )
    theirs = {k.replace("_aux_2", "_enc"): v for k, v in theirs.items()}
    assert set(ours) == set(theirs)
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-5, atol=1e-6, msg=name)

"""Shape contracts, training outputs, gradients, deploy fusion, eval_idx and determinism."""

from __future__ import annotations

import pytest
import torch

from rtdetr.model.encoder import RepVggBlock, sincos_position_embedding

LEVEL_CONFIGS = {
    # name: (overrides, input H, W)
    "1-level": (dict(return_interm_indices=[3], feat_strides=[32], feat_channels=[64], num_feature_levels=1,
                     use_encoder_idx=[0], enc_layers=2, dec_layers=1, num_queries=8), 128, 128),
    "2-levels": (dict(return_interm_indices=[2, 3], feat_strides=[16, 32], feat_channels=[64, 64],
                      num_feature_levels=2, use_encoder_idx=[1], enc_layers=0, nheads=2), 128, 96),
    "3-levels": (dict(hidden_dim=32, feat_channels=[32] * 3, nheads=8, num_queries=30), 96, 160),
    "4-levels": (dict(return_interm_indices=[0, 1, 2, 3], feat_strides=[4, 8, 16, 32], feat_channels=[64] * 4,
                      num_feature_levels=4, use_encoder_idx=[2, 3], dec_layers=2), 64, 96),
    "3+1 extra level": (dict(num_feature_levels=4, backbone="resnet_18"), 128, 128),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LEVEL_CONFIGS))
def test_eval_and_train_output_shapes(tiny_model, make_targets, name):
    overrides, h, w = LEVEL_CONFIGS[name]
    model = tiny_model(**overrides)
    q, c = model.decoder.num_queries, model.decoder.num_classes
    images = torch.rand(2, 3, h, w)

    with torch.no_grad():
        out = model.eval()(images)
    assert set(out) == {"pred_logits", "pred_boxes"}
    assert out["pred_logits"].shape == (2, q, c) and out["pred_boxes"].shape == (2, q, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()

    out = model.train()(images, make_targets(2, c))
    num_layers = len(model.decoder.decoder.layers)
    assert out["pred_logits"].shape == (2, q, c)
    assert len(out["aux_outputs"]) == num_layers - 1
    assert out["enc_outputs"]["pred_boxes"].shape == (2, q, 4)
    num_dn, num_q = out["dn_meta"]["dn_num_split"]
    assert num_q == q and num_dn == 2 * 2 * out["dn_meta"]["dn_num_group"]  # max 2 boxes per image
    assert len(out["dn_outputs"]) == num_layers
    assert out["dn_outputs"][0]["pred_logits"].shape == (2, num_dn, c)


@pytest.mark.parametrize("size", [(96, 160), (100, 150)], ids=["non-square", "not-multiple-of-32"])
def test_any_input_size_runs(tiny_model, size):
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size))
    assert out["pred_boxes"].shape == (1, 20, 4) and torch.isfinite(out["pred_logits"]).all()


def test_every_trainable_parameter_gets_a_gradient(tiny_model, make_targets):
    model = tiny_model(num_feature_levels=4).train()
    out = model(torch.rand(2, 3, 96, 128), make_targets(2, 5))
    heads = [out, out["enc_outputs"], *out["aux_outputs"], *out["dn_outputs"]]
    loss = sum(d["pred_logits"].sum() + d["pred_boxes"].sum() for d in heads)
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_aux_loss_off_returns_no_auxiliary_outputs(tiny_model, make_targets):
    out = tiny_model(aux_loss=False).train()(torch.rand(2, 3, 64, 64), make_targets(2, 5))
    assert "aux_outputs" not in out and "enc_outputs" not in out
    assert len(out["dn_outputs"]) == 1


def test_no_denoising_without_targets_or_dn_number(tiny_model, make_targets):
    assert "dn_outputs" not in tiny_model().train()(torch.rand(1, 3, 64, 64))
    model = tiny_model(dn_number=0).train()
    assert not hasattr(model.decoder, "denoising_class_embed")
    assert "dn_outputs" not in model(torch.rand(1, 3, 64, 64), make_targets(1, 5))


def test_train_backbone_false_freezes_backbone(tiny_model):
    model = tiny_model(train_backbone=False)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_deploy_fuses_repvgg_blocks_without_changing_outputs(tiny_model):
    model = tiny_model(expansion=1.0).eval()
    images = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        before = model(images)
        model.deploy()
        after = model(images)
    blocks = [m for m in model.modules() if isinstance(m, RepVggBlock)]
    assert blocks and all(hasattr(b, "conv") and not hasattr(b, "conv1") for b in blocks)
    for key in ("pred_logits", "pred_boxes"):
        assert (before[key] - after[key]).abs().max() <= 1e-5


def test_eval_idx_selects_that_decoder_layer(tiny_model):
    images = torch.rand(1, 3, 96, 96)
    model = tiny_model(dec_layers=3, eval_idx=1).eval()
    truncated = tiny_model(dec_layers=2).eval()  # layers 0 and 1 with the same weights
    result = truncated.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys and all(".2." in k for k in result.unexpected_keys)
    with torch.no_grad():
        out, ref = model(images), truncated(images)
    assert torch.equal(out["pred_logits"], ref["pred_logits"]) and torch.equal(
        out["pred_boxes"], ref["pred_boxes"]
    )
    assert len(model.train()(images)["aux_outputs"]) == 2  # training still runs every layer


def test_same_seed_same_model_and_outputs(tiny_model, make_targets):
    images, targets = torch.rand(2, 3, 64, 96), make_targets(2, 5)
    outs = []
    for _ in range(2):
        model = tiny_model(seed=3).train()
        torch.manual_seed(7)  # denoising noise
        outs.append(model(images, targets))
    for key in ("pred_logits", "pred_boxes"):
        assert torch.equal(outs[0][key], outs[1][key])
        assert torch.equal(outs[0]["dn_outputs"][-1][key], outs[1]["dn_outputs"][-1][key])


def test_anchors_follow_the_input_size_and_are_not_state(tiny_model):
    model = tiny_model().eval()
    assert not any("anchor" in k or "valid_mask" in k for k in model.state_dict())
    with torch.no_grad():
        for size in [(64, 64), (96, 128), (64, 64)]:
            assert model(torch.rand(1, 3, *size))["pred_boxes"].shape == (1, 20, 4)
    assert len(model.decoder._anchor_cache) == 2


def test_position_embedding_orders():
    square_w, square_h = (
        sincos_position_embedding(5, 5, 16, order="w_major"),
        sincos_position_embedding(5, 5, 16, order="h_major"),
    )
    assert torch.allclose(square_w, square_h)
    h, w, dim = 3, 5, 16
    emb = sincos_position_embedding(h, w, dim, order="w_major")[0]
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))
    for k in range(h * w):  # original code: token k gets (w=k // H, h=k % H), [sin w, cos w, sin h, cos h]
        a, b = (k // h) * omega, (k % h) * omega
        assert torch.allclose(emb[k], torch.cat([a.sin(), a.cos(), b.sin(), b.cos()]), atol=1e-6)
    emb = sincos_position_embedding(h, w, dim, order="h_major")[0]
    for k in range(h * w):  # true position: row k // W, column k % W
        a, b = (k // w) * omega, (k % w) * omega
        assert torch.allclose(emb[k], torch.cat([a.sin(), a.cos(), b.sin(), b.cos()]), atol=1e-6)


def test_channels_last_norms_get_contiguous_gradients(tiny_model, make_targets):
    """Every BatchNorm of a channels-last model gets its gradient channels-last contiguous: the maps
    that are concatenated next (the input projections) get a slice of the concatenation's gradient
    otherwise, which ATen's CPU batch-norm backward handles several times slower."""
    from torch import nn

    from rtdetr.engine.model_setup import use_channels_last

    model = tiny_model(num_feature_levels=4, backbone="resnet_18").train()
    use_channels_last(model)
    layouts = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):

            def record(mod, args, out, name=name):
                out.register_hook(
                    lambda g: layouts.__setitem__(name, g.is_contiguous(memory_format=torch.channels_last))
                )

            module.register_forward_hook(record)
    images = torch.rand(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    out = model(images, make_targets(2, model.decoder.num_classes))
    plain = sum(v.sum() for k, v in out.items() if torch.is_tensor(v))
    plain.backward()
    assert "decoder.input_proj.3.norm" in layouts and "encoder.input_proj.0.1" in layouts
    assert [name for name, ok in layouts.items() if not ok] == []


def test_contiguous_grad_keeps_values_and_hands_on_contiguous_gradients():
    from rtdetr.model.layers import contiguous_grad

    x = torch.rand(2, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = contiguous_grad(x)
    assert torch.equal(y, x)
    seen = []
    y.register_hook(lambda g: seen.append(g.is_contiguous(memory_format=torch.channels_last)))
    x.register_hook(lambda g: seen.append(g.is_contiguous(memory_format=torch.channels_last)))
    (torch.cat([y, y * 2], 1) * torch.arange(8.0).reshape(1, 8, 1, 1)).sum().backward()
    assert seen == [False, True]  # a slice of the concatenation's gradient, made contiguous
    assert torch.equal(x.grad[:, :, 0, 0], (torch.arange(4.0) + 2 * torch.arange(4.0, 8.0)).expand(2, 4))
    with torch.no_grad():
        assert contiguous_grad(x) is x


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_denoising_self_attention_equals_one_masked_attention(make_targets, dropout):
    """The two-part self-attention of a denoising batch computes what nn.MultiheadAttention does
    with the denoising group's mask, forward and backward; its dropout applies in training."""
    from torch import nn

    from rtdetr.model.decoder import denoising_self_attention
    from rtdetr.model.denoising import contrastive_denoising_group

    torch.manual_seed(0)
    dn = contrastive_denoising_group(make_targets(3, 5), 5, 20, nn.Embedding(6, 32), num_denoising=12)
    num_dn = dn.meta["dn_num_split"][0]
    assert dn.attn_mask[num_dn:, :num_dn].all() and not dn.attn_mask[num_dn:, num_dn:].any()
    attn = nn.MultiheadAttention(32, 4, batch_first=True, dropout=dropout).eval()
    qk = torch.randn(3, num_dn + 20, 32, requires_grad=True)
    value = torch.randn(3, num_dn + 20, 32, requires_grad=True)
    ref = attn(qk, qk, value, attn_mask=dn.attn_mask, need_weights=False)[0]
    ours = denoising_self_attention(attn, qk, value, dn.attn_mask, num_dn)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad((ref * ref).sum(), [qk, value, attn.in_proj_weight])
    ours_grads = torch.autograd.grad((ours * ours).sum(), [qk, value, attn.in_proj_weight])
    for a, b in zip(ours_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if dropout:  # training: dropout applies, so outputs differ between draws
        attn.train()
        assert not torch.equal(denoising_self_attention(attn, qk, value, dn.attn_mask, num_dn), ours)


def test_every_activation_option_of_the_spec_builds():
    from rtdetr.config.schema import ACTIVATIONS
    from rtdetr.model.layers import get_activation

    x = torch.linspace(-2, 2, 9)
    for name in ACTIVATIONS:
        assert get_activation(name)(x).shape == x.shape, name

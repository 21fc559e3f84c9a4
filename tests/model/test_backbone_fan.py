"""FAN-Hybrid backbones as TAO builds them for RT-DETR: every name's levels and parameter counts, TAO's
parameter names and checkpoint layouts, forward shapes, freezing, a whole RT-DETR and its ONNX export."""

from __future__ import annotations

import io
import math

import onnxruntime as ort
import pytest
import torch

from rtdetr.loss import HungarianMatcher, RTDETRCriterion
from rtdetr.model import build_model, load_pretrained_backbone
from rtdetr.model.backbones import fan
from rtdetr.model.backbones.fan import VARIANTS, ChannelProcessing, FanConfig, FANHybrid, FourierPositionEmbed
from rtdetr.model.layers import FrozenBatchNorm2d
from rtdetr.model.testing import randomize_

# variant: (parameters of our backbone at return_idx [1, 2, 3]; of the 1000-class classification network
#           it is cut from; the published FAN-Hybrid count in millions)
# The classification network is our backbone less TAO's detection additions (the per-level LayerNorms and
# learnable_downsample) plus a Linear(E, 1000) head; its norm, class token and class-attention blocks
# are in both. Published (Zhou et al. 2022): T/S/B/L 7.4/26.3/50.4/76.8M. TAO's small has 10 FAN blocks
# although it is called small_12; the published 26.3M agrees with 10 blocks (12 would give 30.0M), so the
# name, not the depth, is off. Tiny is 0.9% above its published 7.4M, small 0.7% below.
PARAMETERS = {
    "tiny": (8_604_544, 7_467_240, 7.4),
    "small": (28_390_736, 26_117_944, 26.3),
    "base": (53_126_336, 50_475_048, 50.4),
    "large": (79_695_676, 76_855_140, 76.8),
}
WIDTHS = {"tiny": 192, "small": 384, "base": 448, "large": 480}

TINY_FAN = dict(
    backbone="fan_tiny",
    hidden_dim=32,
    feat_channels=[32, 32, 32],
    nheads=2,
    dim_feedforward=64,
    dec_dim_feedforward=64,
    dec_layers=2,
    num_queries=10,
    dn_number=4,
    expansion=0.5,
)


def build_meta(name: str, **kwargs) -> FANHybrid:
    with torch.device("meta"):
        return fan.BACKBONES[name].build(**{"return_idx": [1, 2, 3], **kwargs})


@pytest.fixture(scope="module")
def tiny_backbone() -> FANHybrid:
    """fan_tiny returning all four levels, with seeded random weights, in eval mode (do not modify)."""
    torch.manual_seed(0)
    return randomize_(fan.BACKBONES["fan_tiny"].build(return_idx=[0, 1, 2, 3])).eval()


def copy_of(backbone: FANHybrid, return_idx: list[int]) -> FANHybrid:
    """fan_tiny at ``return_idx`` with ``backbone``'s weights (built on the meta device: fast)."""
    copy = build_meta("fan_tiny", return_idx=return_idx).to_empty(device="cpu")
    missing, _ = copy.load_state_dict(backbone.state_dict(), strict=False)
    assert missing == []
    return copy.train(backbone.training)


def tao_keys(config: FanConfig, return_idx: list[int]) -> set[str]:
    """The state-dict keys of TAO's RT-DETR FAN backbone (its module names), written out by hand."""

    def wb(*names: str) -> list[str]:
        return [f"{n}.{p}" for n in names for p in ("weight", "bias")]

    keys = ["cls_token", *wb("patch_embed.backbone.stem.0", "patch_embed.backbone.stem.1")]
    for s, depth in enumerate(config.cnn_depths):
        stage = f"patch_embed.backbone.stages.{s}"
        if s > 0:
            keys += wb(f"{stage}.downsample.0", f"{stage}.downsample.1")
        for j in range(depth):
            block = f"{stage}.blocks.{j}"
            keys += [
                f"{block}.gamma",
                *wb(f"{block}.conv_dw", f"{block}.norm", f"{block}.mlp.fc1", f"{block}.mlp.fc2"),
            ]
    keys += wb("patch_embed.proj", "pos_embed.token_projection")
    for i in range(config.depth):
        b, v = f"blocks.{i}", f"blocks.{i}.mlp.mlp_v"
        keys += [f"{b}.gamma1", f"{b}.gamma2", f"{b}.mlp.temperature", f"{v}.gamma"]
        keys += wb(f"{b}.norm1", f"{b}.attn.q", f"{b}.attn.kv", f"{b}.attn.proj", f"{b}.norm2")
        keys += wb(f"{v}.fc1", f"{v}.dwconv.conv1", f"{v}.dwconv.bn", f"{v}.dwconv.conv2", f"{v}.fc2")
        keys += [f"{v}.dwconv.bn.{s}" for s in ("running_mean", "running_var", "num_batches_tracked")]
        keys += wb(f"{b}.mlp.norm_v", f"{b}.mlp.q")
    for i in range(2):
        b = f"cls_attn_blocks.{i}"
        keys += [f"{b}.gamma1", f"{b}.gamma2"]
        keys += wb(*(f"{b}.{m}" for m in ("norm1", "attn.q", "attn.k", "attn.v", "attn.proj", "norm2")))
        keys += wb(f"{b}.mlp.fc1", f"{b}.mlp.fc2")
    keys += wb("norm", "learnable_downsample", *(f"out_norm{i}" for i in return_idx))
    return set(keys)


@pytest.mark.parametrize("name", sorted(fan.BACKBONES))
def test_every_name_builds_with_tao_levels_and_names(name):
    variant = fan.ALIASES.get(name, name.removeprefix("fan_"))
    backbone = build_meta(name)
    assert backbone.out_strides == [8, 16, 32]
    assert backbone.out_channels == [256, WIDTHS[variant], 768]
    assert set(backbone.state_dict()) == tao_keys(VARIANTS[variant], [1, 2, 3])
    if name in fan.ALIASES:  # the same network as its short name
        short = build_meta(f"fan_{variant}").state_dict()
        assert {k: v.shape for k, v in backbone.state_dict().items()} == {
            k: v.shape for k, v in short.items()
        }


@pytest.mark.parametrize("variant", sorted(PARAMETERS))
def test_parameter_counts_match_the_recorded_and_published_ones(variant):
    backbone = build_meta(f"fan_{variant}")
    ours, classification, published = PARAMETERS[variant]
    assert sum(p.numel() for p in backbone.parameters()) == ours
    detection_only = sum(
        p.numel()
        for n, p in backbone.named_parameters()
        if n.startswith(("out_norm", "learnable_downsample"))
    )
    width = WIDTHS[variant]
    assert ours - detection_only + width * 1000 + 1000 == classification
    assert abs(classification / 1e6 - published) <= 0.01 * published


def test_tao_quirks_depths_and_stride16_blocks():
    assert {v: (c.depth, c.out_index) for v, c in VARIANTS.items()} == {
        "tiny": (8, 7), "small": (10, 9), "base": (16, 15), "large": (22, 18)
    }  # fmt: skip
    assert VARIANTS["large"].cnn_depths == (3, 5) and VARIANTS["large"].num_heads == 10


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_fan_tiny_forward_shapes(tiny_backbone, size):
    h, w = size
    backbone = tiny_backbone
    with torch.no_grad():
        feats = backbone(torch.rand(2, 3, h, w))
    assert backbone.out_channels == [128, 256, 192, 768] and backbone.out_strides == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats] == [
        (2, c, h // s, w // s) for c, s in zip([128, 256, 192, 768], [4, 8, 16, 32])
    ]


@pytest.mark.slow
def test_fewer_levels_give_the_same_maps(tiny_backbone):
    images = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        expected = tiny_backbone(images)
        for return_idx in ([1], [0, 2], [2, 3]):
            for got, i in zip(copy_of(tiny_backbone, return_idx)(images), return_idx):
                assert torch.allclose(got, expected[i], atol=1e-6)


@pytest.mark.parametrize("return_idx", [[2, 1], [1, 1, 2], [1, 4], []])
def test_bad_levels_are_one_line_naming_the_setting(return_idx):
    with pytest.raises(ValueError) as error:
        build_meta("fan_tiny", return_idx=return_idx)
    assert "model.return_interm_indices" in str(error.value) and "\n" not in str(error.value)


def test_class_token_never_reaches_the_maps_so_its_path_is_frozen(tiny_backbone):
    backbone = copy_of(tiny_backbone, [1, 2, 3])
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = backbone(images)
        backbone.cls_token.normal_()
        for block in backbone.cls_attn_blocks:
            block.attn.q.weight.normal_()
            block.mlp.fc1.weight.normal_()
        after = backbone(images)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert "cls_token" in frozen and "norm.weight" in frozen and "cls_attn_blocks.1.gamma2" in frozen
    assert "cls_attn_blocks.1.gamma1" not in frozen and "cls_attn_blocks.1.norm2.weight" not in frozen


@pytest.mark.parametrize("return_idx", [[1, 2, 3], [0, 1], [2]])
def test_every_trainable_parameter_gets_a_gradient(tiny_backbone, return_idx):
    backbone = copy_of(tiny_backbone, return_idx).train()
    sum(f.square().mean() for f in backbone(torch.rand(2, 3, 32, 32))).backward()
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for p in trainable.values())
    assert all(p.grad is None for p in backbone.parameters() if not p.requires_grad)


def test_freeze_at_counts_stages_after_the_stem_and_freeze_norm_freezes_batch_norms():
    def frozen(freeze_at: int) -> set[str]:
        backbone = build_meta("fan_tiny", freeze_at=freeze_at)
        unused = {n for n, p in build_meta("fan_tiny").named_parameters() if not p.requires_grad}
        return {
            n.split(".blocks.")[0] for n, p in backbone.named_parameters() if not p.requires_grad
        } - unused

    assert frozen(-1) == set()
    assert {n.rsplit(".", 1)[0] for n in frozen(0)} == {
        "patch_embed.backbone.stem.0",
        "patch_embed.backbone.stem.1",
    }
    assert "patch_embed.backbone.stages.1" in frozen(2) and "patch_embed.proj.weight" not in frozen(2)
    assert "blocks.7.gamma1" in frozen(3) and "learnable_downsample.weight" not in frozen(3)
    everything = build_meta("fan_tiny", freeze_at=4)
    assert {n.split(".")[0] for n, p in everything.named_parameters() if p.requires_grad} == {
        "out_norm1", "out_norm2", "out_norm3"
    }  # fmt: skip

    norms = [
        m for m in build_meta("fan_tiny", freeze_norm=True).modules() if isinstance(m, FrozenBatchNorm2d)
    ]
    assert len(norms) == VARIANTS["tiny"].depth


def test_channel_processing_gates_each_head_channel_by_token_agreement():
    """Per head h and channel d: sigmoid(sum_n softmax_n(q)[n, d] * mean_d' softmax_n(x)[n, d']) * t_h."""
    torch.manual_seed(0)
    layer = randomize_(ChannelProcessing(16, num_heads=4)).eval()
    with torch.no_grad():
        layer.temperature.copy_(torch.rand(4, 1, 1) + 0.5)
        x = torch.randn(2, 6, 16)
        got = layer(x, 2, 3)
        q = layer.q(x)
        values = layer.norm_v(layer.mlp_v(x, 2, 3))
        expected = torch.empty_like(values)
        for h in range(4):
            cols = slice(4 * h, 4 * h + 4)
            weights = x[:, :, cols].softmax(dim=1).mean(dim=2)  # [B, N]
            gate = torch.sigmoid(torch.einsum("bnd,bn->bd", q[:, :, cols].softmax(dim=1), weights))
            expected[:, :, cols] = values[:, :, cols] * (gate * layer.temperature[h, 0, 0])[:, None, :]
    assert torch.allclose(got, expected, atol=1e-6)


def test_position_embedding_is_sin_cos_of_the_normalised_grid():
    embed = FourierPositionEmbed(64)
    with torch.no_grad():
        embed.token_projection.weight.copy_(torch.eye(64)[:, :, None, None])
        embed.token_projection.bias.zero_()
        pos = embed(3, 5)[0]
    row, col = 1, 4  # the features of positions 2/3 (y) and 5/5 (x), frequency index 1
    y, x = 2 / (3 + 1e-6) * 2 * math.pi, 5 / (5 + 1e-6) * 2 * math.pi
    freq = 10000 ** (2 / 32)
    expected = [math.sin(y / freq), math.cos(y / freq), math.sin(x / freq), math.cos(x / freq)]
    assert torch.allclose(pos[[2, 3, 34, 35], row, col], torch.tensor(expected), atol=1e-5)


def test_tao_checkpoint_layouts_load_with_nothing_missing_or_unexpected(tiny_backbone):
    source = copy_of(tiny_backbone, [1, 2, 3])
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = source(images)

    # a TAO RT-DETR training checkpoint: the backbone under model.model.backbone., and the rest of the model
    rtdetr_ckpt = {f"model.model.backbone.{k}": v for k, v in source.state_dict().items()}
    rtdetr_ckpt |= {
        "model.model.encoder.input_proj.0.weight": torch.zeros(1),
        "model.model.decoder.x": torch.zeros(1),
    }
    # a FAN checkpoint with its ConvNeXt MLPs stored as 1x1 convs and a classifier head
    conv_mlp = {
        k: v[..., None, None] if "stages" in k and ".mlp.fc" in k and k.endswith("weight") else v
        for k, v in source.state_dict().items()
    }
    conv_mlp |= {"head.weight": torch.zeros(1000, 192), "head.bias": torch.zeros(1000)}

    for state in (rtdetr_ckpt, conv_mlp):
        target = build_meta("fan_tiny").to_empty(device="cpu").eval()
        report = load_pretrained_backbone(target, state)
        assert report.missing == [] and report.unexpected == [] and report.mismatched == []
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(target(images), expected))


@pytest.mark.slow
def test_rtdetr_with_fan_tiny_runs_trains_and_freezes(tiny_model, make_targets):
    model = tiny_model(num_classes=3, **TINY_FAN)
    assert model.encoder.in_channels == [256, 192, 768]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.eval()(images)
    assert out["pred_logits"].shape == (2, 10, 3) and out["pred_boxes"].shape == (2, 10, 4)

    targets = make_targets(2, 3)
    losses = RTDETRCriterion(3, HungarianMatcher())(model.train()(images, targets), targets)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    assert model.backbone.learnable_downsample.weight.grad.abs().sum() > 0

    frozen = build_model(num_classes=3, train_backbone=False, **TINY_FAN)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.decoder.parameters())


@pytest.mark.slow
def test_onnx_export_with_fan_tiny_matches_pytorch(tiny_model):
    model = tiny_model(num_classes=3, **TINY_FAN).deploy()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 64, 64),),
        buffer,
        opset_version=17,
        input_names=["inputs"],
        output_names=["pred_logits", "pred_boxes"],
        dynamic_axes={"inputs": {0: "batch", 2: "height", 3: "width"}},
        dynamo=False,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 64, 64), (1, 3, 96, 128)]:
        images = torch.rand(*shape)
        logits, boxes = session.run(None, {"inputs": images.numpy()})
        with torch.no_grad():
            expected = model(images)
        assert abs(torch.from_numpy(logits) - expected["pred_logits"]).max() <= 1e-4
        assert abs(torch.from_numpy(boxes) - expected["pred_boxes"]).max() <= 1e-4

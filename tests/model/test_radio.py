"""RADIO v2, the frozen foundation model: sizes, checkpoints, frozen behaviour, and its outputs against
transformers' RadioModel."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from rtdetr.errors import UserError
from rtdetr.model.radio import GRID, PATCH, SIZES, build_radio, load_radio

TINY = {"width": 64, "depth": 2, "heads": 4, "grid": 16}

# parameters of RADIO b/l/h: timm's ViT-B/L/H-16 blocks (with layer scale) + the CPE generator
# (patch Linear 768 x D, a 128 x 128 x D position grid, 8 prefix tokens)
RECORDED = {"radio_v2-b": 98_251_776, "radio_v2-l": 319_930_368, "radio_v2-h": 651_724_800}
TIMM = {
    "radio_v2-b": "vit_base_patch16_224",
    "radio_v2-l": "vit_large_patch16_224",
    "radio_v2-h": "vit_huge_patch14_224",
}  # fmt: skip  (huge: timm names it by 14 px patches)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_sizes_have_the_parameters_of_timm_vits_plus_the_cpe_tensors(name):
    with torch.device("meta"):
        ours = build_radio(name)
        vit = timm.create_model(TIMM[name], pretrained=False, init_values=1.0, num_classes=0)
    width = SIZES[name].width
    blocks = sum(p.numel() for p in vit.blocks.parameters())
    cpe = 3 * PATCH * PATCH * width + GRID * GRID * width + 8 * width
    count = sum(p.numel() for p in ours.parameters())
    assert count == blocks + cpe == RECORDED[name]
    assert ours.summary_dim == 3 * width


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = build_radio("radio_v2-b", **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def test_a_published_style_checkpoint_loads_with_nothing_missing_and_a_misfit_is_one_line(tmp_path):
    source = _tiny(0)
    state = {f"radio_model.model.{k}".replace("gamma", "grandma"): v for k, v in source.state_dict().items()}
    state["radio_model.input_conditioner.norm_mean"] = torch.zeros(3, 1, 1)  # not the model's: ignored
    torch.save({"state_dict": state}, tmp_path / "radio.pth")
    save_file({k.replace("radio_model.model.", "base_model."): v.contiguous() for k, v in state.items()},
              str(tmp_path / "radio.safetensors"))  # fmt: skip
    for file in ("radio.pth", "radio.safetensors"):
        target = _tiny(1)
        load_radio(target, tmp_path / file)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (file, key)
    narrow = build_radio("radio_v2-b", **{**TINY, "width": 32})
    with pytest.raises(
        UserError, match=r"^model.frozen_fm.checkpoint: .*radio.pth does not fit RADIO of width 32"
    ) as err:
        load_radio(narrow, tmp_path / "radio.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="file not found"):
        load_radio(narrow, tmp_path / "absent.pth")


def test_radio_stays_frozen_and_in_eval_mode():
    model = _tiny()
    model.train()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    images = torch.randn(2, 3, 96, 128)
    summary, features = model(images)
    again = model(images)
    assert summary.shape == (2, 3 * 64) and features.shape == (2, 64, 6, 8)
    assert torch.equal(summary, again[0]) and torch.equal(features, again[1])


def test_outputs_equal_transformers_radio_model():
    from transformers import RadioConfig, RadioModel

    config = RadioConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_img_size=16 * PATCH,
                         num_cls_tokens=4, num_registers=4, summary_idxs=[0, 1, 2], layerscale_value=1.0)  # fmt: skip
    torch.manual_seed(3)
    hf = RadioModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    ours = build_radio("radio_v2-b", **TINY)
    from rtdetr.model.radio import radio_state_dict

    ours.load_state_dict(radio_state_dict(hf.state_dict()), strict=False)
    state = radio_state_dict(hf.state_dict())
    assert set(ours.state_dict()) <= set(state)
    images = torch.rand(2, 3, 96, 160)  # a 6 x 10 patch grid: the position grid resized and cropped
    normalised = hf.input_conditioner(images)
    with torch.no_grad():
        expected = hf(images)
        summary, features = ours(normalised)
    torch.testing.assert_close(summary, expected.summary, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), expected.features, atol=1e-4, rtol=1e-4)

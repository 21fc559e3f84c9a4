"""Checkpoint converters: original RT-DETR names, transformers names and configs."""

from __future__ import annotations

import pytest
import torch

from rtdetr.model.convert_hf import (
    hf_state_dict_to_ours,
    model_args_from_hf_config,
    original_state_dict_to_ours,
)


def test_original_checkpoint_layouts_load(tiny_model):
    model = tiny_model()
    state = model.state_dict()
    wrapped = {f"module.{k}": v for k, v in state.items()}
    for checkpoint in (state, {"model": state}, {"ema": {"module": wrapped}, "model": {}}):
        converted = original_state_dict_to_ours(checkpoint)
        assert converted.keys() == state.keys()
        assert all(torch.equal(converted[k], state[k]) for k in state)


def test_original_v2_names_are_mapped(tiny_model):
    model = tiny_model()
    v2 = {}
    for key, value in model.state_dict().items():
        key = key.replace("encoder.input_proj.0.0.", "encoder.input_proj.0.conv.")
        key = key.replace("encoder.input_proj.0.1.", "encoder.input_proj.0.norm.")
        key = key.replace("decoder.enc_output.0.", "decoder.enc_output.proj.")
        v2[key] = value
    v2["decoder.anchors"] = torch.zeros(1, 10, 4)
    v2["decoder.valid_mask"] = torch.ones(1, 10, 1, dtype=torch.bool)
    v2["decoder.decoder.layers.0.cross_attn.num_points_scale"] = torch.ones(12)
    model.load_state_dict(original_state_dict_to_ours(v2), strict=True)


def test_unknown_transformers_keys_are_listed():
    state = {"model.enc_score_head.weight": torch.zeros(2, 4), "model.mystery.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="model.mystery.weight"):
        hf_state_dict_to_ours(state)


def test_unsupported_transformers_config_lists_every_problem():
    import transformers

    config = transformers.RTDetrConfig(normalize_before=True, learn_initial_query=True)
    with pytest.raises(ValueError) as error:
        model_args_from_hf_config(config)
    assert "normalize_before" in str(error.value) and "learn_initial_query" in str(error.value)

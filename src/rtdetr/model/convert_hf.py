"""Weight and config conversion from Hugging Face transformers' RT-DETR and the original RT-DETR code.

Our parameter names follow the original RT-DETR v1 code, so `original_state_dict_to_ours` is close to
an identity. `hf_state_dict_to_ours` / `ours_state_dict_to_hf` rename transformers'
`RTDetrForObjectDetection` tensors (ResNet-vd backbone) and fuse/split the q/k/v projections;
`model_args_from_hf_config` turns an `RTDetrConfig` into `build_model` keyword arguments.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

_BRANCHES = "abc"

# (transformers template, our template); {name} matches one dotted component, {rest} the remainder.
_HF_RULES: list[tuple[str, str]] = [
    (
        "model.backbone.model.embedder.embedder.{k}.convolution.{rest}",
        "backbone.conv1.conv1_{k1}.conv.{rest}",
    ),
    (
        "model.backbone.model.embedder.embedder.{k}.normalization.{rest}",
        "backbone.conv1.conv1_{k1}.norm.{rest}",
    ),
    (
        "model.backbone.model.encoder.stages.{s}.layers.{b}.layer.{j}.convolution.{rest}",
        "backbone.res_layers.{s}.blocks.{b}.branch2{jl}.conv.{rest}",
    ),
    (
        "model.backbone.model.encoder.stages.{s}.layers.{b}.layer.{j}.normalization.{rest}",
        "backbone.res_layers.{s}.blocks.{b}.branch2{jl}.norm.{rest}",
    ),
    (
        "model.backbone.model.encoder.stages.{s}.layers.{b}.shortcut.1.convolution.{rest}",
        "backbone.res_layers.{s}.blocks.{b}.short.conv.conv.{rest}",
    ),
    (
        "model.backbone.model.encoder.stages.{s}.layers.{b}.shortcut.1.normalization.{rest}",
        "backbone.res_layers.{s}.blocks.{b}.short.conv.norm.{rest}",
    ),
    (
        "model.backbone.model.encoder.stages.{s}.layers.{b}.shortcut.convolution.{rest}",
        "backbone.res_layers.{s}.blocks.{b}.short.conv.{rest}",
    ),
    (
        "model.backbone.model.encoder.stages.{s}.layers.{b}.shortcut.normalization.{rest}",
        "backbone.res_layers.{s}.blocks.{b}.short.norm.{rest}",
    ),
    ("model.encoder_input_proj.{rest}", "encoder.input_proj.{rest}"),
    ("model.encoder.aifi.{i}.layers.{l}.self_attn.{rest}", "encoder.encoder.{i}.layers.{l}.self_attn.{rest}"),
    (
        "model.encoder.aifi.{i}.layers.{l}.self_attn_layer_norm.{rest}",
        "encoder.encoder.{i}.layers.{l}.norm1.{rest}",
    ),
    (
        "model.encoder.aifi.{i}.layers.{l}.final_layer_norm.{rest}",
        "encoder.encoder.{i}.layers.{l}.norm2.{rest}",
    ),
    ("model.encoder.aifi.{i}.layers.{l}.mlp.fc1.{rest}", "encoder.encoder.{i}.layers.{l}.linear1.{rest}"),
    ("model.encoder.aifi.{i}.layers.{l}.mlp.fc2.{rest}", "encoder.encoder.{i}.layers.{l}.linear2.{rest}"),
    ("model.encoder.lateral_convs.{rest}", "encoder.lateral_convs.{rest}"),
    ("model.encoder.fpn_blocks.{rest}", "encoder.fpn_blocks.{rest}"),
    ("model.encoder.downsample_convs.{rest}", "encoder.downsample_convs.{rest}"),
    ("model.encoder.pan_blocks.{rest}", "encoder.pan_blocks.{rest}"),
    ("model.decoder_input_proj.{i}.0.{rest}", "decoder.input_proj.{i}.conv.{rest}"),
    ("model.decoder_input_proj.{i}.1.{rest}", "decoder.input_proj.{i}.norm.{rest}"),
    ("model.denoising_class_embed.{rest}", "decoder.denoising_class_embed.{rest}"),
    ("model.enc_output.{rest}", "decoder.enc_output.{rest}"),
    ("model.enc_score_head.{rest}", "decoder.enc_score_head.{rest}"),
    ("model.enc_bbox_head.{rest}", "decoder.enc_bbox_head.{rest}"),
    ("model.decoder.query_pos_head.{rest}", "decoder.query_pos_head.{rest}"),
    ("model.decoder.layers.{i}.self_attn.{rest}", "decoder.decoder.layers.{i}.self_attn.{rest}"),
    ("model.decoder.layers.{i}.self_attn_layer_norm.{rest}", "decoder.decoder.layers.{i}.norm1.{rest}"),
    ("model.decoder.layers.{i}.encoder_attn.{rest}", "decoder.decoder.layers.{i}.cross_attn.{rest}"),
    ("model.decoder.layers.{i}.encoder_attn_layer_norm.{rest}", "decoder.decoder.layers.{i}.norm2.{rest}"),
    ("model.decoder.layers.{i}.mlp.fc1.{rest}", "decoder.decoder.layers.{i}.linear1.{rest}"),
    ("model.decoder.layers.{i}.mlp.fc2.{rest}", "decoder.decoder.layers.{i}.linear2.{rest}"),
    ("model.decoder.layers.{i}.final_layer_norm.{rest}", "decoder.decoder.layers.{i}.norm3.{rest}"),
    ("model.decoder.class_embed.{rest}", "decoder.dec_score_head.{rest}"),
    ("model.decoder.bbox_embed.{rest}", "decoder.dec_bbox_head.{rest}"),
    ("class_embed.{rest}", "decoder.dec_score_head.{rest}"),  # older transformers also kept top-level copies
    ("bbox_embed.{rest}", "decoder.dec_bbox_head.{rest}"),
]

# Derived placeholders: our {k1} = HF {k} + 1, our {jl} = "abc"[HF {j}].
_DERIVED = {"k1": ("k", lambda v: str(int(v) + 1), lambda v: str(int(v) - 1)),
            "jl": ("j", lambda v: _BRANCHES[int(v)], lambda v: str(_BRANCHES.index(v)))}  # fmt: skip


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    out = []
    for part in parts:
        if part == "{rest}":
            out.append(r"(?P<rest>.+)")
        elif part.startswith("{"):
            name = part[1:-1]
            out.append(rf"(?P<{name}>[a-c]|\d+)" if name in ("k1", "jl") else rf"(?P<{name}>\d+)")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + "$")


def _rename(key: str, rules: list[tuple[re.Pattern, str]], forward: bool) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match is None:
            continue
        values = match.groupdict()
        for derived, (base, to_ours, to_hf) in _DERIVED.items():
            if forward and base in values:
                values[derived] = to_ours(values[base])
            elif not forward and derived in values:
                values[base] = to_hf(values[derived])
        return template.format(**values)
    return None


_FORWARD = [(_pattern(hf), ours) for hf, ours in _HF_RULES]
_BACKWARD = [(_pattern(ours), hf) for hf, ours in _HF_RULES[:-2]]


# The names of files saved by transformers (the hub's layout, older releases) -> its in-memory names.
_FILE_ALIASES = [
    (re.compile(r"^model\.encoder\.encoder\.(\d+)\.layers\."), r"model.encoder.aifi.\1.layers."),
    (re.compile(r"\.layers\.(\d+)\.(fc1|fc2)\."), r".layers.\1.mlp.\2."),
    (re.compile(r"\.self_attn\.out_proj\."), r".self_attn.o_proj."),
]


def _in_memory_name(key: str) -> str:
    for pattern, replacement in _FILE_ALIASES:
        key = pattern.sub(replacement, key)
    return key


def hf_state_dict_to_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `RTDetrForObjectDetection` weights (ResNet-vd backbone) -> our RTDETR's.

    Takes the in-memory `state_dict()` or a saved `model.safetensors` (whose names follow the hub's
    older layout). q/k/v projections are fused into nn.MultiheadAttention's `in_proj_weight`/
    `in_proj_bias`. Raises ValueError listing every key that has no counterpart.
    """
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        new = _rename(_in_memory_name(key), _FORWARD, forward=True)
        if new is None:
            unknown.append(key)
        elif new in renamed:
            if not torch.equal(renamed[new], value):
                raise ValueError(f"{key} duplicates {new} with different values")
        else:
            renamed[new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} transformers keys have no RT-DETR counterpart: {unknown}")

    out: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        match = re.match(r"(.*\.self_attn)\.([qkvo])_proj\.(weight|bias)$", key)
        if match is None:
            out[key] = value
            continue
        prefix, which, kind = match.groups()
        if which == "o":
            out[f"{prefix}.out_proj.{kind}"] = value
        elif which == "q":
            parts = [renamed.get(f"{prefix}.{p}_proj.{kind}") for p in "qkv"]
            if any(p is None for p in parts):
                raise ValueError(f"incomplete q/k/v projections under {prefix}")
            out[f"{prefix}.in_proj_{kind}"] = torch.cat(parts, 0)
    return out


def ours_state_dict_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `hf_state_dict_to_ours` (ResNet-vd models); in_proj is split back into q/k/v."""
    split: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = re.match(r"(.*\.self_attn)\.(in_proj|out_proj)[._](weight|bias)$", key)
        if match is None:
            split[key] = value
        elif match.group(2) == "out_proj":
            split[f"{match.group(1)}.o_proj.{match.group(3)}"] = value
        else:
            for name, chunk in zip("qkv", value.chunk(3, 0)):
                split[f"{match.group(1)}.{name}_proj.{match.group(3)}"] = chunk
    out, unknown = {}, []
    for key, value in split.items():
        new = _rename(key, _BACKWARD, forward=False)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} keys have no transformers counterpart: {unknown}")
    return out


def model_args_from_hf_config(config: Any) -> dict[str, Any]:
    """`build_model` keyword arguments reproducing a transformers `RTDetrConfig` (ResNet-vd backbone).

    The AIFI position embedding is set to "h_major", which is what transformers >= 5 computes (the
    original code's "w_major" differs only on non-square maps). Settings our model does not implement
    raise ValueError listing all of them.
    """
    bb = config.backbone_config
    problems = []
    if getattr(config, "use_timm_backbone", False) or bb is None or bb.model_type != "rt_detr_resnet":
        problems.append("only the RTDetrResNet (ResNet-vd) backbone is supported")
        bb = None
    depth = None
    if bb is not None:
        layout = (tuple(bb.depths), bb.layer_type)
        depth = {((2, 2, 2, 2), "basic"): 18, ((3, 4, 6, 3), "basic"): 34,
                 ((3, 4, 6, 3), "bottleneck"): 50, ((3, 4, 23, 3), "bottleneck"): 101}.get(layout)  # fmt: skip
        expansion = 4 if bb.layer_type == "bottleneck" else 1
        if depth is None:
            problems.append(f"backbone depths/layer_type {layout} is not a ResNet-18/34/50/101")
        if bb.embedding_size != 64 or list(bb.hidden_sizes) != [64 * expansion * 2**i for i in range(4)]:
            problems.append(f"non-standard backbone widths {bb.embedding_size}, {bb.hidden_sizes}")
        if bb.hidden_act != "relu" or bb.downsample_in_bottleneck or bb.downsample_in_first_stage:
            problems.append("backbone must use relu, stride on the 3x3 and no first-stage downsampling")
    checks = {
        "normalize_before": (config.normalize_before, False),
        "with_box_refine": (config.with_box_refine, True),
        "learn_initial_query": (config.learn_initial_query, False),
        "layer_norm_eps": (config.layer_norm_eps, 1e-5),
        "batch_norm_eps": (config.batch_norm_eps, 1e-5),
        "decoder_attention_heads": (config.decoder_attention_heads, config.encoder_attention_heads),
        "activation_dropout": (config.activation_dropout, 0.0),
        "attention_dropout": (config.attention_dropout, config.dropout),
    }
    problems += [
        f"{name}={value!r} (need {want!r})" for name, (value, want) in checks.items() if value != want
    ]
    if problems:
        raise ValueError("unsupported transformers RT-DETR config: " + "; ".join(problems))
    if config.eval_size is not None:
        logger.warning("eval_size is ignored: transformers then drops the AIFI position embedding in eval")
    return {
        "backbone": f"resnet_{depth}vd",
        "freeze_norm": config.freeze_backbone_batch_norms,
        "return_interm_indices": [i - 1 for i in bb.out_indices],
        "num_classes": config.num_labels,
        "num_queries": config.num_queries,
        "num_feature_levels": config.num_feature_levels,
        "feat_strides": list(config.feat_strides),
        "feat_channels": list(config.decoder_in_channels),
        "use_encoder_idx": list(config.encode_proj_layers),
        "hidden_dim": config.d_model,
        "encoder_hidden_dim": config.encoder_hidden_dim,
        "nheads": config.encoder_attention_heads,
        "dropout_ratio": config.dropout,
        "enc_layers": config.encoder_layers,
        "dim_feedforward": config.encoder_ffn_dim,
        "pe_temperature": config.positional_encoding_temperature,
        "expansion": config.hidden_expansion,
        "depth_mult": 1.0,
        "enc_act": config.encoder_activation_function,
        "act": config.activation_function,
        "dec_layers": config.decoder_layers,
        "dec_dim_feedforward": config.decoder_ffn_dim,
        "dec_act": config.decoder_activation_function,
        "num_points": config.decoder_n_points,
        "dn_number": config.num_denoising,
        "label_noise_ratio": config.label_noise_ratio,
        "box_noise_scale": config.box_noise_scale,
        "eval_idx": -1,
        "pe_order": "h_major",
    }


def original_state_dict_to_ours(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Original RT-DETR (v1, and v2 with default settings) checkpoint -> our RTDETR's state dict.

    Accepts the plain state dict, {"model": ...} or {"ema": {"module": ...}} (EMA preferred), with an
    optional "module." prefix. v2 names (`input_proj.N.conv/norm` in the encoder, `enc_output.proj/norm`)
    are mapped to v1's; v2 buffers (`anchors`, `valid_mask`, `num_points_scale`) are dropped.
    """
    state: Mapping[str, Any] = checkpoint
    if isinstance(state.get("ema"), Mapping):
        state = state["ema"].get("module", state["ema"])
    elif isinstance(state.get("model"), Mapping):
        state = state["model"]
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = key.removeprefix("module.")
        if key in ("decoder.anchors", "decoder.valid_mask") or key.endswith("num_points_scale"):
            continue
        key = re.sub(r"^encoder\.input_proj\.(\d+)\.conv\.", r"encoder.input_proj.\1.0.", key)
        key = re.sub(r"^encoder\.input_proj\.(\d+)\.norm\.", r"encoder.input_proj.\1.1.", key)
        key = key.replace("decoder.enc_output.proj.", "decoder.enc_output.0.")
        key = key.replace("decoder.enc_output.norm.", "decoder.enc_output.1.")
        out[key] = value
    return out


TAO_PREFIX = "model.model."  # TAO's Lightning module holds RTDETRModel, which holds the RT-DETR


def is_tao_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is a TAO RT-DETR checkpoint's (keys ``model.model.{backbone,encoder,decoder}.*``)."""
    return any(isinstance(k, str) and k.startswith(TAO_PREFIX) for k in state)


def tao_state_dict_to_ours(
    state: Mapping[str, Any], adapt_backbone: Callable[[dict], dict] | None = None
) -> dict[str, torch.Tensor]:
    """A TAO RT-DETR checkpoint's state dict -> our RTDETR's.

    TAO's encoder and decoder keep the original RT-DETR's names (mapped as for the original code's
    checkpoints); its backbone keys go through ``adapt_backbone`` (the backbone's
    ``adapt_state_dict``, for families whose names differ from ours). Keys outside
    ``model.model.`` (TAO's frozen foundation model, optimizer state) are left out.
    """
    plain = {
        k[len(TAO_PREFIX) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(TAO_PREFIX)
    }
    ours = original_state_dict_to_ours(plain)
    if adapt_backbone is not None:
        backbone = {k[len("backbone.") :]: v for k, v in ours.items() if k.startswith("backbone.")}
        ours = {k: v for k, v in ours.items() if not k.startswith("backbone.")}
        ours.update({f"backbone.{k}": v for k, v in adapt_backbone(backbone).items()})
    return ours

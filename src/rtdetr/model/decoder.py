"""RT-DETR decoder: query selection from the encoder memory, deformable decoder layers, box refinement.

Parameter names follow the original RT-DETR v1 code (`input_proj.0.conv`, `decoder.layers.0.cross_attn`,
`enc_output`, `enc_score_head`, `enc_bbox_head`, `dec_score_head`, `dec_bbox_head`, `query_pos_head`,
`denoising_class_embed`).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr.errors import UserError
from rtdetr.model.deform_attn import MSDeformableAttention
from rtdetr.model.denoising import contrastive_denoising_group, inverse_sigmoid
from rtdetr.model.layers import contiguous_grad, get_activation

ANCHOR_EPS = 1e-2
ANCHOR_GRID_SIZE = 0.05


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def generate_anchors(
    spatial_shapes: Sequence[tuple[int, int]],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor logits [1, S, 4] (cxcywh; centres at cell centres, wh 0.05 * 2^level) and valid mask [1, S, 1].

    Anchors with any coordinate outside (0.01, 0.99) are invalid; their logits are float32 max
    (sigmoid -> 1), which keeps exported graphs free of inf. Computed in `dtype` (at least float32).
    """
    dtype = torch.promote_types(dtype, torch.float32)
    anchors = []
    for level, (h, w) in enumerate(spatial_shapes):
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, dtype=dtype, device=device),
            torch.arange(w, dtype=dtype, device=device),
            indexing="ij",
        )
        centres = torch.stack([(grid_x + 0.5) / w, (grid_y + 0.5) / h], -1)
        wh = torch.full_like(centres, ANCHOR_GRID_SIZE * 2.0**level)
        anchors.append(torch.cat([centres, wh], -1).reshape(-1, 4))
    anchors = torch.cat(anchors)[None]
    valid = ((anchors > ANCHOR_EPS) & (anchors < 1 - ANCHOR_EPS)).all(-1, keepdim=True)
    logits = torch.log(anchors / (1 - anchors))
    logits = torch.where(valid, logits, torch.full_like(logits, torch.finfo(torch.float32).max))
    return logits, valid


class InputTooSmall(UserError, ValueError):
    """An input whose feature maps have fewer tokens than the decoder has queries."""


def denoising_self_attention(
    attn: nn.MultiheadAttention, qk: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor, num_dn: int
) -> torch.Tensor:
    """``attn(qk, qk, value, attn_mask=attn_mask)`` for a batch whose first ``num_dn`` queries are
    denoising ones, with the denoising group's mask (True = may not attend): the matching queries
    attend to the matching ones only, the denoising queries to what their mask rows allow. Computed
    as two attentions, the matching one without a mask: it skips the matching queries' scores against
    the denoising keys, which one masked attention over all queries computes only to discard them,
    forward and backward (docs/benchmarks.md, "Training throughput")."""
    c, heads = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q, k = (
        F.linear(qk, w[: 2 * c], None if b is None else b[: 2 * c])
        .unflatten(-1, (2, heads, -1))
        .permute(2, 0, 3, 1, 4)
    )  # [2, B, heads, N, head_dim]
    v = (
        F.linear(value, w[2 * c :], None if b is None else b[2 * c :])
        .unflatten(-1, (heads, -1))
        .transpose(1, 2)
    )
    p = attn.dropout if attn.training else 0.0
    match = F.scaled_dot_product_attention(q[:, :, num_dn:], k[:, :, num_dn:], v[:, :, num_dn:], dropout_p=p)
    dn = F.scaled_dot_product_attention(q[:, :, :num_dn], k, v, attn_mask=~attn_mask[:num_dn], dropout_p=p)
    return attn.out_proj(torch.cat([dn, match], 2).transpose(1, 2).flatten(2))


class TransformerDecoderLayer(nn.Module):
    """Post-norm: self-attention -> deformable cross-attention -> FFN, each with add & LayerNorm."""

    def __init__(
        self,
        d_model: int = 256,
        n_head: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        n_levels: int = 3,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = get_activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        attn_mask: torch.Tensor | None,
        query_pos: torch.Tensor,
        num_denoising: int = 0,
    ) -> torch.Tensor:
        """tgt, query_pos [B, Q, C]; reference_points [B, Q, 1, 4]; memory [B, S, C] -> [B, Q, C].
        With ``num_denoising``, the first that many queries are denoising ones and ``attn_mask`` is
        the denoising group's (see denoising_self_attention)."""
        q = k = tgt + query_pos
        if num_denoising:
            attn = denoising_self_attention(self.self_attn, q, tgt, attn_mask, num_denoising)
        else:
            attn = self.self_attn(q, k, value=tgt, attn_mask=attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        cross = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes)
        tgt = self.norm2(tgt + self.dropout2(cross))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, eval_idx: int = -1, **layer_kwargs):
        super().__init__()
        if not -num_layers <= eval_idx < num_layers:
            raise ValueError(f"eval_idx {eval_idx} out of range for {num_layers} decoder layers")
        self.layers = nn.ModuleList(TransformerDecoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.eval_idx = eval_idx % num_layers

    def forward(
        self,
        tgt: torch.Tensor,
        ref_unact: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        bbox_heads: nn.ModuleList,
        score_heads: nn.ModuleList,
        query_pos_head: nn.Module,
        attn_mask: torch.Tensor | None = None,
        num_denoising: int = 0,
        image_query: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer boxes [B, Q, 4] (normalised cxcywh) and logits [B, Q, C].

        Training: every layer; layers > 0 predict from the undetached previous box ("look forward
        twice") while the next layer's reference is detached. Eval: stops at `eval_idx`, returns one.
        ``image_query`` [B, 1, C] joins every layer's queries last, with the whole image as its
        reference box, and leaves after the layer (the denoising mask lets every query see it).
        """
        boxes, logits = [], []
        ref_detached = ref_unact.sigmoid()
        ref = ref_detached
        if image_query is not None:
            whole = image_query.new_tensor([0.5, 0.5, 1.0, 1.0]).expand(image_query.shape[0], 1, 4)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1, 0, 1), value=False)
        for i, layer in enumerate(self.layers):
            queries, refs = tgt, ref_detached
            if image_query is not None:
                queries, refs = torch.cat([tgt, image_query], 1), torch.cat([ref_detached, whole], 1)
            tgt = layer(
                queries,
                refs[:, :, None],
                memory,
                spatial_shapes,
                attn_mask,
                query_pos_head(refs),
                num_denoising,
            )
            if image_query is not None:
                tgt = tgt[:, :-1]
            delta = bbox_heads[i](tgt)
            new_ref = (delta + inverse_sigmoid(ref_detached)).sigmoid()
            if self.training:
                logits.append(score_heads[i](tgt))
                boxes.append(new_ref if i == 0 else (delta + inverse_sigmoid(ref)).sigmoid())
            elif i == self.eval_idx:
                logits.append(score_heads[i](tgt))
                boxes.append(new_ref)
                break
            ref = new_ref
            ref_detached = new_ref.detach() if self.training else new_ref
        return boxes, logits


class RTDETRDecoder(nn.Module):
    """Encoder maps -> detections. See `forward` for the output contract."""

    def __init__(
        self,
        num_classes: int = 80,
        hidden_dim: int = 256,
        num_queries: int = 300,
        feat_channels: Sequence[int] = (256, 256, 256),
        feat_strides: Sequence[int] = (8, 16, 32),
        num_levels: int = 3,
        num_points: int = 4,
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        eval_idx: int = -1,
        aux_loss: bool = True,
        summary_dim: int | None = None,
    ):
        super().__init__()
        if num_levels < len(feat_channels):
            raise ValueError(f"num_levels {num_levels} < number of encoder maps {len(feat_channels)}")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.feat_strides = list(feat_strides)
        self.num_levels = num_levels
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.aux_loss = aux_loss
        self._anchor_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

        self.input_proj = nn.ModuleList()
        for ch in feat_channels:
            self.input_proj.append(self._proj(ch, 1, 1))
        ch = feat_channels[-1]
        for _ in range(num_levels - len(feat_channels)):  # extra levels: 3x3 stride-2 on the last map
            self.input_proj.append(self._proj(ch, 3, 2))
            ch = hidden_dim

        self.decoder = TransformerDecoder(
            num_layers,
            eval_idx,
            d_model=hidden_dim,
            n_head=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=activation,
            n_levels=num_levels,
            n_points=num_points,
        )
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)
        self.enc_output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, 4, num_layers=3) for _ in range(num_layers)
        )
        # a frozen foundation model's image summary -> one extra query in every decoder layer
        self.summary_proj = (
            nn.Sequential(nn.Linear(summary_dim, hidden_dim), nn.LayerNorm(hidden_dim))
            if summary_dim
            else None
        )
        self._reset_parameters()

    def _proj(self, ch_in: int, kernel_size: int, stride: int) -> nn.Sequential:
        conv = nn.Conv2d(ch_in, self.hidden_dim, kernel_size, stride, padding=kernel_size // 2, bias=False)
        return nn.Sequential(OrderedDict([("conv", conv), ("norm", nn.BatchNorm2d(self.hidden_dim))]))

    def _reset_parameters(self) -> None:
        prior_bias = -math.log((1 - 0.01) / 0.01)  # class prior 0.01; box heads start at the reference
        for score_head, bbox_head in zip(
            [self.enc_score_head, *self.dec_score_head], [self.enc_bbox_head, *self.dec_bbox_head]
        ):
            nn.init.constant_(score_head.bias, prior_bias)
            nn.init.constant_(bbox_head.layers[-1].weight, 0.0)
            nn.init.constant_(bbox_head.layers[-1].bias, 0.0)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        for layer in self.query_pos_head.layers:
            nn.init.xavier_uniform_(layer.weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight)

    def _anchors(self, spatial_shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype):
        """Anchors for these feature sizes, cached per sizes/device/dtype (a plain dict, not a buffer)."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return generate_anchors(spatial_shapes, device, dtype)
        key = (tuple(spatial_shapes), str(device), dtype)
        if key not in self._anchor_cache:
            with torch.inference_mode(False):  # normal tensors: usable by autograd later on
                self._anchor_cache[key] = generate_anchors(spatial_shapes, device, dtype)
        return self._anchor_cache[key]

    def _flatten_levels(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        srcs = [proj(feat) for proj, feat in zip(self.input_proj, feats)]
        for proj in self.input_proj[len(feats) :]:
            srcs.append(proj(feats[-1] if len(srcs) == len(feats) else srcs[-1]))
        srcs = [contiguous_grad(s) for s in srcs]  # their gradients: slices of the concatenation's
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]  # traced sizes stay symbolic in ONNX export
        return torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1), shapes

    def forward(
        self,
        feats: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        features: dict[str, object] | None = None,
        summary: torch.Tensor | None = None,
    ) -> dict:
        """feats: encoder maps [B, C_i, H_i, W_i]; targets (training, for denoising): per image
        "labels" [N] int64 and "boxes" [N, 4] normalised cxcywh; summary [B, summary_dim]: a frozen
        foundation model's image summary (with ``summary_dim``), appended through ``summary_proj``
        as one query (reference box: the whole image) to every decoder layer's queries and removed
        after the layer.

        Returns `pred_logits` [B, Q, num_classes] (raw logits) and `pred_boxes` [B, Q, 4] (normalised
        cxcywh) of the final layer in training and of layer `eval_idx` in eval. In training also:
        - `aux_outputs` (aux_loss only): one {pred_logits, pred_boxes} per non-final decoder layer;
        - `enc_outputs` (aux_loss only): {pred_logits, pred_boxes} of the Q queries picked from the
          encoder memory (the encoder auxiliary loss);
        - with denoising (num_denoising > 0 and targets with boxes): `dn_outputs`, one
          {pred_logits [B, N_dn, C], pred_boxes [B, N_dn, 4]} per decoder layer (only the final layer
          when aux_loss is off), and `dn_meta`: `dn_positive_idx` (per image, LongTensor of the positive
          denoising query indices, group-major, so they pair with `targets[i]` tiled `dn_num_group`
          times), `dn_num_group` (int), `dn_num_split` ([N_dn, Q]).

        With a `features` dict, the Q queries selected from the encoder memory are also stored there
        (for distillation): "enc_topk_memory" [B, Q, hidden_dim] (their enc_output rows),
        "enc_topk_logits" [B, Q, num_classes] (raw) and "enc_topk_boxes" [B, Q, 4] (normalised cxcywh).
        """
        memory, shapes = self._flatten_levels(feats)
        candidates = int(memory.shape[1])  # a check only: in a trace it reads the example input (no graph op)
        if candidates < self.num_queries:
            maps = " + ".join(f"{int(h)}x{int(w)}" for h, w in shapes)
            raise InputTooSmall(
                f"the input is too small for this model: its feature maps ({maps}) give {candidates} query "
                f"candidates, fewer than num_queries {self.num_queries}; use a larger input_width/input_height"
            )
        dn = None
        if self.training and self.num_denoising > 0 and targets is not None:
            dn = contrastive_denoising_group(
                targets,
                self.num_classes,
                self.num_queries,
                self.denoising_class_embed,
                self.num_denoising,
                self.label_noise_ratio,
                self.box_noise_scale,
            )

        # query selection: top-Q memory tokens by their best class logit
        anchors, valid = self._anchors(shapes, memory.device, memory.dtype)
        masked = valid.to(memory.dtype) * memory
        # in training only the Q selected rows of enc_output and the score head receive gradients:
        # select without autograd, then run the two heads again on those rows, so that their backward
        # costs Q rows instead of S (e.g. 300 against 2100 at 320x320)
        recompute = self.training and torch.is_grad_enabled()
        with torch.no_grad() if recompute else contextlib.nullcontext():
            output_memory = self.enc_output(masked)
            enc_logits = self.enc_score_head(output_memory)
            topk = torch.topk(enc_logits.max(-1).values, self.num_queries, dim=1).indices
        if recompute:
            topk_memory = self.enc_output(masked.gather(1, topk[..., None].expand(-1, -1, masked.shape[-1])))
            enc_topk_logits = self.enc_score_head(topk_memory)
        else:
            topk_memory = output_memory.gather(1, topk[..., None].expand(-1, -1, output_memory.shape[-1]))
            enc_topk_logits = enc_logits.gather(1, topk[..., None].expand(-1, -1, enc_logits.shape[-1]))
        # the box head is row-wise: run it on the Q selected tokens only, not on all S
        topk_anchors = anchors.expand(topk.shape[0], -1, -1).gather(1, topk[..., None].expand(-1, -1, 4))
        # the invalid anchors' huge logit is added as a Where, not through the Add: the same result
        # (sigmoid 1, no gradient), but INT8 calibration, which histograms every Add's inputs, sees
        # only sane values (the huge one made ONNX Runtime's histogram fail for inputs over 400 px)
        topk_valid = valid.expand(topk.shape[0], -1, -1).gather(1, topk[..., None])
        ref_unact = self.enc_bbox_head(topk_memory) + torch.where(topk_valid, topk_anchors, 0.0)
        ref_unact = torch.where(topk_valid, ref_unact, topk_anchors)
        enc_topk_boxes = ref_unact.sigmoid()
        if features is not None:
            features.update(
                enc_topk_memory=topk_memory, enc_topk_logits=enc_topk_logits, enc_topk_boxes=enc_topk_boxes
            )
        tgt = topk_memory.detach()
        attn_mask, num_denoising = None, 0
        if dn is not None:
            ref_unact = torch.cat([dn.ref_unact, ref_unact], 1)
            tgt = torch.cat([dn.embeds, tgt], 1)
            attn_mask, num_denoising = dn.attn_mask, dn.meta["dn_num_split"][0]

        image_query = None
        if self.summary_proj is not None:
            if summary is None:
                raise ValueError("this decoder takes the frozen foundation model's summary")
            image_query = self.summary_proj(summary)[:, None]
        boxes, logits = self.decoder(
            tgt,
            ref_unact.detach(),
            memory,
            shapes,
            self.dec_bbox_head,
            self.dec_score_head,
            self.query_pos_head,
            attn_mask,
            num_denoising,
            image_query,
        )
        if not self.training:
            return {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}

        dn_out = []
        if dn is not None:
            split = dn.meta["dn_num_split"]
            dn_out = [
                {"pred_logits": lg, "pred_boxes": bx}
                for lg, bx in (
                    (lg.split(split, 1)[0], bx.split(split, 1)[0]) for lg, bx in zip(logits, boxes)
                )
            ]
            logits = [lg.split(split, 1)[1] for lg in logits]
            boxes = [bx.split(split, 1)[1] for bx in boxes]
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])
            ]
            out["enc_outputs"] = {"pred_logits": enc_topk_logits, "pred_boxes": enc_topk_boxes}
        if dn is not None:
            out["dn_outputs"] = dn_out if self.aux_loss else dn_out[-1:]
            out["dn_meta"] = dn.meta
        return out

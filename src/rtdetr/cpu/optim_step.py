"""The optimizer step for channels-last weights on the CPU, without copies."""

from __future__ import annotations

import torch

from rtdetr.model.layers import channels_last_dense


def _as_nhwc(t: torch.Tensor) -> None:
    """A channels-last [O, I, kh, kw] tensor becomes the contiguous [O, kh, kw, I] one with the same memory."""
    o, i, h, w = t.shape
    t.set_(t.untyped_storage(), t.storage_offset(), (o, h, w, i), (h * w * i, w * i, i, 1))


def _as_nchw_view(t: torch.Tensor) -> None:
    """The inverse of _as_nhwc."""
    o, h, w, i = t.shape
    t.set_(t.untyped_storage(), t.storage_offset(), (o, i, h, w), (h * w * i, 1, w * i, i))


_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


class InPlaceChannelsLast:
    """A fused optimizer (mixin) whose CPU step updates channels-last weights in place.

    torch's fused CPU kernel makes contiguous copies of tensors that are not contiguous, such as
    channels-last gradients, every step.
    During the update, each channels-last CPU weight, its gradient and its state are viewed as the
    contiguous NHWC tensors their memory holds (metadata only, ``set_``); the closure (forward and
    backward) runs before, and the usual shapes and layouts are back after. The update is the same to
    the bit, and state dicts are unchanged. Not in a distributed run: changing a weight's shape, even
    for a moment, drops the gradient hooks that DDP registered on it."""

    def step(self, closure=None):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        viewed = []
        with torch.no_grad():
            try:
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is None or not channels_last_dense(p) or p.device.type != "cpu":
                            continue
                        tensors = [p, p.grad, *self._state_tensors(p)]
                        if all(channels_last_dense(t) and t.shape == p.shape for t in tensors):
                            for t in tensors:
                                _as_nhwc(t)
                            viewed.append(p)
                super().step()
            finally:  # with the state a first step created, in the NHWC shape of its weight
                for p in viewed:
                    for t in {id(t): t for t in (p, p.grad, *self._state_tensors(p))}.values():
                        _as_nchw_view(t)
        return loss

    def _state_tensors(self, p: torch.Tensor) -> list[torch.Tensor]:
        state = self.state.get(p, {})
        return [state[k] for k in _STATE_KEYS if torch.is_tensor(state.get(k))]


_VARIANTS: dict[type, type] = {}


def in_place_variant(kind: type) -> type:
    """``kind`` (a torch optimizer class) with the InPlaceChannelsLast step, under the same name."""
    if kind not in _VARIANTS:
        _VARIANTS[kind] = type(kind.__name__, (InPlaceChannelsLast, kind), {"__doc__": kind.__doc__})
    return _VARIANTS[kind]

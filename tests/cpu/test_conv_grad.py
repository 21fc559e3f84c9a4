"""The GEMM weight gradient of CPU training convolutions: same gradients, only where it applies."""

import pytest
import torch
from torch import nn

from rtdetr.cpu import conv_grad as cpu_conv
from rtdetr.cpu.conv_grad import GemmWeightGradConv2d, use_gemm_weight_grad
from rtdetr.model import build_model

# a small RT-DETR: convolutions of 3 (the stem) to 64 input channels
TINY = dict(
    num_classes=3, backbone="resnet_18vd", hidden_dim=32, feat_channels=[32, 32, 32], nheads=4,
    dim_feedforward=64, dec_dim_feedforward=64, dec_layers=2, num_queries=10, dn_number=4, expansion=0.5,
)  # fmt: skip


@pytest.fixture
def gemm(monkeypatch):
    monkeypatch.setenv(cpu_conv.ENV, "gemm")


def _grads(conv: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor) -> list[torch.Tensor | None]:
    x = x.detach().clone().requires_grad_(x.requires_grad)
    conv.zero_grad(set_to_none=True)
    conv(x).backward(grad_out)
    return [x.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad]


@pytest.mark.parametrize(
    "ch_in, ch_out, kernel, stride, bias, weight_cl, input_cl, input_grad",
    [
        (16, 24, 3, 1, False, True, True, True),
        (16, 8, 3, 2, True, True, True, True),
        (32, 16, 1, 1, False, False, False, True),
        (16, 16, 7, 2, False, False, False, False),  # an input without gradient (images)
        (24, 16, 1, 2, True, True, True, True),
        (16, 24, 3, 1, True, False, True, True),  # mixed layouts: a channels-last activation
        (16, 24, 3, 2, False, True, False, True),  # in a contiguous model, and the reverse
    ],
)
def test_gradients_equal_the_plain_convolution(
    gemm, ch_in, ch_out, kernel, stride, bias, weight_cl, input_cl, input_grad
):
    torch.manual_seed(0)
    plain = nn.Conv2d(ch_in, ch_out, kernel, stride, padding=kernel // 2, bias=bias)
    fast = nn.Conv2d(ch_in, ch_out, kernel, stride, padding=kernel // 2, bias=bias)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, ch_in, 21, 18).requires_grad_(input_grad)
    if weight_cl:
        for m in (plain, fast):
            m.to(memory_format=torch.channels_last)
    if input_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    assert use_gemm_weight_grad(fast) == 1 and type(fast) is GemmWeightGradConv2d
    out = plain(x)
    assert torch.equal(fast(x), out)
    grad_out = torch.randn_like(out)
    for got, want in zip(_grads(fast, x, grad_out), _grads(plain, x, grad_out)):
        assert (got is None) == (want is None)
        if want is not None:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_the_backward_takes_the_gemm_kernel_only_in_cpu_float32_training(gemm):
    from torch.profiler import profile

    conv = nn.Conv2d(16, 16, 3, padding=1)
    use_gemm_weight_grad(conv)
    x = torch.randn(1, 16, 8, 8)
    out = conv(x)
    assert type(out.grad_fn).__name__ == "_Conv2dGemmWeightGradBackward"
    with profile() as prof:
        out.sum().backward()
    assert "aten::_slow_conv2d_backward" in {e.key for e in prof.key_averages()}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the plain module
        assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0"
    conv.weight.requires_grad_(False)  # frozen: nothing to compute
    assert conv(x.requires_grad_()).grad_fn.__class__.__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        assert conv(x).grad_fn is None


def test_model_switch_keeps_names_and_skips_what_it_cannot_take(gemm):
    model = build_model(**TINY)
    names = list(model.state_dict())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    count = use_gemm_weight_grad(model)
    assert list(model.state_dict()) == names
    switched = [m for m in convs if type(m) is GemmWeightGradConv2d]
    assert len(switched) == count > 0
    # the RGB stem (3 input channels) keeps oneDNN's weight gradient
    assert all(m.in_channels >= cpu_conv.MIN_IN_CHANNELS for m in switched)
    assert any(m.in_channels == 3 and type(m) is nn.Conv2d for m in convs)
    grouped = nn.Conv2d(16, 16, 3, groups=4)
    dilated = nn.Conv2d(16, 16, 3, dilation=2)
    assert use_gemm_weight_grad(nn.Sequential(grouped, dilated)) == 0


def test_the_environment_variable_overrides_the_cpu_choice(monkeypatch):
    monkeypatch.setenv(cpu_conv.ENV, "onednn")
    assert not cpu_conv.gemm_weight_grad_wanted()
    assert use_gemm_weight_grad(nn.Conv2d(16, 16, 3)) == 0
    monkeypatch.setenv(cpu_conv.ENV, "gemm")
    assert cpu_conv.gemm_weight_grad_wanted()
    monkeypatch.delenv(cpu_conv.ENV)
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert cpu_conv.gemm_weight_grad_wanted() is not avx512


@pytest.mark.slow
def test_training_step_of_a_switched_model_matches(gemm):
    torch.manual_seed(0)
    plain = build_model(**TINY).train()
    fast = build_model(**TINY).train()
    fast.load_state_dict(plain.state_dict())
    use_gemm_weight_grad(fast)
    x = torch.rand(2, 3, 64, 64)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    losses = []
    for net in (plain, fast):
        torch.manual_seed(1)
        out = net(x, targets)
        loss = out["pred_logits"].sum() + out["pred_boxes"].sum()
        loss.backward()
        losses.append(loss)
    assert torch.equal(*losses)  # the forward pass is the same computation
    grads = [{k: p.grad for k, p in net.named_parameters() if p.grad is not None} for net in (plain, fast)]
    assert grads[0].keys() == grads[1].keys()
    top = max(float(g.norm()) for g in grads[0].values())
    for name, g in grads[0].items():  # sums in another order, through training-mode BatchNorm
        assert float((g - grads[1][name]).norm()) <= 1e-3 * float(g.norm()) + 1e-4 * top, name

"""EMA of weights: the fused update against a float64 reference, the warm-up schedule, buffer copies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rockgen.ema import ema_decay, ema_update_, ema_update_module_


def test_ema_update_matches_float64_reference():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (7,), (2, 3, 5), ()]
    ema = [torch.randn(s, generator=gen) for s in shapes]
    src = [torch.randn(s, generator=gen) for s in shapes]
    counter_ema, counter_src = torch.tensor(3), torch.tensor(11)  # integer state is copied, not averaged
    expected = [(0.9 * e.double() + 0.1 * p.double()).float() for e, p in zip(ema, src, strict=True)]

    ema_update_(ema + [counter_ema], src + [counter_src], 0.9)
    for got, want in zip(ema, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert counter_ema.item() == 11


def test_ema_update_edge_decays_and_grad_inputs():
    ema, src = [torch.zeros(3)], [torch.ones(3, requires_grad=True)]
    ema_update_(ema, src, 1.0)
    assert torch.equal(ema[0], torch.zeros(3))
    ema_update_(ema, src, 0.0)
    assert torch.equal(ema[0], torch.ones(3)) and not ema[0].requires_grad
    with pytest.raises(ValueError, match="tensors"):
        ema_update_(ema, src + src, 0.5)


def test_ema_decay_schedule():
    assert ema_decay(0, 0.9999) == 0.9999
    assert ema_decay(10**6, 0.9999, None) == 0.9999
    assert ema_decay(0, 0.9999, "tf") == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay(8, 0.9999, "tf") == pytest.approx(0.5)  # 9 / 18
    assert ema_decay(90, 0.9999, "tf") == pytest.approx(0.91)  # 91 / 100
    assert ema_decay(10**6, 0.999, "tf") == 0.999  # capped at the target decay
    with pytest.raises(ValueError, match="warm-up"):
        ema_decay(0, 0.999, "cosine")


def test_ema_update_module_lerps_params_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 4))  # moves running stats and num_batches_tracked
    before = [p.double().clone() for p in ema.parameters()]

    ema_update_module_(ema, model, 0.75)
    for got, old, new in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(got.double(), 0.75 * old + 0.25 * new.double(), rtol=0, atol=1e-6)
    for got, new in zip(ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(got, new)
    assert ema[1].num_batches_tracked.item() == 1
    assert not any(p.requires_grad for p in ema.parameters())

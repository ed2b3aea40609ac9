"""The injection processor against a plain-torch formula, for every attention backend."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from stylekit.attention import InjectionController, InjectionSettings, StyleInjectionProcessor


def _formula(attn, hidden, q_content, k_style, v_style, gamma, temperature):
    """softmax(T (gamma Qc + (1 - gamma) Q) Ks^T / sqrt(d)) Vs, per head, then the output projection."""
    b, n, _ = hidden.shape
    heads = attn.heads
    q = attn.to_q(hidden)
    q = gamma * q_content + (1 - gamma) * q
    d = q.shape[-1] // heads

    def split(x):
        return x.view(b, -1, heads, d).transpose(1, 2)

    logits = temperature * split(q) @ split(k_style).transpose(-1, -2) / math.sqrt(d)
    out = (logits.softmax(-1) @ split(v_style)).transpose(1, 2).reshape(b, n, heads * d)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("gamma,temperature", [(0.75, 1.5), (0.3, 1.0), (1.0, 2.0), (0.0, 0.5)])
def test_processor_matches_formula(backend, gamma, temperature):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    content, style, current = (torch.randn(2, 16, 32) for _ in range(3))
    controller = InjectionController(InjectionSettings(gamma=gamma, temperature=temperature, backend=backend))
    processor = StyleInjectionProcessor("layer", controller, AttnProcessor2_0())
    with torch.no_grad():
        controller.mode, controller.timestep = "capture", 7
        controller.capture_rows = [("c0", ("q",)), ("c1", ("q",))]
        processor(attn, content)
        controller.capture_rows = [("s0", ("k", "v")), ("s1", ("k", "v"))]
        processor(attn, style)
        controller.mode, controller.pairs = "inject", [("c0", "s1"), ("c1", "s0")]
        got = processor(attn, current)
        order = torch.tensor([1, 0])
        expected = _formula(
            attn,
            current,
            attn.to_q(content),
            attn.to_k(style)[order],
            attn.to_v(style)[order],
            gamma,
            temperature,
        )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_capture_mode_and_off_mode_equal_the_original_processor():
    torch.manual_seed(1)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    hidden = torch.randn(1, 9, 16)
    controller = InjectionController(InjectionSettings())
    processor = StyleInjectionProcessor("layer", controller, AttnProcessor2_0())
    with torch.no_grad():
        reference = AttnProcessor2_0()(attn, hidden)
        torch.testing.assert_close(processor(attn, hidden), reference)
        controller.mode, controller.timestep, controller.capture_rows = "capture", 1, [("x", ("q", "k", "v"))]
        torch.testing.assert_close(processor(attn, hidden), reference, rtol=1e-5, atol=1e-6)
    assert controller.bank.get("x", "layer", "k", 1).shape == (9, 16)


def test_live_mode_equals_inject_mode():
    torch.manual_seed(2)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    content, style, current = (torch.randn(1, 9, 16) for _ in range(3))
    settings = InjectionSettings(gamma=0.6, temperature=1.3)
    stored = InjectionController(settings)
    processor = StyleInjectionProcessor("layer", stored, AttnProcessor2_0())
    live = InjectionController(settings)
    live_processor = StyleInjectionProcessor("layer", live, AttnProcessor2_0())
    with torch.no_grad():
        stored.mode, stored.timestep = "capture", 3
        stored.capture_rows = [("c", ("q",)), ("s", ("k", "v"))]
        processor(attn, torch.cat([content, style]))
        stored.mode, stored.pairs = "inject", [("c", "s")]
        expected = processor(attn, current)
        live.mode, live.timestep, live.live_refs, live.live_pairs = "live", 3, 2, [(0, 1)]
        got = live_processor(attn, torch.cat([content, style, current]))[2:]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"temperature": 0.0}, "temperature"),
        ({"backend": "flash"}, "backend"),
    ],
)
def test_settings_validate(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InjectionSettings(**kwargs)

"""Layer targeting: presets, the diffusers block vocabulary, explicit names, and clear errors."""

from __future__ import annotations

import pytest

from stylekit.attention import LayerSelectionError, resolve_layers


def _attn1(pipe):
    return list(pipe.unet.attn_processors)


def test_styleid_presets_on_sd_layout(tiny_sd):
    names = _attn1(tiny_sd)
    full = resolve_layers("styleid", names)
    assert len(full) == 6 and all(n.startswith(("up_blocks.2.", "up_blocks.3.")) for n in full)
    assert all(n.endswith("transformer_blocks.0.attn1.processor") for n in full)
    diffusers_port = resolve_layers("styleid-diffusers", names)
    assert set(full) - set(diffusers_port) == {
        "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor"
    }
    assert resolve_layers(None, names) == full


def test_block_vocabulary_and_names(tiny_sd):
    names = _attn1(tiny_sd)
    chosen = resolve_layers({"up": {"block_1": [0, 1, 0]}, "mid": True}, names)
    assert chosen == (
        "mid_block.attentions.0.transformer_blocks.0.attn1.processor",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1.processor",
    )
    assert resolve_layers("up_blocks.3", names) == resolve_layers({"up": {"block_3": True}}, names)
    assert resolve_layers(["up_blocks.2.attentions.0.transformer_blocks.0.attn1"], names) == (
        "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor",
    )
    cross = resolve_layers("styleid", names, kind="attn2")
    assert all(n.endswith("attn2.processor") for n in cross)


def test_sdxl_presets(tiny_sdxl):
    names = _attn1(tiny_sdxl)
    assert resolve_layers(None, names, "sdxl") == resolve_layers("styleid-xl", names, "sdxl")
    plus = resolve_layers("styleid-xl-plus", names, "sdxl")
    assert any(n.startswith("up_blocks.0.attentions.1.") for n in plus)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no_such_layer", "neither a preset"),
        ({"up": {"block_9": True}}, "no attention in up.block_9"),
        ({"sideways": True}, "unknown part"),
        ({"up": {"block_0": True}}, "no attention in up.block_0"),
    ],
)
def test_unknown_layers_are_refused(tiny_sd, spec, message):
    with pytest.raises(LayerSelectionError, match=message):
        resolve_layers(spec, _attn1(tiny_sd))


def test_preset_for_layers_the_model_lacks(tiny_sdxl):
    # The SD preset asks for up_blocks.2-3, which have no attention in SDXL.
    with pytest.raises(LayerSelectionError, match="no attention in up.block_2"):
        resolve_layers("styleid", _attn1(tiny_sdxl), "sdxl")

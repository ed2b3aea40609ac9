"""Style tokens (stylekit.tokens): invariants on tiny-sd."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_image

from stylekit import StyleCondition
from stylekit.tokens import (
    AdapterCompatibilityError,
    AdapterConfig,
    LayerShape,
    StyleTokenAdapter,
    StyleTokens,
    layer_scales,
    text_to_image,
)

STEPS = dict(num_inference_steps=2, guidance_scale=3.0, height=32, width=32, output_type="np")


@pytest.fixture(scope="module")
def extractor():
    from stylekit.extractors import load_default

    return load_default()


def make_adapter(pipe, extractor, trained: bool = True, seed: int = 0) -> StyleTokenAdapter:
    """An adapter for ``pipe``; ``trained`` gives its zero-initialised ``to_v_ip`` random weights."""
    torch.manual_seed(seed)
    adapter = StyleTokenAdapter.for_unet(
        pipe.unet, extractor.embed_dim, pipe.text_encoder, extractor.config_hash(), time_embedding=True
    )
    if trained:
        with torch.no_grad():
            for linear in [*adapter.to_v_ip.values(), adapter.time_proj]:
                linear.weight.normal_(0.0, 0.5)
    return adapter


def run(pipe, tokens=None, prompt="a red star", seed=0, **kwargs):
    options = dict(STEPS, **kwargs)
    return text_to_image(
        pipe, prompt, tokens, generator=torch.Generator().manual_seed(seed), **options
    ).images


@pytest.fixture(scope="module")
def style_image():
    return make_image(7)


def test_scale_zero_and_zero_init_give_the_base_image(tiny_sd, extractor, style_image):
    base = run(tiny_sd)
    trained = make_adapter(tiny_sd, extractor)
    condition = StyleCondition(image=style_image)
    assert np.array_equal(run(tiny_sd, StyleTokens(trained, condition, scale=0.0, extractor=extractor)), base)
    fresh = make_adapter(tiny_sd, extractor, trained=False)
    assert np.array_equal(run(tiny_sd, StyleTokens(fresh, condition, extractor=extractor)), base)
    # three-pass guidance runs a 3-row batch: equal to float rounding (bit-identity depends on batch size)
    guided = run(tiny_sd, StyleTokens(fresh, condition, style_guidance_scale=2.0, extractor=extractor))
    np.testing.assert_allclose(guided, base, atol=1e-5)
    styled = run(tiny_sd, StyleTokens(trained, condition, extractor=extractor))
    assert np.abs(styled - base).max() > 1e-4  # the invariant above can fail
    only_time = run(tiny_sd, StyleTokens(trained, condition, scale=0.0, time_scale=1.0, extractor=extractor))
    assert np.abs(only_time - base).max() > 1e-5  # the timestep-embedding path acts on its own


def test_save_load_round_trip(tiny_sd, extractor, style_image, tmp_path):
    adapter = make_adapter(tiny_sd, extractor, seed=3)
    adapter.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter.safetensors", "config.json"]
    loaded = StyleTokenAdapter.from_pretrained(tmp_path / "adapter")
    assert loaded.config == adapter.config
    condition = StyleCondition(image=style_image)
    a = run(tiny_sd, StyleTokens(adapter, condition, extractor=extractor))
    b = run(tiny_sd, StyleTokens(tmp_path / "adapter", condition, extractor=extractor))
    assert np.array_equal(a, b)


def test_pipeline_restored_after_call_and_after_failure(tiny_sd, extractor, style_image):
    before = dict(tiny_sd.unet.attn_processors)
    hooks = (len(tiny_sd.unet._forward_pre_hooks), len(tiny_sd.unet._forward_hooks))
    params = sum(1 for _ in tiny_sd.unet.parameters())
    tokens = StyleTokens(
        make_adapter(tiny_sd, extractor), style_image, style_guidance_scale=2.0, extractor=extractor
    )
    run(tiny_sd, tokens)

    def boom(*_):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run(tiny_sd, tokens, callback_on_step_end=boom)
    after = tiny_sd.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert (len(tiny_sd.unet._forward_pre_hooks), len(tiny_sd.unet._forward_hooks)) == hooks
    assert sum(1 for _ in tiny_sd.unet.parameters()) == params


def test_per_block_scales_touch_only_the_chosen_blocks(tiny_sd, extractor, style_image):
    adapter = make_adapter(tiny_sd, extractor)
    names = [layer.name for layer in adapter.config.layers]
    scales = layer_scales({"up": {"block_1": [0.0, 1.0]}}, names)
    chosen = [n for n, s in scales.items() if s]
    assert chosen == ["up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor"]
    called: list[str] = []
    handles = [
        adapter.layer_projections(name)[1].register_forward_hook(lambda *_, name=name: called.append(name))
        for name in names
    ]
    try:
        run(
            tiny_sd, StyleTokens(adapter, style_image, scale={"up": {"block_1": [0, 1]}}, extractor=extractor)
        )
    finally:
        for handle in handles:
            handle.remove()
    assert called and set(called) == set(chosen)
    # a block choice leaves the global timestep-embedding path off
    assert StyleTokens(adapter, style_image, scale={"up": {"block_1": 1.0}}).time_scale == 0.0
    # a block choice leaves the global timestep-embedding path off
    assert StyleTokens(adapter, style_image, scale={"up": {"block_1": 1.0}}).time_scale == 0.0
    with pytest.raises(ValueError, match="block_9"):
        StyleTokens(adapter, style_image, scale={"up": {"block_9": 1.0}})


def test_three_pass_guidance_formula(tiny_sd, extractor, style_image):
    """With g_style = g_text, u + g(t - u) + g(ts - t) = u + g(ts - u): the two-pass result."""
    adapter = make_adapter(tiny_sd, extractor)
    two_pass = run(tiny_sd, StyleTokens(adapter, style_image, extractor=extractor), output_type="latent")
    three_pass = run(
        tiny_sd,
        StyleTokens(adapter, style_image, style_guidance_scale=3.0, extractor=extractor),
        output_type="latent",
    )
    other = run(
        tiny_sd,
        StyleTokens(adapter, style_image, style_guidance_scale=9.0, extractor=extractor),
        output_type="latent",
    )
    torch.testing.assert_close(three_pass, two_pass, rtol=1e-4, atol=1e-5)
    assert (other - two_pass).abs().max() > 1e-3


def test_text_only_and_mixed_styles(tiny_sd, extractor, style_image):
    adapter = make_adapter(tiny_sd, extractor)
    base = run(tiny_sd)
    text = run(
        tiny_sd,
        StyleTokens(adapter, StyleCondition(text="dotted blue paper, thick outline"), extractor=extractor),
    )
    mixed = run(
        tiny_sd,
        StyleTokens(
            adapter,
            [
                StyleCondition(image=style_image, weight=0.7),
                StyleCondition(text="striped cream paper", weight=0.3),
            ],
            extractor=extractor,
        ),
    )
    both = run(
        tiny_sd, StyleTokens(adapter, StyleCondition(image=style_image, text="striped"), extractor=extractor)
    )
    for images in (text, mixed, both):
        assert images.shape == base.shape and np.isfinite(images).all()
        assert np.abs(images - base).max() > 1e-5


def test_composes_with_styleid_injection(extractor, images):
    from stylekit import load_pipeline

    pipe = load_pipeline("tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    before = dict(pipe.unet.attn_processors)
    call = dict(
        content_image=images[0], style=images[1], num_inference_steps=2, height=32, width=32, output_type="np"
    )
    plain = pipe(**call).images
    zero = pipe(
        **call, conditioners=[StyleTokens(make_adapter(pipe, extractor, trained=False), extractor=extractor)]
    )
    assert np.array_equal(zero.images, plain)
    tokens = StyleTokens(make_adapter(pipe, extractor), extractor=extractor)  # style = the call's style image
    styled = pipe(**call, conditioners=[tokens]).images
    assert styled.shape == plain.shape and np.abs(styled - plain).max() > 1e-5
    trajectory = pipe(**call, cache_strategy="trajectory", conditioners=[tokens]).images
    assert np.abs(trajectory - styled).max() < 1e-3  # same styled rows, reference rows left alone
    assert all(pipe.unet.attn_processors[k] is before[k] for k in before)


def test_bad_inputs_name_both_shapes(tiny_sd, extractor, tmp_path):
    adapter = make_adapter(tiny_sd, extractor)
    d = extractor.embed_dim
    with pytest.raises(AdapterCompatibilityError, match=rf"\(12,\).*\({d},\)"):
        StyleTokens(adapter, StyleCondition(embedding=torch.zeros(12)))
    # An adapter built for another architecture (wider cross-attention everywhere).
    wide = AdapterConfig(
        embed_dim=d,
        cross_attention_dim=768,
        layers=tuple(LayerShape(layer.name, 320, 768) for layer in adapter.config.layers),
    )
    StyleTokenAdapter(wide).save_pretrained(tmp_path / "wide")
    tokens = StyleTokens(tmp_path / "wide", StyleCondition(embedding=torch.ones(d)))
    layer = adapter.config.layers[0]
    expected = rf"\(320, 768\).*\({layer.inner_dim}, {layer.cross_attention_dim}\)"
    with pytest.raises(AdapterCompatibilityError, match=expected):
        run(tiny_sd, tokens)
    # A checkpoint whose weights do not match its config.
    shutil.copytree(tmp_path / "wide", tmp_path / "mismatch")
    config = json.loads((tmp_path / "mismatch" / "config.json").read_text())
    config["cross_attention_dim"] = 64
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterCompatibilityError, match=r"shape .* in the checkpoint but"):
        StyleTokenAdapter.from_pretrained(tmp_path / "mismatch")
    # An extractor of another architecture.
    from stylekit.extractors import ExtractorConfig, StyleExtractor

    other = StyleExtractor(ExtractorConfig(widths=(8, 16), pooled_stages=(1,), embed_dim=16, head_hidden=0))
    with pytest.raises(AdapterCompatibilityError, match=rf"\(16,\).*\({d},\)"):
        run(tiny_sd, StyleTokens(adapter, StyleCondition(image=make_image(1)), extractor=other))
    with pytest.raises(ValueError, match="needs an image, a text or an embedding"):
        StyleTokens(adapter, StyleCondition(lora="x.safetensors"))


def test_training_resumes_like_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    from stylekit.tokens.train import main

    common = [
        "--pretrained_model_name_or_path", "tiny-sd", "--max_steps", "4", "--batch_size", "2",
        "--resolution", "32", "--checkpointing_steps", "2", "--log_every", "1", "--warmup_steps", "1",
    ]  # fmt: skip
    assert main([*common, "--output_dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--output_dir", str(tmp_path / "b")]) == 0
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")
    shutil.rmtree(tmp_path / "b" / "adapter")
    assert main([*common, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "latest"]) == 0
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = StyleTokenAdapter.from_pretrained(tmp_path / "a" / "adapter")
    assert any(w.abs().max() > 0 for w in fresh.to_v_ip.parameters())  # it learned something
    # refused before the model loads: another run's options, a resume past max_steps, a fresh run over
    # checkpoints (the limit deleted its own), bad numbers
    resume = [*common, "--output_dir", str(tmp_path / "a"), "--resume_from_checkpoint", "latest"]
    with pytest.raises(ValueError, match="written with --num_global_tokens 4, this run has 3"):
        main([*resume, "--num_global_tokens", "3"])
    with pytest.raises(ValueError, match="past --max_steps 2"):
        main([*resume, "--max_steps", "2"])
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        main([*common, "--output_dir", str(tmp_path / "a")])
    from stylekit.tokens.train import TrainConfig

    for options, message in (
        ({"noise_offset": float("nan")}, "--noise_offset: expected a finite number"),
        ({"log_every": 0}, "log_every must be >= 1"),
        ({"max_loss_weight": 0.0}, "--max_loss_weight: expected a number > 0"),
        ({"extractor": str(tmp_path / "nope")}, "--extractor: not a folder"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**options)
    assert TrainConfig(checkpointing_steps=0).checkpointing_steps == 0  # only at the end


# ------------------------------------------------------------------------------- latent-statistics guidance
def test_latent_stats_math_adain_of_the_combined_prediction():
    """The change makes the CFG-combined x̂₀ the strength-s AdaIN of the old one, for ε and v."""
    from stylekit.tokens.latent_stats import guide_prediction, latent_channel_stats

    torch.manual_seed(0)
    x, u, t = (torch.randn(2, 4, 8, 8) for _ in range(3))
    target = torch.cat([torch.randn(1, 4), torch.rand(1, 4) + 0.5], dim=1)
    alpha_bar, g = 0.3, 4.0
    a, b = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    for kind, x0_of in (("epsilon", lambda p: (x - b * p) / a), ("v_prediction", lambda p: a * x - b * p)):
        combined = u + g * (t - u)
        delta, change = guide_prediction(x, combined, alpha_bar, target, 1.0, kind)
        new = (u + change) + g * ((t + change) - (u + change))  # the same change to every chunk
        torch.testing.assert_close(x0_of(new), x0_of(combined) + delta, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            latent_channel_stats(x0_of(new)), target.expand(2, -1), atol=1e-3, rtol=1e-3
        )
        half, _ = guide_prediction(x, combined, alpha_bar, target, 0.5, kind)
        torch.testing.assert_close(half, delta / 2)


def test_latent_stats_strength_zero_is_bit_identical_and_positive_moves_the_statistics(
    tiny_sd, extractor, style_image
):
    from stylekit.tokens.latent_stats import image_latent_stats, latent_channel_stats

    adapter = make_adapter(tiny_sd, extractor)
    condition = StyleCondition(image=style_image)
    for guidance in (None, 2.0):  # two-pass and StyleMaster's three-pass guidance
        today = run(
            tiny_sd, StyleTokens(adapter, condition, style_guidance_scale=guidance, extractor=extractor)
        )
        off = StyleTokens(
            adapter, condition, style_guidance_scale=guidance, extractor=extractor, latent_stats_strength=0.0,
            latent_stats_steps=1.0,
        )  # fmt: skip
        assert np.array_equal(run(tiny_sd, off), today)
    target = image_latent_stats(tiny_sd.vae, [style_image], 32)
    base = run(tiny_sd, StyleTokens(adapter, condition, style_guidance_scale=2.0, extractor=extractor),
               output_type="latent", num_inference_steps=4)  # fmt: skip
    distances = []
    for strength, steps in ((0.5, 0.5), (1.0, 1.0)):
        tokens = StyleTokens(
            adapter, condition, style_guidance_scale=2.0, extractor=extractor,
            latent_stats_strength=strength, latent_stats_steps=steps,
        )  # fmt: skip
        latents = run(tiny_sd, tokens, output_type="latent", num_inference_steps=4)
        distances.append(float((latent_channel_stats(latents) - target).abs().mean()))
    before = float((latent_channel_stats(base) - target).abs().mean())
    assert before > distances[0] > distances[1]
    assert distances[1] < 0.1 * before  # the full-schedule, full-strength AdaIN of x̂₀ lands on the target


def test_latent_stats_head_for_text_and_embedding_styles(tiny_sd, extractor, tmp_path):
    from stylekit.tokens.latent_stats import LatentStatsHead, latent_channel_stats

    d = extractor.embed_dim
    headless = make_adapter(tiny_sd, extractor)
    with pytest.raises(AdapterCompatibilityError, match="needs an adapter with a latent-statistics head"):
        StyleTokens(headless, StyleCondition(embedding=torch.ones(d)), latent_stats_strength=0.5)
    with pytest.raises(AdapterCompatibilityError, match="needs an adapter with a latent-statistics head"):
        StyleTokens(headless, StyleCondition(text="dotted blue paper"), latent_stats_strength=0.5)
    for bad in (dict(latent_stats_strength=1.5), dict(latent_stats_strength=0.5, latent_stats_steps=0.0)):
        with pytest.raises(ValueError, match="latent_stats"):
            StyleTokens(headless, StyleCondition(image=make_image(1)), **bad)
    # Old adapter folders (no latent_stats_channels in config.json) still load; the head adds tensors only.
    headless.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["latent_stats_channels"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = StyleTokenAdapter.from_pretrained(tmp_path / "old")
    assert old.latent_stats_head is None
    channels = tiny_sd.vae.config.latent_channels
    head = LatentStatsHead(d, channels)
    with torch.no_grad():
        head.mean.copy_(torch.cat([torch.full((channels,), 2.0), torch.zeros(channels)]))  # means 2, stds 1
        head.net[-1].weight.zero_()
        head.net[-1].bias.zero_()
    old.set_latent_stats_head(head)
    old.save_pretrained(tmp_path / "new")
    new = StyleTokenAdapter.from_pretrained(tmp_path / "new")
    before, after = headless.state_dict(), new.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(after) - set(before) and all(
        k.startswith("latent_stats_head.") for k in set(after) - set(before)
    )
    base = run(tiny_sd, StyleTokens(new, StyleCondition(embedding=torch.ones(d))), output_type="latent")
    guided = run(
        tiny_sd,
        StyleTokens(
            new, StyleCondition(embedding=torch.ones(d)), latent_stats_strength=1.0, latent_stats_steps=1.0
        ),
        output_type="latent",
    )
    assert latent_channel_stats(guided)[:, :channels].sub(2.0).abs().mean() < 0.1
    assert latent_channel_stats(base)[:, :channels].sub(2.0).abs().mean() > 0.5
    text = StyleTokens(new, StyleCondition(text="dotted blue paper"), latent_stats_strength=1.0)
    assert np.isfinite(run(tiny_sd, text)).all()


def test_latent_stats_in_a_styleid_call(tiny_sd, extractor, images):
    """Style = the call's style image per row (VAE statistics of the call's style pixels)."""
    call = dict(
        content_image=images[0], style=images[1], num_inference_steps=2, height=32, width=32, output_type="np"
    )
    adapter = make_adapter(tiny_sd, extractor)
    plain = tiny_sd(**call, conditioners=[StyleTokens(adapter, extractor=extractor)]).images
    tokens = StyleTokens(adapter, extractor=extractor, latent_stats_strength=1.0, latent_stats_steps=1.0)
    guided = tiny_sd(**call, conditioners=[tokens]).images
    assert guided.shape == plain.shape and np.abs(guided - plain).max() > 1e-4


def test_a_condition_repeated_per_row_is_embedded_once(tiny_sd, extractor, monkeypatch):
    """``per_row`` with one condition object on many rows (regional video rows) embeds it once, with the same
    result as distinct equal conditions."""
    adapter = make_adapter(tiny_sd, extractor)
    calls = []
    original = StyleTokens.text_codes

    def counted(self, pipe, texts):
        calls.append(tuple(texts))
        return original(self, pipe, texts)

    monkeypatch.setattr(StyleTokens, "text_codes", counted)
    shared = StyleCondition(text="dotted blue paper")
    repeated = StyleTokens(adapter, [shared] * 4, per_row=True, extractor=extractor)
    repeated.prepare(tiny_sd, batch_size=4, num_inference_steps=2)
    assert calls == [("dotted blue paper",)]
    distinct = StyleTokens(
        adapter,
        [StyleCondition(text="dotted blue paper") for _ in range(4)],
        per_row=True,
        extractor=extractor,
    )
    distinct.prepare(tiny_sd, batch_size=4, num_inference_steps=2)
    assert len(calls) == 5
    torch.testing.assert_close(repeated.state.context, distinct.state.context)


@pytest.mark.slow
def test_two_processes_split_the_batch_and_match_one(tmp_path):
    """Each of two gloo processes trains half of the global batch (they used to repeat the whole batch);
    gradients are averaged, so the adapter matches the one-process run."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    common = [
        "-m", "stylekit.tokens.train", "--pretrained_model_name_or_path", "tiny-sd", "--max_steps", "2",
        "--batch_size", "2", "--resolution", "32", "--checkpointing_steps", "0", "--warmup_steps", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    launch += ["--dynamo_backend", "no", "--mixed_precision", "no"]
    for name, extra in (("one", ["--num_processes", "1"]), ("two", ["--multi_gpu", "--num_processes", "2"])):
        result = subprocess.run(
            [*launch, *extra, *common, "--output_dir", str(tmp_path / name)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    one = load_file(str(tmp_path / "one" / "adapter" / "adapter.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter" / "adapter.safetensors"))
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 5e-4  # unreduced halves: 4e-3

"""Every condition type in StyleVideoPipeline (StyleID injection, style tokens, LoRAs), and LoRA / token
conditioners in VideoStyleTransferPipeline with a motion adapter (tiny-sd + a tiny MotionAdapter, 32 px,
2 steps, 4 frames)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_image, write_wider_lora

from stylekit import StyleCondition
from stylekit.lora_style import LoRAStyle
from stylekit.regions import MaskSpec
from stylekit.tokens import AdapterCompatibilityError, StyleTokenAdapter, StyleTokens
from stylekit.video_models import tiny_motion_adapter

SIZE = 32
FRAMES = 4
EMBED = 16


@pytest.fixture(scope="module")
def parts():
    from stylekit.models import build_tiny_sd

    return build_tiny_sd()


@pytest.fixture(scope="module")
def pipe(parts):
    from stylekit.pipelines import StyleVideoPipeline

    image_unet = copy.deepcopy(parts["unet"])
    pipe = StyleVideoPipeline(
        parts["vae"],
        parts["text_encoder"],
        parts["tokenizer"],
        image_unet,
        tiny_motion_adapter(image_unet),
        parts["scheduler"],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def token_adapter(unet, text_encoder, trained: bool = True) -> StyleTokenAdapter:
    """A style-token adapter for ``unet``; ``trained`` gives its zero-initialised parts random weights."""
    torch.manual_seed(0)
    adapter = StyleTokenAdapter.for_unet(unet, EMBED, text_encoder, time_embedding=True)
    if trained:
        with torch.no_grad():
            for linear in [*adapter.to_v_ip.values(), adapter.time_proj]:
                linear.weight.normal_(0.0, 0.5)
    return adapter


@pytest.fixture(scope="module")
def tokens(parts):
    return token_adapter(parts["unet"], parts["text_encoder"])


@pytest.fixture(scope="module")
def lora(parts, tmp_path_factory) -> Path:
    """A diffusers-format LoRA on every attention block of the image UNet, with random ``lora_B``."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from stylekit.lora import attention_blocks, save_adapter, target_modules

    unet = copy.deepcopy(parts["unet"])
    config = LoraConfig(r=2, lora_alpha=2, target_modules=target_modules(unet, attention_blocks(unet)))
    unet.add_adapter(config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("video_lora") / "style"
    return save_adapter(folder, get_peft_model_state_dict(unet), config, {"role": "style"})


def generate(pipe, **kwargs) -> np.ndarray:
    kwargs = {
        "num_frames": FRAMES,
        "num_inference_steps": 2,
        "height": SIZE,
        "width": SIZE,
        "output_type": "np",
        **kwargs,
    }
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # peft: shortened LoRA targets also match motion layers
        return pipe("a red star", generator=torch.Generator().manual_seed(0), **kwargs).frames


@pytest.fixture(scope="module")
def base(pipe):
    return generate(pipe)


def snapshot(pipe):
    state = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    trainable = {k: p.requires_grad for k, p in pipe.unet.named_parameters()}
    return state, [n for n, _ in pipe.unet.named_modules()], dict(pipe.unet.attn_processors), trainable


def assert_restored(pipe, before) -> None:
    state, names, processors, trainable = snapshot(pipe)
    assert trainable == before[3]  # loading a LoRA freezes parameters: set back
    assert names == before[1]  # no LoRA wrapper left behind
    assert processors.keys() == before[2].keys() and all(processors[k] is before[2][k] for k in processors)
    assert state.keys() == before[0].keys() and all(torch.equal(state[k], before[0][k]) for k in state)
    assert not getattr(pipe.unet, "peft_config", None)


def condition(kind: str, lora: Path, weight: float = 1.0) -> StyleCondition:
    if kind == "image":
        return StyleCondition(image=make_image(7, size=SIZE), weight=weight)
    if kind == "text":
        return StyleCondition(text="thick watercolour strokes", weight=weight)
    if kind == "embedding":
        return StyleCondition(embedding=torch.linspace(-1.0, 1.0, EMBED), weight=weight)
    return StyleCondition(lora=lora, weight=weight)


@pytest.mark.parametrize("kind", ["image", "text", "embedding", "lora"])
def test_each_condition_changes_the_video_and_weight_zero_is_exact(pipe, tokens, lora, base, kind):
    before = snapshot(pipe)
    styled = generate(pipe, style=condition(kind, lora), style_tokens=tokens)
    assert styled.shape == base.shape == (1, FRAMES, SIZE, SIZE, 3) and np.isfinite(styled).all()
    assert np.abs(styled - base).max() > 1e-4
    assert_restored(pipe, before)
    off = generate(pipe, style=condition(kind, lora, weight=0.0), style_tokens=tokens)
    np.testing.assert_array_equal(off, base)
    assert_restored(pipe, before)


def test_style_token_scale_and_guidance(pipe, parts, tokens, base):
    text = StyleCondition(text="thick watercolour strokes")
    np.testing.assert_array_equal(
        generate(pipe, style=text, style_tokens=tokens, style_tokens_scale=0.0), base
    )
    fresh = token_adapter(parts["unet"], parts["text_encoder"], trained=False)  # zero to_v_ip: no effect
    np.testing.assert_array_equal(generate(pipe, style=text, style_tokens=fresh), base)
    # three-pass guidance on the frame batch: a 3-video batch equals the 2-video one up to float rounding
    guided = generate(pipe, style=text, style_tokens=fresh, style_guidance_scale=3.0)
    np.testing.assert_allclose(guided, base, atol=1e-5)
    guided = generate(pipe, style=text, style_tokens=tokens, style_guidance_scale=3.0)
    plain = generate(pipe, style=text, style_tokens=tokens)
    assert np.abs(guided - plain).max() > 1e-4 and np.abs(guided - base).max() > 1e-4
    pipe.style_tokens = tokens  # the pipeline's default adapter
    try:
        np.testing.assert_array_equal(generate(pipe, style=text), plain)
    finally:
        pipe.style_tokens = None


def test_explicit_conditioners_equal_style_conditions(pipe, tokens, lora, base):
    text = StyleCondition(text="thick watercolour strokes")
    routed = generate(pipe, style=[text, StyleCondition(lora=lora)], style_tokens=tokens)
    explicit = generate(pipe, conditioners=[StyleTokens(tokens, text), LoRAStyle(style=lora)])
    np.testing.assert_array_equal(explicit, routed)
    assert np.abs(routed - base).max() > 1e-4


def test_injection_tokens_and_lora_compose_in_one_call(pipe, tokens, lora, base):
    before = snapshot(pipe)
    image = make_image(7, size=SIZE)
    text = StyleCondition(text="thick watercolour strokes")
    alone = generate(pipe, style=image)
    composed = generate(pipe, style=[StyleCondition(image=image, lora=lora), text], style_tokens=tokens)
    assert np.isfinite(composed).all()
    assert np.abs(composed - alone).max() > 1e-4 and np.abs(composed - base).max() > 1e-4
    # three-pass guidance adds a video to the UNet batch; the injection sees (and styles) it too
    guided = generate(pipe, style=[image, text], style_tokens=tokens, style_guidance_scale=2.0)
    assert np.isfinite(guided).all() and np.abs(guided - alone).max() > 1e-4
    assert_restored(pipe, before)


def test_restored_after_a_failing_call(pipe, tokens, lora):
    before = snapshot(pipe)

    def boom(pipe, step, timestep, tensors):
        raise RuntimeError("boom")

    style = [StyleCondition(image=make_image(7, size=SIZE), lora=lora), StyleCondition(text="ink")]
    with pytest.raises(RuntimeError, match="boom"):
        generate(pipe, style=style, style_tokens=tokens, callback_on_step_end=boom)
    assert_restored(pipe, before)
    with pytest.raises(RuntimeError, match="boom"):
        generate(pipe, conditioners=[LoRAStyle(style=lora, fuse=True)], callback_on_step_end=boom)
    assert_restored(pipe, before)


def test_bad_conditions_fail_before_any_unet_forward(pipe, parts, tiny_sdxl, lora, tmp_path):

    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    image = make_image(7, size=SIZE)
    try:
        other = token_adapter(tiny_sdxl.unet, None)
        with pytest.raises(AdapterCompatibilityError, match="another architecture|not a cross-attention"):
            generate(pipe, style=[image, StyleCondition(text="ink")], style_tokens=other)
        with pytest.raises(AdapterCompatibilityError, match="bundled one .* does not fit this UNet"):
            generate(pipe, style=[image, StyleCondition(text="ink")])
        with pytest.raises(AdapterCompatibilityError):
            generate(pipe, conditioners=[StyleTokens(other, StyleCondition(embedding=torch.ones(EMBED)))])
        bad = write_wider_lora(lora, tmp_path / "bad")
        with pytest.raises(ValueError, match="another architecture"):
            generate(pipe, style=StyleCondition(image=image, lora=bad))
        with pytest.raises(ValueError, match="another architecture"):
            generate(pipe, style=image, conditioners=[LoRAStyle(style=bad)])
        with pytest.raises(ValueError, match="one style image per call"):
            generate(pipe, style=[image, image])
        with pytest.raises(ValueError, match="restricts only StyleID injection"):
            generate(pipe, style=StyleCondition(text="ink", mask=np.ones((SIZE, SIZE))))
        with pytest.raises(ValueError, match="style.mask: got masks for 3 frames"):
            generate(pipe, style=StyleCondition(image=image, mask=np.ones((3, SIZE, SIZE))))
        with pytest.raises(ValueError, match="style: expected"):
            generate(pipe, style=[])
    finally:
        handle.remove()
    assert calls == []


def test_bundled_adapter_is_the_default_for_mini():
    """mini: the bundled adapter is used by default; three-pass guidance keeps mini's pooled-text embedding."""
    from diffusers import DDIMScheduler

    from stylekit import load_pipeline
    from stylekit.pipelines import StyleVideoPipeline

    mini = load_pipeline("mini", kind="text-to-image")
    scheduler = DDIMScheduler.from_config(mini.scheduler.config)
    video = StyleVideoPipeline(
        mini.vae, mini.text_encoder, mini.tokenizer, mini.unet, tiny_motion_adapter(mini.unet), scheduler
    )
    video.set_progress_bar_config(disable=True)
    options = {"num_frames": 2, "height": 64, "width": 64}
    base = generate(video, **options)
    text = StyleCondition(text="thick watercolour strokes")
    styled = generate(video, style=text, **options)
    guided = generate(video, style=text, style_guidance_scale=3.0, **options)
    assert np.abs(styled - base).max() > 1e-3 and np.abs(guided - styled).max() > 1e-4
    np.testing.assert_array_equal(generate(video, **options), base)  # hooks gone, text embedding kept


def test_mask_restricts_injection(pipe, base):
    image = make_image(7, size=SIZE)
    full = generate(pipe, style=image)
    ones = generate(pipe, style=StyleCondition(image=image, mask=np.ones((SIZE, SIZE))))
    np.testing.assert_array_equal(ones, full)  # a full mask is plain injection
    zeros = generate(pipe, style=StyleCondition(image=image, mask=np.zeros((FRAMES, SIZE, SIZE))))
    np.testing.assert_allclose(zeros, base, atol=1e-5)  # an empty mask keeps every layer's plain attention
    left = np.zeros((SIZE, SIZE))
    left[:, : SIZE // 2] = 1
    half = generate(pipe, style=StyleCondition(image=image, mask=left))
    assert np.abs(half - full).max() > 1e-5 and np.abs(half - base).max() > 1e-5
    per_frame = generate(pipe, style=StyleCondition(image=image, mask=np.stack([left] * FRAMES)))
    np.testing.assert_array_equal(per_frame, half)  # one mask = the same mask on every frame
    spec = generate(pipe, style=StyleCondition(image=image, mask=MaskSpec(left * 0.6, threshold=0.5)))
    np.testing.assert_array_equal(spec, half)  # a MaskSpec brings its own threshold


@pytest.mark.parametrize("kind", ["text", "lora"])
def test_steps_limit_tokens_and_loras_to_part_of_the_schedule(pipe, tokens, lora, base, kind):
    full = condition(kind, lora)
    first_half = StyleCondition(text=full.text, lora=full.lora, steps=(0.0, 0.5))
    whole = generate(pipe, style=full, style_tokens=tokens)
    part = generate(pipe, style=first_half, style_tokens=tokens)
    assert np.abs(part - whole).max() > 1e-5 and np.abs(part - base).max() > 1e-5


def test_transfer_conditioners_act_on_the_motion_unet(parts, tokens, lora):
    """``VideoStyleTransferPipeline`` with a motion adapter samples with the motion UNet: a ``LoRAStyle`` or
    ``StyleTokens`` conditioner must act there (it once loaded into the image UNet and changed nothing), and
    both UNets are restored after the call."""
    from stylekit.pipelines import VideoStyleTransferPipeline

    image_unet = copy.deepcopy(parts["unet"])
    pipe = VideoStyleTransferPipeline(
        parts["vae"], parts["text_encoder"], parts["tokenizer"], image_unet, parts["scheduler"]
    )
    pipe.set_progress_bar_config(disable=True)
    adapter = tiny_motion_adapter(image_unet, motion_max_seq_length=8)
    video = np.stack([make_image(seed, size=SIZE) for seed in range(FRAMES)])

    def transfer(*conditioners):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # peft: shortened targets match motion layers
            return pipe(
                video,
                make_image(7, size=SIZE),
                motion_adapter=adapter,
                conditioners=conditioners,
                num_inference_steps=2,
                height=SIZE,
                width=SIZE,
                output_type="np",
            ).frames

    plain = transfer()
    motion = SimpleNamespace(unet=pipe._motion_cache.get(image_unet, adapter))
    before = snapshot(pipe), snapshot(motion)
    with_lora = transfer(LoRAStyle.from_conditions([StyleCondition(lora=lora)]))
    assert np.abs(with_lora - plain).max() > 1e-3
    assert pipe.unet is image_unet
    assert_restored(pipe, before[0])
    assert_restored(motion, before[1])
    embedding = torch.linspace(-1.0, 1.0, EMBED)
    with_tokens = transfer(StyleTokens(tokens, StyleCondition(embedding=embedding)))
    assert np.abs(with_tokens - plain).max() > 1e-3
    assert_restored(pipe, before[0])
    assert_restored(motion, before[1])
    np.testing.assert_array_equal(transfer(), plain)
    with pytest.raises(ValueError, match="style_guidance_scale is not supported with a motion adapter"):
        transfer(StyleTokens(tokens, StyleCondition(embedding=embedding), style_guidance_scale=2.0))
    assert_restored(motion, before[1])

"""Regions whose style is a LoRA or style tokens (``StyleCondition(lora=... / embedding=..., mask=...)``),
alone and next to a StyleID region, on tiny-sd: the outside stays the content's reconstruction, the
pipeline is restored, bad input is refused before the UNet runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image
from safetensors.torch import load_file, save_file

from stylekit import StyleCondition
from stylekit.attention.conditioner import encode_latents
from stylekit.images import to_tensor
from stylekit.regions import BASE_ADAPTER, REGION_LORA_PREFIX, RegionAdapters
from stylekit.tokens import AdapterCompatibilityError, StyleTokenAdapter

SIZE = 64
PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0")
CONVOLUTIONS = ("resnets.0.conv1", "resnets.1.conv2")


def write_lora(path: Path, unet, seed: int, std: float = 0.3, wrong_width: bool = False) -> Path:
    """A random rank-2 LoRA in the diffusers file format on the attention projections and the ResNet
    convolutions of ``unet`` (``wrong_width``: input widths doubled, as a LoRA for another architecture
    would have)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(PROJECTIONS):
            width = module.in_features * (2 if wrong_width else 1)
            state[f"unet.{name}.lora.down.weight"] = torch.randn(2, width, generator=generator) * std
            state[f"unet.{name}.lora.up.weight"] = (
                torch.randn(module.out_features, 2, generator=generator) * std
            )
        elif isinstance(module, torch.nn.Conv2d) and name.endswith(CONVOLUTIONS):
            width = module.in_channels * (2 if wrong_width else 1)
            down = torch.randn(2, width, *module.kernel_size, generator=generator) * std / 3
            state[f"unet.{name}.lora_A.weight"] = down  # diffusers keeps peft's names on convolutions
            state[f"unet.{name}.lora_B.weight"] = (
                torch.randn(module.out_channels, 2, 1, 1, generator=generator) * std
            )
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "pytorch_lora_weights.safetensors"))
    return path


@pytest.fixture(scope="module")
def loras(tiny_sd, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("regional_loras")
    bad = root / "garbage.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    return {
        "a": write_lora(root / "a", tiny_sd.unet, 0),
        "b": write_lora(root / "b", tiny_sd.unet, 1),
        "wide": write_lora(root / "wide", tiny_sd.unet, 2, wrong_width=True),
        "garbage": bad,
    }


@pytest.fixture(scope="module")
def token_adapter(tiny_sd) -> StyleTokenAdapter:
    torch.manual_seed(0)
    adapter = StyleTokenAdapter.for_unet(tiny_sd.unet, 16, tiny_sd.text_encoder, time_embedding=True)
    with torch.no_grad():  # "trained": the zero-initialised value projections get weights
        for linear in [*adapter.to_v_ip.values(), adapter.time_proj]:
            linear.weight.normal_(0.0, 0.5)
    return adapter


@pytest.fixture(scope="module")
def scene():
    content, style = make_image(0, SIZE), make_image(1, SIZE)
    left = np.zeros((SIZE, SIZE), bool)
    left[:, : SIZE // 2] = True
    return content, style, left


def run(pipe, content, style, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    return pipe(content_image=content, style=style, cache=False, output_type="np", **kwargs)


def reconstruction(pipe, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        latents = encode_latents(pipe.vae, to_tensor(Image.fromarray(image))[None])
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(decoded, output_type="np")[0]


def snapshot(pipe):
    state = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    hooks = len(pipe.unet._forward_pre_hooks) + len(pipe.unet._forward_hooks)
    return state, [n for n, _ in pipe.unet.named_modules()], processors, hooks


def assert_same(before, after) -> None:
    assert before[1] == after[1]  # no LoRA wrapper left behind
    assert before[2] == after[2] and before[3] == after[3]
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


# ---------------------------------------------------------------------------------------------- LoRA
def test_mixed_adapter_batch_equals_separate_forwards(tiny_sd, loras):
    """The per-row hook: one UNet batch [prepended, a, b] equals a base and two single-adapter forwards."""
    from stylekit.attention import Row
    from stylekit.lora_style import LoRAStyle

    unet = tiny_sd.unet
    adapters = RegionAdapters(
        [StyleCondition(lora=loras["a"], mask=np.ones((8, 8))), StyleCondition(lora=loras["b"])]
    )
    adapters.prepare(tiny_sd, rows=[Row(0, 0), Row(0, 1)])
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = tiny_sd.encode_prompt("", "cpu", 1, False)[0]

    @torch.no_grad()
    def eps(batch: torch.Tensor) -> torch.Tensor:
        return unet(batch, 10, encoder_hidden_states=text.expand(len(batch), -1, -1)).sample

    with adapters.attach(tiny_sd):
        mixed = eps(sample.expand(3, -1, -1, -1))  # 1 prepended row (no adapter) + the call's 2 rows
        assert adapters._names == [BASE_ADAPTER, f"{REGION_LORA_PREFIX}0", f"{REGION_LORA_PREFIX}1"]
        conv = unet.get_submodule("up_blocks.1.resnets.0.conv1")  # convolutions are routed per row too
        assert f"{REGION_LORA_PREFIX}1" in getattr(conv, "lora_A", {})
    base = eps(sample)
    singles = []
    for name in ("a", "b"):
        with LoRAStyle(adapters={name: loras[name]}).applied(tiny_sd):
            singles.append(eps(sample))
    torch.testing.assert_close(mixed[:1], base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1:2], singles[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[2:], singles[1], rtol=1e-5, atol=1e-5)
    assert (mixed[1] - base[0]).abs().max() > 1e-3 and (mixed[1] - mixed[2]).abs().max() > 1e-3


def test_lora_region_outside_kept_inside_changed_weight_zero_is_content(tiny_sd, loras, scene):
    content, _, left = scene
    before = snapshot(tiny_sd)
    recon = reconstruction(tiny_sd, content)
    result = run(tiny_sd, content, StyleCondition(lora=loras["a"], mask=left))
    out = result.images[0]
    assert result.pairs == [(0, -1)] and out.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(out[~left], recon[~left], atol=1e-5)  # outside: the content
    assert np.abs(out - recon)[left].mean() > 0.02  # inside: the LoRA's rendering
    muted = run(tiny_sd, content, StyleCondition(lora=loras["a"], mask=left, weight=0.0)).images[0]
    np.testing.assert_allclose(muted, recon, atol=1e-5)  # weight 0: the content there (and everywhere)
    assert_same(before, snapshot(tiny_sd))
    assert not getattr(tiny_sd.unet, "peft_config", None)
    # Reference rows of the trajectory strategy run without the adapter: same result as cached features.
    live = run(tiny_sd, content, StyleCondition(lora=loras["a"], mask=left), cache_strategy="trajectory")
    np.testing.assert_allclose(live.images[0], out, atol=1e-3)


def test_styleid_and_lora_regions_in_one_call(tiny_sd, loras, scene):
    content, style, left = scene
    recon = reconstruction(tiny_sd, content)
    middle = np.zeros_like(left)
    middle[8:56, 8:56] = True
    styleid_region, lora_region = left & middle, ~left & middle
    styleid_only = run(tiny_sd, content, StyleCondition(image=style, mask=styleid_region)).images[0]
    lora_only = run(tiny_sd, content, StyleCondition(lora=loras["a"], mask=lora_region)).images[0]
    result = run(
        tiny_sd,
        content,
        [StyleCondition(image=style, mask=styleid_region), StyleCondition(lora=loras["a"], mask=lora_region)],
    )
    out = result.images[0]
    assert result.unet_evals == 2 * 3 + 2 * 3  # sampling: 2 rows; inversion: content + style, no extra
    outside = ~middle
    np.testing.assert_allclose(out[outside], recon[outside], atol=1e-5)
    core_left, core_right = (slice(12, 52), slice(12, 28)), (slice(12, 52), slice(36, 52))
    for core, own, other in ((core_left, styleid_only, lora_only), (core_right, lora_only, styleid_only)):
        assert np.abs(out[core] - own[core]).mean() < np.abs(out[core] - other[core]).mean()
        assert np.abs(out[core] - recon[core]).mean() > 0.01


def test_a_lora_row_gets_no_injection_and_no_adain(tiny_sd, loras, scene):
    """A region without a reference image does not depend on the image its injection slot borrows: with the
    StyleID region muted (weight 0), the output is the LoRA row alone, as when the slot borrows the content."""
    content, style, _ = scene
    everywhere = np.ones((SIZE, SIZE))
    alone = run(tiny_sd, content, StyleCondition(lora=loras["a"], mask=everywhere)).images[0]
    beside = run(
        tiny_sd,
        content,
        [StyleCondition(image=style, weight=0.0), StyleCondition(lora=loras["a"], mask=everywhere)],
    ).images[0]
    np.testing.assert_allclose(beside, alone, atol=1e-4)


def test_pipeline_restored_after_a_failing_call(tiny_sd, loras, scene, token_adapter):
    content, style, left = scene
    before = snapshot(tiny_sd)

    def boom(pipe, step, timestep, kwargs):
        raise RuntimeError("boom")

    regions = [
        StyleCondition(image=style, mask=left),
        StyleCondition(lora=loras["a"], embedding=torch.ones(16), mask=~left),
    ]
    with pytest.raises(RuntimeError, match="boom"):
        run(tiny_sd, content, regions, style_token_adapter=token_adapter, callback_on_step_end=boom)
    assert_same(before, snapshot(tiny_sd))
    assert not getattr(tiny_sd.unet, "peft_config", None)


# ---------------------------------------------------------------------------------------------- tokens
def test_token_regions_embedding_and_text(tiny_sd, token_adapter, scene):
    content, style, left = scene
    recon = reconstruction(tiny_sd, content)
    before = snapshot(tiny_sd)
    embedding = torch.randn(16, generator=torch.Generator().manual_seed(3))
    tokens = run(
        tiny_sd, content, StyleCondition(embedding=embedding, mask=left), style_token_adapter=token_adapter
    ).images[0]
    np.testing.assert_allclose(tokens[~left], recon[~left], atol=1e-5)
    # An untrained adapter (zero value projections) leaves the row the content's DDIM reconstruction.
    untrained = StyleTokenAdapter.for_unet(tiny_sd.unet, 16, tiny_sd.text_encoder)
    base = run(
        tiny_sd, content, StyleCondition(embedding=embedding, mask=left), style_token_adapter=untrained
    ).images[0]
    assert np.abs(tokens - base)[left].mean() > 1e-3
    # Text styles next to a StyleID region: the token row alone gets tokens (the StyleID row is unchanged).
    regions = [StyleCondition(image=style, mask=left), StyleCondition(text="thick ink", mask=~left)]
    mixed = run(tiny_sd, content, regions, style_token_adapter=token_adapter).images[0]
    untouched = run(tiny_sd, content, regions, style_token_adapter=untrained).images[0]
    assert np.abs(mixed - untouched)[:, 40:].mean() > 1e-3
    # With the token region muted, the StyleID row alone is the output: no tokens leaked into it.
    everywhere = np.ones((SIZE, SIZE))
    styleid = run(tiny_sd, content, StyleCondition(image=style, mask=everywhere)).images[0]
    muted = [StyleCondition(image=style, mask=everywhere), StyleCondition(text="thick ink", weight=0.0)]
    np.testing.assert_allclose(
        run(tiny_sd, content, muted, style_token_adapter=token_adapter).images[0], styleid, atol=1e-4
    )
    assert_same(before, snapshot(tiny_sd))


# ---------------------------------------------------------------------------------------------- refusals
def test_bad_input_is_refused_before_the_unet_runs(tiny_sd, loras, token_adapter, scene, tmp_path):
    content, style, left = scene
    calls = []
    handle = tiny_sd.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"style\[1\]\.lora: cannot read"):
            run(tiny_sd, content, [style, StyleCondition(lora=loras["garbage"], mask=left)])
        with pytest.raises(ValueError, match=r"style\[0\]\.lora: .*another architecture"):
            run(tiny_sd, content, StyleCondition(lora=loras["wide"], mask=left))
        with pytest.raises(FileNotFoundError, match=r"style\[0\]\.lora"):
            run(tiny_sd, content, StyleCondition(lora=tmp_path / "missing", mask=left))
        dora = tmp_path / "dora"
        dora.mkdir()
        state = load_file(str(Path(loras["a"]) / "pytorch_lora_weights.safetensors"))
        key = next(iter(state)).rsplit(".lora", 1)[0] + ".lora_magnitude_vector"
        save_file({**state, key: torch.ones(4)}, str(dora / "pytorch_lora_weights.safetensors"))
        with pytest.raises(ValueError, match=r"style\[0\]\.lora: .*DoRA"):
            run(tiny_sd, content, StyleCondition(lora=dora, mask=left))
        with pytest.raises(AdapterCompatibilityError, match=r"style\[0\]\.embedding has shape \(12,\)"):
            run(
                tiny_sd,
                content,
                StyleCondition(embedding=torch.ones(12), mask=left),
                style_token_adapter=token_adapter,
            )
        no_text = StyleTokenAdapter.for_unet(tiny_sd.unet, 16)
        with pytest.raises(AdapterCompatibilityError, match=r"style\[0\]\.text: .*no text head"):
            run(tiny_sd, content, StyleCondition(text="ink", mask=left), style_token_adapter=no_text)
        with pytest.raises(ValueError, match=r"style\[0\]: StyleID needs StyleCondition.image"):
            run(tiny_sd, content, StyleCondition(lora=loras["a"]))  # no mask anywhere: plain StyleID
        with pytest.raises(ValueError, match="styleid-official"):
            run(tiny_sd, content, StyleCondition(lora=loras["a"], mask=left), layers="styleid-official")
        from stylekit.lora_style import LoRAStyle

        with pytest.raises(ValueError, match="conditioners: a LoRAStyle cannot be combined"):
            run(
                tiny_sd,
                content,
                StyleCondition(lora=loras["a"], mask=left),
                conditioners=[LoRAStyle(style=loras["b"])],
            )
        tiny_sd.load_lora_weights(str(loras["b"]), adapter_name="user")
        try:
            with pytest.raises(ValueError, match=r"already has LoRA adapter\(s\) \['user'\]"):
                run(tiny_sd, content, StyleCondition(lora=loras["a"], mask=left))
        finally:
            tiny_sd.unload_lora_weights()
    finally:
        handle.remove()
    assert not calls, "the UNet ran before the input was refused"


def test_sdxl_lora_region(tiny_sdxl, scene, tmp_path):
    content, _, left = scene
    before = snapshot(tiny_sdxl)
    lora = write_lora(tmp_path / "xl", tiny_sdxl.unet, 4)
    out = run(tiny_sdxl, content, StyleCondition(lora=lora, mask=left), num_inference_steps=2).images[0]
    recon = reconstruction(tiny_sdxl, content)
    np.testing.assert_allclose(out[~left], recon[~left], atol=1e-4)
    assert np.abs(out - recon)[left].mean() > 0.01
    assert_same(before, snapshot(tiny_sdxl))


# ------------------------------------------------------------------- both cache strategies, style guidance
def test_strategies_agree_with_style_guidance_and_regional_lora_plus_tokens(
    tiny_sd, loras, token_adapter, scene
):
    """StyleID's trajectory strategy prepends reference rows and style guidance appends a copy of the text
    rows: every per-row piece (injection pairs, regional adapter names) must follow both."""
    from stylekit.tokens import StyleTokens

    content, style, left = scene
    embedding = torch.randn(16, generator=torch.Generator().manual_seed(0))

    def tokens(scale):
        return StyleTokens(token_adapter, StyleCondition(embedding=embedding), style_guidance_scale=scale)

    contents = [content, make_image(5, SIZE)]
    out = {
        (strategy, scale): run(
            tiny_sd, contents, style, cache_strategy=strategy, conditioners=[tokens(scale)]
        ).images
        for strategy in ("features", "trajectory")
        for scale in (None, 1.0, 3.0)
    }
    reference = out[("features", None)]
    assert np.abs(out[("features", 3.0)] - reference).max() > 1e-3  # guidance acts
    for scale in (None, 1.0, 3.0):  # the strategies agree
        assert np.abs(out[("trajectory", scale)] - out[("features", scale)]).max() < 1e-4, scale
    for strategy in ("features", "trajectory"):  # guidance at scale 1 is the tokens without guidance
        assert np.abs(out[(strategy, 1.0)] - reference).max() < 1e-4, strategy

    def grid(strategy):  # 2 contents x 2 styles: as many reference rows as stylized rows (looks like CFG)
        return run(
            tiny_sd, contents, [style, content], cache_strategy=strategy, conditioners=[tokens(3.0)]
        ).images

    fresh = grid("trajectory")
    tiny_sd._guidance_scale = 7.5  # what a stock text-to-image call leaves behind
    try:
        after_stock = {strategy: grid(strategy) for strategy in ("features", "trajectory")}
    finally:
        tiny_sd.__dict__.pop("_guidance_scale", None)
    assert np.abs(after_stock["trajectory"] - fresh).max() < 1e-4
    assert np.abs(after_stock["trajectory"] - after_stock["features"]).max() < 1e-4

    regional = [StyleCondition(image=style, mask=left), StyleCondition(lora=loras["a"], mask=~left)]
    by_strategy = [
        run(
            tiny_sd,
            content,
            regional,
            cache_strategy=strategy,
            conditioners=[tokens(None)],
            style_token_adapter=token_adapter,
        ).images
        for strategy in ("features", "trajectory")
    ]
    assert np.abs(by_strategy[0] - by_strategy[1]).max() < 1e-4
    with pytest.raises(ValueError, match="style_guidance_scale cannot be combined with regional LoRA"):
        run(tiny_sd, content, regional, conditioners=[tokens(2.0)], style_token_adapter=token_adapter)

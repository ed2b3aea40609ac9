"""The LoRAStyle conditioner: composition with StyleID, weights, exact restoration, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_style_images, write_wider_lora

from stylekit import StyleCondition
from stylekit.adapters.train_lora import TrainLoRAConfig, run
from stylekit.lora_style import LoRAStyle


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora_style")
    data = write_style_images(root / "data")
    out = root / "out"
    run(
        TrainLoRAConfig(
            method="blora",
            pretrained_model_name_or_path="tiny-sd",
            instance_data_dir=str(data),
            instance_prompt="a [v]",
            output_dir=str(out),
            rank=2,
            max_train_steps=3,
            checkpointing_steps=0,
            learning_rate=5e-2,
        )
    )
    return out


def snapshot(pipe) -> tuple[dict[str, torch.Tensor], list[str], dict[str, type], dict[str, bool]]:
    state = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    trainable = {
        f"{component}.{k}": p.requires_grad
        for component in ("unet", "text_encoder", "vae")
        for k, p in getattr(pipe, component).named_parameters()
    }
    return state, [n for n, _ in pipe.unet.named_modules()], processors, trainable


def assert_same(before, after) -> None:
    assert before[1] == after[1]  # no LoRA wrapper left behind
    assert before[2] == after[2]
    assert before[3] == after[3]  # peft's load freezes every parameter: set back
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def stylize(pipe, images, conditioners=()):
    return pipe(
        content_image=images[0],
        style=images[1],
        num_inference_steps=2,
        output_type="np",
        conditioners=list(conditioners),
    ).images


@pytest.mark.parametrize("fuse", [False, True])
def test_composes_with_styleid_and_restores_the_pipeline(tiny_sd, images, adapters, fuse):
    before = snapshot(tiny_sd)
    plain = stylize(tiny_sd, images)
    lora = LoRAStyle(content=adapters / "content", style=adapters / "style", style_weight=4.0, fuse=fuse)
    styled = stylize(tiny_sd, images, [lora])
    assert np.abs(styled - plain).max() > 0
    assert_same(before, snapshot(tiny_sd))
    assert np.array_equal(stylize(tiny_sd, images), plain)


def test_zero_weights_equal_no_lora_and_per_block_weights_apply(tiny_sd, images, adapters):
    plain = stylize(tiny_sd, images)
    off = LoRAStyle(
        content=adapters / "content", style=adapters / "style", content_weight=0.0, style_weight=0.0
    )
    np.testing.assert_allclose(stylize(tiny_sd, images, [off]), plain, atol=1e-6)
    # the SD style adapter lives in up_blocks.3: a per-block dict that zeroes up block 3 switches it off,
    # zeroing another block does not
    zero_up3 = LoRAStyle(style=adapters / "style", style_weight={"up": {"block_3": 0.0}})
    np.testing.assert_allclose(stylize(tiny_sd, images, [zero_up3]), plain, atol=1e-6)
    zero_up2 = LoRAStyle(style=adapters / "style", style_weight={"up": {"block_2": 0.0}})
    assert np.abs(stylize(tiny_sd, images, [zero_up2]) - plain).max() > 1e-4
    on = LoRAStyle(style=adapters / "style", style_weight={"up": {"block_3": 4.0}})
    assert np.abs(stylize(tiny_sd, images, [on]) - plain).max() > 0


def test_mid_weight_reaches_the_mid_block_resnets(tiny_sd, images, tmp_path):
    """A LoCon adapter on the mid block's ResNets only: {"mid": 0} switches it off (diffusers alone would
    leave those layers at 1.0), {"mid": 1} does not."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    state = {}
    for name in ("mid_block.resnets.0.conv1", "mid_block.resnets.1.conv2"):
        conv = tiny_sd.unet.get_submodule(name)
        state[f"unet.{name}.lora_A.weight"] = (
            torch.randn(2, conv.in_channels, 3, 3, generator=generator) * 0.1
        )
        state[f"unet.{name}.lora_B.weight"] = torch.randn(conv.out_channels, 2, 1, 1, generator=generator)
    save_file(state, str(tmp_path / "pytorch_lora_weights.safetensors"))
    plain = stylize(tiny_sd, images)
    off = LoRAStyle(style=tmp_path, style_weight={"mid": 0.0})
    np.testing.assert_allclose(stylize(tiny_sd, images, [off]), plain, atol=1e-6)
    on = LoRAStyle(style=tmp_path, style_weight={"mid": 1.0})
    assert np.abs(stylize(tiny_sd, images, [on]) - plain).max() > 1e-3


def test_restored_after_a_failing_call(tiny_sd, images, adapters):
    before = snapshot(tiny_sd)

    def boom(pipe, step, timestep, kwargs):
        raise RuntimeError("boom")

    lora = LoRAStyle(style=adapters / "style", fuse=True)
    with pytest.raises(RuntimeError, match="boom"):
        tiny_sd(
            content_image=images[0],
            style=images[1],
            num_inference_steps=2,
            conditioners=[lora],
            callback_on_step_end=boom,
        )
    assert_same(before, snapshot(tiny_sd))


def test_two_lorastyles_with_one_name_are_refused_clearly(tiny_sd, images, adapters):
    before = snapshot(tiny_sd)
    twice = [LoRAStyle(style=adapters / "style"), LoRAStyle(style=adapters / "content")]
    with pytest.raises(ValueError, match="another LoRAStyle in this call.*adapters=\\{name: path\\}"):
        stylize(tiny_sd, images, twice)
    assert_same(before, snapshot(tiny_sd))
    named = [LoRAStyle(adapters={"a": adapters / "style"}), LoRAStyle(adapters={"b": adapters / "content"})]
    assert stylize(tiny_sd, images, named).shape[0] == 1
    assert_same(before, snapshot(tiny_sd))


def test_keeps_an_adapter_the_pipeline_already_had(tiny_sd, images, adapters):
    tiny_sd.load_lora_weights(str(adapters / "content"), adapter_name="mine")
    tiny_sd.set_adapters(["mine"], [0.5])
    try:
        before = snapshot(tiny_sd)
        scales = {n: dict(m.scaling) for n, m in tiny_sd.unet.named_modules() if hasattr(m, "scaling")}
        stylize(tiny_sd, images, [LoRAStyle(style=adapters / "style")])
        assert_same(before, snapshot(tiny_sd))
        assert scales == {
            n: dict(m.scaling) for n, m in tiny_sd.unet.named_modules() if hasattr(m, "scaling")
        }
        assert tiny_sd.get_active_adapters() == ["mine"]
    finally:
        tiny_sd.unload_lora_weights()


def test_style_condition_lora_and_text_to_image(tiny_sd, images, adapters):
    from diffusers import StableDiffusionPipeline

    lora = LoRAStyle.from_conditions(StyleCondition(lora=adapters / "style", weight=1.0, steps=(0.0, 0.5)))
    assert [s.name for s in lora.specs] == ["style"]
    plain = stylize(tiny_sd, images)
    assert np.abs(stylize(tiny_sd, images, [lora]) - plain).max() > 0
    with pytest.raises(ValueError, match="lora"):
        LoRAStyle.from_conditions(StyleCondition(text="watercolour"))

    text = StableDiffusionPipeline(**tiny_sd.components)
    text.set_progress_bar_config(disable=True)
    before = snapshot(text)
    with LoRAStyle(style=adapters / "style", style_weight=4.0).applied(text):
        styled = text(
            "a [v]", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images
    plain = text(
        "a [v]", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert np.abs(styled - plain).max() > 0
    assert_same(before, snapshot(text))


def test_adapter_steps_in_a_stock_pipeline(tiny_sd, adapters):
    """``style_steps`` places the style adapter in any diffusers pipeline: (0.5, 1) of a 4-step schedule
    equals switching the adapter on by hand after step 2; a window holding no step equals the content
    adapter alone; the content adapter keeps the whole schedule."""
    from diffusers import StableDiffusionPipeline

    text = StableDiffusionPipeline(**tiny_sd.components)
    text.set_progress_bar_config(disable=True)

    def generate(**kwargs):
        return text(
            "a [v]",
            num_inference_steps=4,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        ).images

    before = snapshot(text)
    content, style = adapters / "content", adapters / "style"
    with LoRAStyle(content=content, style=style, style_weight=4.0, style_steps=(0.5, 1.0)).applied(text):
        late = generate()
    with LoRAStyle(content=content, style=style, style_weight=4.0, style_steps=(0.9, 1.0)).applied(text):
        never = generate()
    with LoRAStyle(content=content, style=style, style_weight=4.0).applied(text):
        whole = generate()
    with LoRAStyle(content=content).applied(text):
        content_only = generate()
    assert_same(before, snapshot(text))

    def switch_on(pipe, step, timestep, outputs):  # after step index 1, i.e. from the third step on
        if step == 1:
            pipe.set_adapters(["content", "style"], adapter_weights=[1.0, 4.0])
        return outputs

    text.load_lora_weights(str(content), adapter_name="content")
    text.load_lora_weights(str(style), adapter_name="style")
    try:
        text.set_adapters(["content", "style"], adapter_weights=[1.0, 0.0])
        by_hand = generate(callback_on_step_end=switch_on)
    finally:
        text.unload_lora_weights()
    np.testing.assert_array_equal(late, by_hand)
    np.testing.assert_array_equal(never, content_only)
    assert np.abs(late - whole).max() > 0 and np.abs(late - content_only).max() > 0


def test_lora_for_another_architecture_is_refused(tiny_sdxl, tiny_sd, images, adapters, tmp_path):
    lora = LoRAStyle(style=adapters / "style")
    with pytest.raises(ValueError, match="another architecture"):
        lora.prepare(tiny_sdxl)
    # same module names, other widths
    bad = write_wider_lora(adapters / "style", tmp_path / "bad")
    with pytest.raises(ValueError, match="another architecture"):
        tiny_sd(
            content_image=images[0],
            style=images[1],
            num_inference_steps=2,
            conditioners=[LoRAStyle(style=bad)],
        )
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_text("not a safetensors file")
    with pytest.raises(ValueError, match="cannot read .*corrupt.safetensors as a LoRA"):
        LoRAStyle(style=corrupt).prepare(tiny_sd)


def test_bad_arguments(adapters, tmp_path):
    with pytest.raises(ValueError, match="at least one adapter"):
        LoRAStyle()
    with pytest.raises(FileNotFoundError):
        LoRAStyle(style=tmp_path / "missing")
    with pytest.raises(ValueError, match="style_weight"):
        LoRAStyle(style=adapters / "style", style_weight=float("nan"))
    for steps in ((0.5, 0.5), (-0.1, 1.0), (0.0, 1.5), (0.2,)):
        with pytest.raises(ValueError, match="style steps"):
            LoRAStyle(style=adapters / "style", style_steps=steps)
    with pytest.raises(ValueError, match="fuse"):
        LoRAStyle(style=adapters / "style", fuse=True, style_steps=(0.0, 0.5))

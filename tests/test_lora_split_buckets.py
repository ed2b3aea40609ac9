"""B4M frozen halves as real frozen tensors, and aspect-ratio buckets of the LoRA trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import write_style_images
from safetensors.torch import load_file

from stylekit.adapters import lora_b4m, train_lora
from stylekit.adapters.lora_data import bucket_sizes, load_image_set, nearest_bucket
from stylekit.adapters.train_lora import TrainLoRAConfig, lora_weights, run
from stylekit.data import style_set

DIFFUSERS_LORA_SUFFIXES = (".lora.down.weight", ".lora.up.weight", ".lora_A.weight", ".lora_B.weight")
BLOCKS = ("up_blocks.3.attentions.0", "up_blocks.3.resnets.0")  # linear and convolution LoRA layers


def b4m_unet(seed: int = 0) -> torch.nn.Module:
    """A fresh tiny-sd UNet with a rank-2 peft LoRA on an attention block and a ResNet, initialised for B4M."""
    from peft import LoraConfig

    from stylekit import load_pipeline
    from stylekit.lora import target_modules

    unet = load_pipeline("tiny-sd").unet
    unet.requires_grad_(False)
    config = LoraConfig(
        r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=target_modules(unet, BLOCKS)
    )
    torch.manual_seed(seed)
    unet.add_adapter(config)
    lora_b4m.init_partly_learnable(unet, seed)
    for name, param in unet.named_parameters():
        if ".lora_" in name:
            param.requires_grad_(True)
    return unet


def unet_loss(unet: torch.nn.Module, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 4, unet.config.cross_attention_dim, generator=generator)
    return unet(sample, torch.tensor([10 * step + 1]), encoder_hidden_states=context).sample.pow(2).mean()


def test_b4m_split_trains_only_half_size_tensors_like_the_masked_full_ones():
    # reference: the frozen halves as a gradient mask on full-size parameters, written back after each step
    masked = b4m_unet()
    full = {n: p for n, p in masked.named_parameters() if ".lora_" in n}
    frozen_values = {}
    for name, param in full.items():
        dim = lora_b4m.FROZEN_DIM[name.split(".")[-3]]
        frozen_values[name] = (dim, param.detach().narrow(dim, 0, param.shape[dim] // 2).clone())
    opt_masked = torch.optim.AdamW(list(full.values()), lr=1e-2, weight_decay=0.1)

    split = b4m_unet()
    frozen_count = lora_b4m.split_frozen_halves(split)
    trainable = [p for p in split.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == frozen_count == sum(p.numel() for p in full.values()) // 2
    for _, _, linear in lora_b4m.lora_projections(split):
        assert not linear.full.requires_grad and "full" in dict(linear.named_buffers())
        assert not linear.frozen.requires_grad
        assert linear.weight.shape[linear.dim] == 2 * lora_b4m.learnable_parameter(linear).shape[linear.dim]
    opt_split = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    initial = {n: w.detach().clone() for n, w in lora_weights(split).items()}

    for step in range(3):
        unet_loss(masked, step).backward()
        for name, param in full.items():
            dim, values = frozen_values[name]
            param.grad.narrow(dim, 0, values.shape[dim]).zero_()
        opt_masked.step()
        opt_masked.zero_grad()
        with torch.no_grad():
            for name, param in full.items():
                dim, values = frozen_values[name]
                param.narrow(dim, 0, values.shape[dim]).copy_(values)

        unet_loss(split, step).backward()
        assert all(p.grad is not None and p.grad.shape == p.shape for p in trainable)  # half-size grads
        opt_split.step()
        opt_split.zero_grad()
    state = opt_split.state_dict()["state"]
    assert sum(s["exp_avg"].numel() for s in state.values()) == frozen_count  # half-size optimizer state

    reference = {n: p.detach() for n, p in full.items()}
    got = lora_weights(split)
    assert set(got) == set(reference)
    moved = False
    for name, value in got.items():
        torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=0)
        dim, values = frozen_values[name]
        assert torch.equal(value.narrow(dim, 0, values.shape[dim]), values)  # frozen half untouched
        moved |= not torch.equal(value, initial[name])
    assert moved

    lora_b4m.merge_frozen_halves(split)
    merged = {n: p for n, p in split.named_parameters() if ".lora_" in n}
    assert set(merged) == set(reference) and all(merged[n].shape == reference[n].shape for n in merged)


def test_riemannian_precondition_matches_peft_on_plain_lora():
    """On plain 2-D LoRA layers the preconditioned step equals peft's create_riemannian_optimizer (SGD, lr 1)."""
    from peft.optimizers import create_riemannian_optimizer

    ours, reference = b4m_unet(), b4m_unet()  # B4M values (non-zero up), but plain full-size parameters
    for unet in (ours, reference):
        for name, module in unet.named_modules():  # peft's preconditioner sees 2-D LoRA layers only
            if ".resnets." in name and hasattr(module, "lora_A"):
                module.lora_A["default"].weight.requires_grad_(False)
                module.lora_B["default"].weight.requires_grad_(False)
    unet_loss(ours, 0).backward()
    unet_loss(reference, 0).backward()
    lora_b4m.riemannian_precondition(ours, reg=0.01)
    with torch.no_grad():
        for param in ours.parameters():
            if param.requires_grad and param.grad is not None:
                param.sub_(param.grad)
    create_riemannian_optimizer(reference, torch.optim.SGD, lr=1.0, reg=0.01).step()
    compared = 0
    pairs = zip(ours.named_parameters(), reference.named_parameters(), strict=True)
    for (_, got), (_, expected) in pairs:
        if got.requires_grad:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
            compared += 1
    assert compared > 0


def test_riemannian_precondition_of_split_halves_is_the_slice_of_the_full_one():
    """Preconditioning uses the full factors (frozen halves included), also on convolutions: a split
    projection's preconditioned gradient is the learnable block of the full-size one."""
    full, split = b4m_unet(), b4m_unet()
    lora_b4m.split_frozen_halves(split)
    unet_loss(full, 1).backward()
    unet_loss(split, 1).backward()
    assert lora_b4m.riemannian_precondition(full, reg=0.01) == lora_b4m.riemannian_precondition(
        split, reg=0.01
    )
    full_params = dict(full.named_parameters())
    checked = set()
    for name, kind, projection in lora_b4m.lora_projections(split):
        reference = full_params[f"{name}.{kind}.default.weight"].grad
        block = reference.narrow(
            projection.dim, projection.size, reference.shape[projection.dim] - projection.size
        )
        torch.testing.assert_close(projection.learnable.grad, block, rtol=1e-4, atol=1e-7)
        checked.add(projection.conv is not None)
    assert checked == {True, False}  # linear and convolution layers


def test_b4m_run_reports_half_trainable_and_writes_full_size_files(tmp_path):
    data = write_style_images(tmp_path / "data")
    out = tmp_path / "out"

    def train(output_dir: Path, **extra: Any) -> dict[str, torch.Tensor]:
        run(
            TrainLoRAConfig(
                method="b4m",
                pretrained_model_name_or_path="tiny-sd",
                instance_data_dir=str(data),
                instance_prompt="a [v]",
                output_dir=str(output_dir),
                rank=2,
                max_train_steps=2,
                checkpointing_steps=0,
                lora_blocks=list(BLOCKS),
                **extra,
            )
        )
        return load_file(str(output_dir / "content" / "pytorch_lora_weights.safetensors"))

    saved = train(out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["trainable_params"] == summary["frozen_params"] > 0
    assert summary["loop_memory"]["kind"] == "cpu_rss" and summary["loop_memory"]["peak_bytes"] > 0
    assert sum(v.numel() for v in saved.values()) == 2 * summary["trainable_params"]
    # diffusers names attention LoRAs lora.down/lora.up and keeps peft's lora_A/lora_B on convolutions
    assert all(k.startswith("unet.") and k.endswith(DIFFUSERS_LORA_SUFFIXES) for k in saved)
    assert any(".resnets.0.conv1.lora_A." in k for k in saved) and any(".to_q.lora.down." in k for k in saved)

    # Riemannian preconditioning changes the trained (learnable) halves and never the frozen ones
    preconditioned = train(tmp_path / "preconditioned", riemannian_precondition=True)
    assert preconditioned.keys() == saved.keys()
    changed = False
    for key, value in saved.items():
        dim = 1 if (".lora_A." in key or ".lora.down." in key) else 0
        half = value.shape[dim] // 2
        assert torch.equal(preconditioned[key].narrow(dim, 0, half), value.narrow(dim, 0, half))
        changed |= not torch.equal(preconditioned[key], value)
    assert changed


# ------------------------------------------------------------------------------------------ buckets
@pytest.mark.parametrize("resolution, step, max_ratio", [(64, 32, 2.0), (128, 32, 2.0), (128, 64, 4.0)])
def test_bucket_sizes_keep_area_step_and_ratio(resolution, step, max_ratio):
    sizes = bucket_sizes(resolution, step, max_ratio)
    assert (resolution, resolution) in sizes
    for width, height in sizes:
        assert width % step == 0 and height % step == 0
        assert width * height <= resolution**2
        assert 1 / max_ratio <= width / height <= max_ratio
        assert (height, width) in sizes
    assert nearest_bucket(300, 100, sizes)[0] >= nearest_bucket(300, 100, sizes)[1]
    assert nearest_bucket(100, 100, sizes) == (resolution, resolution)
    with pytest.raises(ValueError, match="bucket step"):
        bucket_sizes(16, 32)


def write_aspect_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = style_set(np.random.default_rng(3), 4, size=96).images
    for i, image in enumerate(images):
        size = (192, 96) if i % 2 else (96, 192)  # two landscape, two portrait
        PIL.Image.fromarray(image).resize(size).save(folder / f"{i}.png")
    return folder


def test_aspect_buckets_give_one_shape_per_batch(tmp_path, monkeypatch):
    data = write_aspect_images(tmp_path / "data")
    aux = tmp_path / "aux"
    aux.mkdir()
    PIL.Image.fromarray(style_set(np.random.default_rng(4), 1, size=64).images[0]).save(aux / "a.png")
    shapes: list[set[tuple[int, ...]]] = []
    original = train_lora.draw_batch

    def spy(sets, *args, **kwargs):
        batch = original(sets, *args, **kwargs)
        shapes.append({tuple(s.latent_mean.shape[2:]) for s in sets} | {tuple(batch.latents.shape[2:])})
        return batch

    monkeypatch.setattr(train_lora, "draw_batch", spy)
    out = tmp_path / "out"
    run(
        TrainLoRAConfig(
            method="dreambooth",
            pretrained_model_name_or_path="tiny-sd",
            instance_data_dir=str(data),
            instance_prompt="a [v]",
            aux_data_dir=[str(aux)],
            aux_prompt=["a picture"],
            output_dir=str(out),
            rank=2,
            resolution=128,
            aspect_buckets=True,
            bucket_max_ratio=4.0,
            train_batch_size=2,
            max_train_steps=4,
            checkpointing_steps=0,
            lora_blocks=list(BLOCKS),
        )
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["buckets"] == {"64x192": 2, "192x64": 2}  # tiny-sd: sides multiples of 8 x 8
    assert all(len(batch) == 1 for batch in shapes)  # every batch (instance + aux rows) has one shape
    assert {next(iter(b)) for b in shapes} == {(24, 8), (8, 24)}  # both buckets trained (latents /8)
    assert all(math.isfinite(h["loss"]) for h in summary["history"])


def test_without_buckets_mixed_aspect_images_are_cropped_square(tmp_path):
    data = write_aspect_images(tmp_path / "data")
    assert load_image_set(data, "a [v]", 32, "instance", "--instance_data_dir").pixels.shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="--bucket_max_ratio"):
        TrainLoRAConfig(
            output_dir=str(tmp_path), instance_data_dir=str(data), instance_prompt="x", bucket_max_ratio=0.5
        )
    with pytest.raises(ValueError, match="--aspect_buckets"):
        TrainLoRAConfig(
            output_dir=str(tmp_path),
            instance_data_dir=str(data),
            instance_prompt="x",
            aspect_buckets=True,
            style_loss_weight=1.0,
        )


def test_b4m_resume_reproduces_uninterrupted_run_exactly(tmp_path):
    from safetensors.torch import load_file

    from stylekit.adapters.train_lora import list_checkpoints

    data = write_aspect_images(tmp_path / "data")

    def config(out: Path, steps: int, **extra) -> TrainLoRAConfig:
        return TrainLoRAConfig(
            method="b4m",
            b4m_role="style",
            pretrained_model_name_or_path="tiny-sd",
            instance_data_dir=str(data),
            instance_prompt="a [v]",
            output_dir=str(out),
            rank=2,
            max_train_steps=steps,
            checkpointing_steps=2,
            learning_rate=1e-2,
            learning_rate_2=1e-3,
            lora_blocks=list(BLOCKS),
            **extra,
        )

    run(config(tmp_path / "full", 4))
    run(config(tmp_path / "cut", 2))
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    run(config(tmp_path / "cut", 4, resume_from_checkpoint="latest"))
    full = load_file(str(tmp_path / "full" / "style" / "pytorch_lora_weights.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "style" / "pytorch_lora_weights.safetensors"))
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)


def test_partly_frozen_linear_stays_linked_after_a_move():
    """After ``.double()`` (or ``.to(device)``) the learnable block is still a view of the full weight, so
    optimizer updates reach the forward pass; the frozen block is unchanged."""
    layer = lora_b4m.PartlyFrozenProjection(torch.nn.Linear(6, 4, bias=False), dim=1, size=3)
    parameter = layer.learnable
    layer.double()
    assert layer.learnable is parameter and layer.full.dtype == torch.float64
    frozen = layer.frozen.clone()
    with torch.no_grad():
        layer.learnable.add_(1.0)
    torch.testing.assert_close(layer.full[:, 3:], layer.learnable)
    torch.testing.assert_close(layer.frozen, frozen)
    x = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.full.T)


def test_sdxl_buckets_condition_on_the_bucket_size(tmp_path, monkeypatch):
    """SDXL's size time ids follow each batch's bucket (height, width, 0, 0, height, width)."""
    from diffusers import UNet2DConditionModel

    data = write_aspect_images(tmp_path / "data")
    seen: list[tuple[tuple[int, int], list[float]]] = []
    forward = UNet2DConditionModel.forward

    def spy(self, sample, *args, **kwargs):
        ids = kwargs["added_cond_kwargs"]["time_ids"]
        seen.append((tuple(sample.shape[-2:]), ids[0].tolist()))
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    run(
        TrainLoRAConfig(
            method="dreambooth",
            pretrained_model_name_or_path="tiny-sdxl",
            instance_data_dir=str(data),
            instance_prompt="a [v]",
            output_dir=str(tmp_path / "out"),
            rank=2,
            resolution=128,
            aspect_buckets=True,
            bucket_max_ratio=4.0,
            max_train_steps=4,
            checkpointing_steps=0,
        )
    )
    shapes = {latent for latent, _ in seen}
    assert len(shapes) == 2 and all(h != w for h, w in shapes)  # a landscape and a portrait bucket
    for (h, w), ids in seen:
        assert ids == [h * 8, w * 8, 0, 0, h * 8, w * 8]

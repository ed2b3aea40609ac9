"""LoRA split training (stylekit.adapters.train_lora): training, files, resume, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import write_images
from safetensors.torch import load_file

from stylekit.adapters.lora_data import draw_batch, load_image_set
from stylekit.adapters.train_lora import (
    TrainLoRAConfig,
    list_checkpoints,
    main,
    parse_config,
    run,
    save_checkpoint,
)
from stylekit.data import style_set, subject_set
from stylekit.lora import KOHYA_WEIGHT_NAME, LORA_WEIGHT_NAME, block_of
from stylekit.lora_style import LoRAStyle
from stylekit.models import MINI_PATH

HAS_MINI = (MINI_PATH / "model_index.json").exists()


@pytest.fixture(scope="module")
def world_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    return {
        "style": write_images(root / "style", style_set(rng, 3, size=64).images),
        "subject": write_images(
            root / "subject", subject_set(rng, 3, shape=2, vary_style=True, size=64).images
        ),
    }


def tiny_config(out: Path, data: Path, **overrides) -> TrainLoRAConfig:
    values = dict(
        method="blora",
        pretrained_model_name_or_path="tiny-sd",
        instance_data_dir=str(data),
        instance_prompt="a picture in sks style",
        output_dir=str(out),
        rank=2,
        max_train_steps=4,
        checkpointing_steps=0,
        learning_rate=1e-3,
        seed=0,
    )
    values.update(overrides)
    return TrainLoRAConfig(**values)


def unet_state(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


# --------------------------------------------------------------------------------- mini: loss, files
@pytest.fixture(scope="module")
def mini_run(world_dirs, tmp_path_factory):
    if not HAS_MINI:
        pytest.skip("the bundled mini model is not present")
    out = tmp_path_factory.mktemp("mini_blora")
    config = tiny_config(
        out,
        world_dirs["style"],
        pretrained_model_name_or_path="mini",
        rank=4,
        max_train_steps=8,
        learning_rate=5e-3,
        output_kohya_format=True,
    )
    summary = run(config)
    return out, summary, config


def fixed_batch_loss(pipe, config: TrainLoRAConfig) -> float:
    """Epsilon MSE on a fixed draw (noise, timesteps) of the training images."""
    from diffusers import DDPMScheduler

    from stylekit.adapters.lora_data import cache_latents

    image_set = load_image_set(config.instance_data_dir, config.instance_prompt, 64, "instance", "x")
    cache_latents(pipe.vae, image_set)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    losses = []
    with torch.no_grad():
        for step in range(4):
            batch = draw_batch([image_set], 4, seed=123, step=step, micro=0, num_train_timesteps=1000)
            embeds, _ = pipe.encode_prompt(batch.prompts, "cpu", 1, False)
            noisy = scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
            pred = pipe.unet(noisy, batch.timesteps, encoder_hidden_states=embeds).sample
            losses.append(float((pred - batch.noise).pow(2).mean()))
    return float(np.mean(losses))


def test_loss_falls_when_overfitting_mini(mini_run):
    from stylekit import load_pipeline

    out, summary, config = mini_run
    assert len(summary["history"]) == 8
    pipe = load_pipeline("mini", kind="text-to-image")
    before = fixed_batch_loss(pipe, config)
    pipe.load_lora_weights(str(out / "content"), adapter_name="content")
    pipe.load_lora_weights(str(out / "style"), adapter_name="style")
    pipe.set_adapters(["content", "style"], [1.0, 1.0])
    after = fixed_batch_loss(pipe, config)
    assert after < before


@pytest.mark.parametrize("role", ["content", "style"])
def test_saved_adapter_loads_in_stock_diffusers_and_changes_only_its_blocks(mini_run, role):
    from diffusers import StableDiffusionPipeline

    out, _, _ = mini_run
    info = json.loads((out / role / "adapter_info.json").read_text())
    blocks = set(info["blocks"])
    keys = load_file(str(out / role / LORA_WEIGHT_NAME)).keys()
    assert keys and all(k.startswith("unet.") and (".lora." in k or ".lora_" in k) for k in keys)
    assert {block_of(k) for k in keys} == blocks  # a content file holds no style block and vice versa

    pipe = StableDiffusionPipeline.from_pretrained(MINI_PATH, torch_dtype=torch.float32)
    before = unet_state(pipe)
    pipe.load_lora_weights(str(out / role), adapter_name=role)
    pipe.fuse_lora(components=["unet"], adapter_names=[role])
    pipe.unload_lora_weights()
    after = unet_state(pipe)
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the adapter changed nothing"
    assert {block_of(k) for k in changed} <= blocks  # every other weight is identical

    # the kohya export holds the same update (lora_unet_* keys with .alpha)
    kohya = load_file(str(out / role / KOHYA_WEIGHT_NAME))
    assert any(k.endswith(".alpha") for k in kohya) and all(k.startswith("lora_unet_") for k in kohya)
    pipe2 = StableDiffusionPipeline.from_pretrained(MINI_PATH, torch_dtype=torch.float32)
    pipe2.load_lora_weights(str(out / role), weight_name=KOHYA_WEIGHT_NAME, adapter_name=role)
    pipe2.fuse_lora(components=["unet"], adapter_names=[role])
    pipe2.unload_lora_weights()
    kohya_after = unet_state(pipe2)
    assert max(float((kohya_after[k] - after[k]).abs().max()) for k in changed) < 1e-5

    # LoRAStyle takes the kohya file as it takes the diffusers folder
    def generate(lora: LoRAStyle) -> np.ndarray:
        with lora.applied(pipe2):
            return pipe2(
                "a picture", num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)
            ).images

    kwargs = {"content" if role == "content" else "style": out / role / KOHYA_WEIGHT_NAME}
    from_kohya = generate(LoRAStyle(**kwargs))
    from_folder = generate(LoRAStyle(**{name: out / role for name in kwargs}))
    assert np.abs(from_kohya - from_folder).max() < 1e-4


# --------------------------------------------------------------------------------- resume, checkpoints
def test_resume_reproduces_uninterrupted_run_exactly(world_dirs, tmp_path):
    common = dict(train_batch_size=2, gradient_accumulation_steps=2, checkpointing_steps=2)
    run(tiny_config(tmp_path / "full", world_dirs["style"], max_train_steps=4, **common))
    # "killed" after the checkpoint at step 2, then resumed with the same command
    run(tiny_config(tmp_path / "cut", world_dirs["style"], max_train_steps=2, **common))
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    resumed = run(
        tiny_config(
            tmp_path / "cut",
            world_dirs["style"],
            max_train_steps=4,
            resume_from_checkpoint="latest",
            **common,
        )
    )
    assert resumed["steps"] == 4
    for role in ("content", "style"):
        full = load_file(str(tmp_path / "full" / role / LORA_WEIGHT_NAME))
        cut = load_file(str(tmp_path / "cut" / role / LORA_WEIGHT_NAME))
        assert full.keys() == cut.keys()
        assert all(torch.equal(full[k], cut[k]) for k in full)


def test_resume_with_other_flags_and_fresh_runs_into_a_used_folder_are_refused(world_dirs, tmp_path):
    common = dict(train_batch_size=2, checkpointing_steps=1, max_train_steps=1)
    run(tiny_config(tmp_path, world_dirs["style"], rank=2, **common))
    first = list_checkpoints(tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint-1 was written with --rank 2, this run has 4"):
        run(tiny_config(tmp_path, world_dirs["style"], rank=4, resume_from_checkpoint="latest", **common))
    # the same folder written another way, or another precision, is the same run
    same = dict(common, mixed_precision="no")
    run(tiny_config(tmp_path, f"{world_dirs['style']}/", rank=2, resume_from_checkpoint="latest", **same))
    with pytest.raises(ValueError, match=r"--learning_rate 0.001, this run has 0.5"):
        run(
            tiny_config(
                tmp_path,
                world_dirs["style"],
                rank=2,
                learning_rate=0.5,
                resume_from_checkpoint="latest",
                **common,
            )
        )
    # a fresh run would replace (and the limit delete) the earlier run's checkpoints: refused
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run .*--overwrite_output_dir"):
        run(tiny_config(tmp_path, world_dirs["subject"], rank=2, seed=3, **common))
    assert list_checkpoints(tmp_path) == first
    # B4M break runs sharing a folder: the style run cannot resume the content run's checkpoint
    b4m = dict(method="b4m", rank=2, lora_blocks=["up_blocks.3.attentions.0"], **common)
    run(tiny_config(tmp_path / "b4m", world_dirs["subject"], b4m_role="content", **b4m))
    with pytest.raises(ValueError, match="written with --b4m_role 'content', this run has 'style'"):
        run(
            tiny_config(
                tmp_path / "b4m",
                world_dirs["style"],
                b4m_role="style",
                resume_from_checkpoint="latest",
                **b4m,
            )
        )
    # without checkpoints, an existing adapter folder of this run is refused too
    plain = tmp_path / "plain"
    run(tiny_config(plain, world_dirs["style"], rank=2, max_train_steps=1))
    with pytest.raises(ValueError, match="plain/content exists"):
        run(tiny_config(plain, world_dirs["style"], rank=2, max_train_steps=1))
    # --overwrite_output_dir starts again, deleting the old checkpoints first
    run(
        tiny_config(
            tmp_path,
            world_dirs["subject"],
            rank=2,
            seed=3,
            overwrite_output_dir=True,
            **{**common, "checkpointing_steps": 2, "max_train_steps": 2},
        )
    )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    # resuming a finished run writes its adapters again; no step is left to time
    again = dict(common, checkpointing_steps=2, max_train_steps=2)
    run(
        tiny_config(tmp_path, world_dirs["subject"], rank=2, seed=3, resume_from_checkpoint="latest", **again)
    )
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps_per_second"] is None
    with pytest.raises(ValueError, match="--checkpoints_total_limit: expected an integer >= 1"):
        tiny_config(tmp_path, world_dirs["style"], checkpoints_total_limit=-1)


def test_checkpoint_is_never_half_written(tmp_path):
    class FailingAccelerator:
        def save_state(self, path: str) -> None:
            Path(path, "optimizer.bin").write_bytes(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(FailingAccelerator(), tmp_path, 3, [], None)
    assert list(tmp_path.iterdir()) == []  # neither checkpoint-3 nor the temporary folder remains
    assert list_checkpoints(tmp_path) == []


def test_b4m_break_shares_frozen_halves_and_make_fuses(world_dirs, tmp_path):
    common = dict(method="b4m", max_train_steps=2, rank=2, lora_blocks=["up_blocks.3.attentions.0"])
    run(
        tiny_config(
            tmp_path,
            world_dirs["subject"],
            b4m_role="content",
            aux_data_dir=[str(world_dirs["style"])],
            aux_prompt=["a picture"],
            **common,
        )
    )
    run(tiny_config(tmp_path, world_dirs["style"], b4m_role="style", **common))
    content = load_file(str(tmp_path / "content" / LORA_WEIGHT_NAME))
    style = load_file(str(tmp_path / "style" / LORA_WEIGHT_NAME))
    trained_down = trained_up = False
    for key, c in content.items():
        s = style[key]
        if ".down." in key:
            half = c.shape[1] // 2
            assert torch.equal(c[:, :half], s[:, :half])  # shared frozen columns
            trained_down |= not torch.equal(c[:, half:], s[:, half:])
        else:
            half = c.shape[0] // 2
            assert torch.equal(c[:half], s[:half])  # shared frozen rows
            trained_up |= not torch.equal(c[half:], s[half:])
    assert trained_down and trained_up
    run(
        tiny_config(
            tmp_path,
            world_dirs["subject"],
            b4m_stage="make",
            content_lora=str(tmp_path / "content"),
            style_lora=str(tmp_path / "style"),
            aux_data_dir=[str(world_dirs["style"])],
            aux_prompt=["a picture in sks style"],
            **common,
        )
    )
    fused = load_file(str(tmp_path / "fused" / LORA_WEIGHT_NAME))
    assert fused.keys() == content.keys()
    # a make run from adapters of different seeds is refused
    run(tiny_config(tmp_path / "other", world_dirs["style"], b4m_role="style", **{**common, "seed": 1}))
    with pytest.raises(ValueError, match="frozen"):
        run(
            tiny_config(
                tmp_path,
                world_dirs["subject"],
                b4m_stage="make",
                content_lora=str(tmp_path / "content"),
                style_lora=str(tmp_path / "other" / "style"),
                **common,
            )
        )


# --------------------------------------------------------------------------------- config and bad input
def test_config_file_and_flags(tmp_path, world_dirs):
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'method = "dreambooth"\ninstance_data_dir = "{world_dirs["style"]}"\ninstance_prompt = "a [v]"\n'
        f'output_dir = "{tmp_path}"\nrank = 8\naux_data_dir = ["{world_dirs["subject"]}"]\naux_prompt = ["x"]\n'
    )
    config = parse_config(["--config", str(toml), "--rank", "2", "--gradient_checkpointing"])
    assert (config.method, config.rank, config.gradient_checkpointing) == ("dreambooth", 2, True)
    assert config.config == str(toml)
    with pytest.raises(ValueError, match="does not read files; use parse_config"):  # it was ignored silently
        TrainLoRAConfig(
            config=str(toml), output_dir=str(tmp_path), instance_data_dir=".", instance_prompt="a"
        )
    assert config.aux_data_dir == [str(world_dirs["subject"])]
    yaml = tmp_path / "run.yaml"
    yaml.write_text("rnak: 4\n")
    with pytest.raises(ValueError, match="unknown option"):
        parse_config(["--config", str(yaml)])
    # YAML reads 1e-3 as a string: converted like the flag; a lone folder for a list option is a list
    yaml.write_text(
        f"instance_data_dir: {world_dirs['style']}\ninstance_prompt: a [v]\noutput_dir: {tmp_path}\n"
        f"learning_rate: 1e-3\naux_data_dir: {world_dirs['subject']}\naux_prompt: [2024]\nmixed_precision: no\n"
    )
    config = parse_config(["--config", str(yaml)])
    assert config.learning_rate == 1e-3 and config.aux_data_dir == [str(world_dirs["subject"])]
    assert config.aux_prompt == ["2024"] and config.mixed_precision == "no"  # YAML's number and boolean
    for line, message in (
        ('resolution = "sixty"', "resolution in .*: expected a number"),
        ('aspect_buckets = "no"', "aspect_buckets in .*: expected true or false"),
        ("rank = 2.5", "rank in .*: expected an integer"),
    ):
        toml.write_text(f'instance_data_dir = "{world_dirs["style"]}"\ninstance_prompt = "a"\n{line}\n')
        with pytest.raises(ValueError, match=message):
            parse_config(["--config", str(toml), "--output_dir", str(tmp_path)])


def test_mixed_modes_and_sizes_are_converted(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rgb = subject_set(np.random.default_rng(1), 1, size=48).images[0]
    PIL.Image.fromarray(rgb).convert("RGBA").resize((40, 56)).save(folder / "a.png")
    PIL.Image.fromarray(rgb).convert("L").save(folder / "b.png")
    PIL.Image.fromarray(rgb).convert("P").resize((90, 30)).save(folder / "c.gif")
    (folder / "notes.md").write_text("ignored")
    image_set = load_image_set(folder, "a [v]", 32, "instance", "--instance_data_dir")
    assert image_set.pixels.shape == (3, 3, 32, 32)
    assert float(image_set.pixels.min()) >= -1.0 and float(image_set.pixels.max()) <= 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rank": 0}, "--rank"),
        ({"rank": -2}, "--rank"),
        ({"method": "ziplora"}, "--method"),
        ({"instance_prompt": ""}, "--instance_prompt"),
        ({"aux_data_dir": ["x"]}, "--aux_prompt"),
        ({"method": "b4m", "b4m_stage": "make"}, "--content_lora"),
        ({"with_prior_preservation": True}, "--class_data_dir"),
        ({"riemannian_reg": -0.1}, "--riemannian_reg"),
        ({"riemannian_reg": float("nan")}, "--riemannian_reg"),
        ({"resolution": 30}, "--resolution: expected a multiple of 8"),
        (
            {"method": "dreambooth", "content_blocks": ["up_blocks.3"]},
            "--content_blocks: not used by --method dreambooth",
        ),
        ({"lora_blocks": ["up_blocks.3"]}, "--lora_blocks: not used by --method blora"),
        ({"adapter_role": "content"}, "--adapter_role: only --method dreambooth"),
        ({"class_data_dir": "x", "class_prompt": "y"}, "used only with --with_prior_preservation"),
        ({"method": "b4m", "content_lora": "x"}, "only the make stage"),
    ],
)
def test_bad_config_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, tmp_path, **overrides)


def test_bad_data_and_blocks_are_refused_before_model_work(tmp_path, world_dirs, monkeypatch):
    import stylekit.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(stylekit.models, "load_pipeline", no_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        run(tiny_config(tmp_path, empty))
    with pytest.raises(ValueError, match="folder not found"):
        run(tiny_config(tmp_path, tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"^--instance_data_dir: not an image file: .*bad.png$"):
        run(tiny_config(tmp_path, broken))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="--output_dir: cannot create"):
        run(tiny_config(tmp_path / "a_file" / "out", world_dirs["style"]))
    late = tmp_path / "late" / "checkpoint-4"
    late.mkdir(parents=True)
    (late / "training_state.json").write_text('{"global_step": 4}')
    with pytest.raises(ValueError, match="checkpoint-4 is at step 4, past --max_train_steps 3"):
        run(tiny_config(late.parent, world_dirs["style"], max_train_steps=3, resume_from_checkpoint="latest"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="no attention block or ResNet 'up_blocks.9.attentions.0'"):
        run(tiny_config(tmp_path, world_dirs["style"], content_blocks=["up_blocks.9.attentions.0"]))


def test_main_returns_error_code_for_bad_flags(tmp_path, capsys):
    from stylekit.adapters.train_lora import main

    code = main(
        [
            "--instance_data_dir",
            str(tmp_path),
            "--instance_prompt",
            "x",
            "--output_dir",
            str(tmp_path),
            "--rank",
            "0",
        ]
    )
    assert code == 2
    assert "--rank" in capsys.readouterr().err


# --------------------------------------------------------------------------------- multi-process
@pytest.mark.slow
def test_two_cpu_processes_match_one_at_the_same_global_batch(world_dirs, tmp_path):
    import subprocess
    import sys

    def launch(out: Path, processes: int, batch: int) -> None:
        args = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        if processes > 1:
            args.append("--multi_gpu")
        args += [
            "-m",
            "stylekit.adapters.train_lora",
            "--method",
            "blora",
            "--pretrained_model_name_or_path",
            "tiny-sd",
            "--instance_data_dir",
            str(world_dirs["style"]),
            "--instance_prompt",
            "a [v]",
            "--output_dir",
            str(out),
            "--rank",
            "2",
            "--max_train_steps",
            "3",
            "--train_batch_size",
            str(batch),
            "--checkpointing_steps",
            "0",
            "--learning_rate",
            "1e-3",
            "--num_threads",
            "1",
        ]
        env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    launch(tmp_path / "one", 1, 2)
    launch(tmp_path / "two", 2, 1)
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["num_processes"] == 2
    for role in ("content", "style"):
        one = load_file(str(tmp_path / "one" / role / LORA_WEIGHT_NAME))
        two = load_file(str(tmp_path / "two" / role / LORA_WEIGHT_NAME))
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(one[key], two[key], atol=1e-5, rtol=1e-4)


def test_blora_on_sdxl_uses_the_paper_blocks(world_dirs, tmp_path):
    from stylekit.lora import BLORA_BLOCKS

    run(
        tiny_config(
            tmp_path, world_dirs["style"], pretrained_model_name_or_path="tiny-sdxl", max_train_steps=1
        )
    )
    for role in ("content", "style"):
        keys = load_file(str(tmp_path / role / LORA_WEIGHT_NAME)).keys()
        assert {block_of(k) for k in keys} == set(BLORA_BLOCKS["sdxl"][role])


def test_style_contrastive_loss_is_trained_and_logged(world_dirs, tmp_path):
    summary = run(
        tiny_config(
            tmp_path,
            world_dirs["style"],
            method="dreambooth",
            max_train_steps=2,
            style_loss_weight=0.5,
            aux_data_dir=[str(world_dirs["subject"])],
            aux_prompt=["x"],
        )
    )
    assert all(np.isfinite(h["loss_style"]) and h["loss_style"] > 0 for h in summary["history"])


def test_blocks_are_attention_blocks_or_resnets_and_patterns_expand():
    from stylekit import load_pipeline
    from stylekit.lora import check_blocks, target_modules

    unet = load_pipeline("tiny-sd").unet
    decoder_resnets = check_blocks(unet, ["up_blocks.*.resnets.*", "up_blocks.0.resnets.1"])
    assert decoder_resnets == tuple(
        f"up_blocks.{level}.resnets.{i}" for level in range(4) for i in range(3)
    )  # module order, the repeated name dropped
    modules = target_modules(unet, ["up_blocks.1.attentions.0", "up_blocks.1.resnets.0"])
    kinds = {name: type(unet.get_submodule(name)) for name in modules}
    assert sum(kind is torch.nn.Linear for kind in kinds.values()) == 8  # q, k, v, out of attn1 and attn2
    assert {n for n, kind in kinds.items() if kind is torch.nn.Conv2d} == {
        "up_blocks.1.resnets.0.conv1",
        "up_blocks.1.resnets.0.conv2",
    }
    assert {block_of(n) for n in modules} == {"up_blocks.1.attentions.0", "up_blocks.1.resnets.0"}
    for bad in (["up_blocks.9.resnets.*"], ["up_blocks.1.resnets.7"], []):
        with pytest.raises(ValueError, match="attention block or ResNet|at least one"):
            check_blocks(unet, bad, "--content_blocks")


def test_validation_images_under_mixed_precision(world_dirs, tmp_path):
    """Validation runs the fp32 pipeline with the fp16 LoRA weights of a mixed-precision run (it crashed
    with a dtype mismatch after the training steps)."""
    import subprocess
    import sys

    out = tmp_path / "fp16"
    flags = ["--method", "blora", "--pretrained_model_name_or_path", "tiny-sd", "--rank", "2"]
    flags += ["--instance_data_dir", str(world_dirs["style"]), "--instance_prompt", "a [v]"]
    flags += ["--output_dir", str(out), "--max_train_steps", "1", "--checkpointing_steps", "0"]
    flags += ["--mixed_precision", "fp16", "--validation_prompt", "a [v]", "--num_validation_images", "1"]
    flags += ["--validation_inference_steps", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "stylekit.adapters.train_lora", *flags], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p.name for p in (out / "validation").iterdir()] == ["step-000001-0.png"]
    assert (out / "style" / LORA_WEIGHT_NAME).is_file()


def test_a_missing_tracker_and_an_unknown_flag_are_refused(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ValueError, match="--report_to wandb: it is not installed"):
        tiny_config(tmp_path, tmp_path, report_to="wandb")
    assert tiny_config(tmp_path, tmp_path, report_to="all").report_to == "all"  # every installed tracker
    assert main(["--bogus_flag"]) == 2  # returned, as documented, not raised
    assert "unrecognized arguments: --bogus_flag" in capsys.readouterr().err

"""benchmarks/subject_lora.py: its LoRA targets, that its training touches only the LoRA and changes the UNet,
and the JSON line on a reduced setting (tiny-sd)."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "subject_lora.py"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_subject_lora", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_subject_lora_trains_only_its_lora_and_changes_the_unet(tiny_sd):
    import copy

    bench = _load()
    pipe = copy.copy(tiny_sd)
    pipe.unet = copy.deepcopy(tiny_sd.unet)
    attention, with_convs = bench.lora_targets(pipe.unet, False), bench.lora_targets(pipe.unet, True)
    modules = dict(pipe.unet.named_modules())
    assert attention and all(isinstance(modules[n], torch.nn.Linear) for n in attention)
    extra = sorted(set(with_convs) - set(attention))
    assert extra and all(isinstance(modules[n], torch.nn.Conv2d) and ".resnets." in n for n in extra)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    text = torch.randn(
        1, 77, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        plain = pipe.unet(x, t, encoder_hidden_states=text).sample
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    args = Namespace(rank=4, lr=0.1, train_steps=3, seed=0)
    params = bench.train_subject_lora(pipe, images, with_convs, args)
    after = pipe.unet.state_dict()
    lora = [k for k in after if "lora_" in k]
    assert params == sum(after[k].numel() for k in lora) > 0
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if k not in lora}
    assert base.keys() == before.keys() and all(torch.equal(before[k], base[k]) for k in before)
    with torch.no_grad():
        trained = pipe.unet(x, t, encoder_hidden_states=text).sample
    assert (trained - plain).abs().max() > 1e-4  # the LoRA (convs included) acts


def test_subject_lora_reduced(capsys):
    _load().main(
        ["--model", "tiny-sd", "--train-steps", "2", "--n", "2", "--steps", "2", "--probe-steps", "2"]
        + ["--detector-n", "300", "--detector-val", "200"]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    report = json.loads(lines[0])
    assert report["benchmark"] == "subject_lora" and set(report["rows"]) == {
        "base",
        "attention",
        "attention_convs",
    }
    assert report["rows"]["attention_convs"]["params"] > report["rows"]["attention"]["params"] > 0
    assert report["subject_detector"]["real_subject_recall"] >= 0.9
    for row in report["rows"].values():
        assert 0.0 <= row["content_acc"] <= 1.0 and 0.0 <= row["style_score"] <= 1.0

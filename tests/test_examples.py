"""Every script in examples/ runs offline on mini and writes its image (about a minute in all: slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# script -> (image it writes, its size)
# Fewer DDIM steps than the scripts' defaults keep the suite quick; the scripts' own defaults run in < 1 min.
FAST = {
    "image_transfer.py": ["--steps", "10"],
    "regions.py": ["--steps", "10"],
    "style_tokens.py": ["--steps", "10"],
    "video_transfer.py": ["--steps", "8"],
    "lora.py": ["--train-steps", "30", "--steps", "10"],
}
OUTPUTS = {
    "image_transfer.py": ("image_transfer.png", (384, 256)),
    "regions.py": ("regions.png", (640, 128)),
    "style_similarity.py": ("style_search.png", (896, 148)),
    "style_tokens.py": ("style_tokens.png", (640, 128)),
    "video_transfer.py": ("video_transfer.png", (896, 256)),  # style + 6 frames, source over stylized
    "lora.py": ("lora.png", (896, 128)),
}


def test_every_example_script_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(OUTPUTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(OUTPUTS))
def test_example_runs_and_writes_its_image(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--output", str(tmp_path), *FAST.get(script, [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    name, size = OUTPUTS[script]
    with Image.open(tmp_path / name) as image:
        assert image.size == size
        assert len(set(image.convert("RGB").getdata())) > 16  # a real picture, not a blank canvas
    assert str(tmp_path / name) in result.stdout

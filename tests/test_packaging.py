"""One import root: editable and wheel installs expose ``stylekit.pipelines`` and no generic top-level names."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import importlib.util, json, stylekit.pipelines, stylekit.adapters, stylekit.apps;"
    "print(json.dumps({'pipelines': importlib.util.find_spec('pipelines') is not None,"
    "'adapters': importlib.util.find_spec('adapters') is not None, 'apps': importlib.util.find_spec('apps') is not None,"
    "'file': stylekit.pipelines.__file__}))"
)


def _probe(cwd: Path, env: dict[str, str] | None = None) -> dict:
    import json
    import os

    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_installed_package_exposes_namespaced_pipelines_only(tmp_path):
    found = _probe(tmp_path)  # run outside the repository so its folders are not on sys.path
    assert found["pipelines"] is False and found["adapters"] is False and found["apps"] is False
    assert Path(found["file"]).resolve().is_relative_to(ROOT) or "site-packages" in found["file"]


@pytest.mark.slow
def test_built_wheel_has_one_import_root(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("stylekit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    roots = {name.split("/")[0] for name in names}
    assert roots == {"stylekit", next(r for r in roots if r.endswith(".dist-info"))}, roots
    for module in (
        "stylekit/pipelines/__init__.py",
        "stylekit/adapters/__init__.py",
        "stylekit/apps/__init__.py",
    ):
        assert module in names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    found = _probe(tmp_path, {"PYTHONPATH": str(site)})
    assert Path(found["file"]).resolve().is_relative_to(site.resolve())
    assert found["pipelines"] is False and found["adapters"] is False

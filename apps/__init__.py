"""The stylekit Gradio app (installed as ``stylekit.apps``; needs ``pip install 'stylekit[app]'``).

Quick start::

    from stylekit.apps import build_demo, launch
    demo = build_demo()             # no model is loaded yet
    launch(demo)                    # http://127.0.0.1:7860, uploads up to 20 MB

Names are imported lazily: ``import stylekit.apps`` imports neither Gradio nor torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_demo": "stylekit.apps.ui",
    "Engine": "stylekit.apps.engine",
    "ModelCache": "stylekit.apps.engine",
    "TransferRequest": "stylekit.apps.engine",
    "Handlers": "stylekit.apps.handlers",
    "launch": "stylekit.apps.server",
    "free_port": "stylekit.apps.server",
    "main": "stylekit.apps.server",
}

__all__ = ["Engine", "Handlers", "ModelCache", "TransferRequest", "build_demo", "free_port", "launch", "main"]

if TYPE_CHECKING:
    from stylekit.apps.engine import Engine, ModelCache, TransferRequest
    from stylekit.apps.handlers import Handlers
    from stylekit.apps.server import free_port, launch, main
    from stylekit.apps.ui import build_demo


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stylekit.apps' has no attribute {name!r}")

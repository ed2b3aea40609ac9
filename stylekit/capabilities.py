"""Optional capabilities, imported only when used, with one clear message when one is missing.

The CLI and the app reach video, regions (SAM), LoRA training and style tokens through
:func:`require`, so ``stylekit --help`` and the app start even where those modules or their extras
are absent, and a request for a missing one fails with a message naming the module and the extra
that provides it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType


class CapabilityUnavailable(ImportError):
    """A capability's module (or one of its dependencies) is not installed."""


@dataclass(frozen=True)
class Capability:
    """Where a capability lives: candidate modules (first found wins) and the extra that installs its deps."""

    name: str
    modules: tuple[str, ...]
    extra: str
    summary: str


CAPABILITIES: dict[str, Capability] = {
    cap.name: cap
    for cap in (
        Capability("video", ("stylekit.video_cli", "stylekit.video"), "video", "video style transfer"),
        Capability("segment", ("stylekit.segment",), "sam", "SAM region masks"),
        Capability("train-lora", ("stylekit.adapters.train_lora",), "train", "content/style LoRA training"),
        Capability("lora", ("stylekit.lora_style", "stylekit.lora"), "train", "LoRA style adapters"),
        Capability("tokens", ("stylekit.tokens",), "train", "style tokens"),
        Capability("app", ("gradio",), "app", "the Gradio app"),
    )
}


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def require(name: str) -> ModuleType:
    """Import capability ``name``'s module.

    Raises:
        CapabilityUnavailable: no candidate module exists in this installation, or it exists but a
            dependency is missing (the message names the extra to install).
    """
    cap = CAPABILITIES[name]
    for module in cap.modules:
        if not _find(module):
            continue
        try:
            return importlib.import_module(module)
        except ImportError as error:
            raise CapabilityUnavailable(
                f"{cap.summary} is not available: {module} needs a missing dependency ({error}); "
                f"install it with: pip install 'stylekit[{cap.extra}]'"
            ) from error
    raise CapabilityUnavailable(
        f"{cap.summary} is not available in this installation of stylekit (no module "
        f"{' or '.join(cap.modules)}); install a stylekit release that includes it with "
        f"pip install 'stylekit[{cap.extra}]'"
    )


def available(name: str) -> bool:
    """Whether capability ``name``'s module exists (its dependencies are checked only by :func:`require`)."""
    return any(_find(module) for module in CAPABILITIES[name].modules)

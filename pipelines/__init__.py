"""diffusers pipelines of stylekit (installed as ``stylekit.pipelines``)."""

from stylekit.pipelines.style_injection import (
    StyleInjectionMixin,
    StyleInjectionPipeline,
    StyleInjectionPipelineOutput,
)
from stylekit.pipelines.style_injection_xl import StyleInjectionXLPipeline

__all__ = [
    "StyleInjectionMixin",
    "StyleInjectionPipeline",
    "StyleInjectionPipelineOutput",
    "StyleInjectionXLPipeline",
]

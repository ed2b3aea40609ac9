"""diffusers pipelines of stylekit (installed as ``stylekit.pipelines``)."""

from stylekit.pipelines.style_injection import (
    StyleInjectionMixin,
    StyleInjectionPipeline,
    StyleInjectionPipelineOutput,
)
from stylekit.pipelines.style_injection_xl import StyleInjectionXLPipeline
from stylekit.pipelines.style_video import StyleVideoPipeline
from stylekit.pipelines.video_style_transfer import VideoStyleTransferOutput, VideoStyleTransferPipeline

__all__ = [
    "StyleInjectionMixin",
    "StyleInjectionPipeline",
    "StyleInjectionPipelineOutput",
    "StyleInjectionXLPipeline",
    "StyleVideoPipeline",
    "VideoStyleTransferOutput",
    "VideoStyleTransferPipeline",
]

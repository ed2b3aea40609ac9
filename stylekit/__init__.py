"""stylekit: diffusion-based style transfer and style customization on Hugging Face diffusers."""

from stylekit.conditioning import Conditioner, StyleCondition
from stylekit.models import load_pipeline

__version__ = "0.1.0"

__all__ = ["Conditioner", "StyleCondition", "__version__", "load_pipeline"]

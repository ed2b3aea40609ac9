"""The synthetic style world: procedural images and videos with known content and style.

numpy only, deterministic by seed. Content = 1..3 shapes (10 kinds) with pose; style = palette (12) x
texture (8) x stroke (6) = 576 composite styles, plus a nuisance seed. See ``docs/world.md``.

Quick start::

    rng = np.random.default_rng(0)
    batch = sample_world(rng, 16, size=64)            # WorldSample: images, masks, specs, captions
    images, masks = render([sample_content(rng)], [sample_style(rng)], size=128)
"""

from .captions import caption, caption_vocabulary, caption_words, object_phrases, style_phrase
from .factors import (
    MAX_OBJECTS,
    N_CONTENT_CLASSES,
    N_PALETTES,
    N_SHAPES,
    N_STROKES,
    N_STYLE_LABELS,
    N_STYLES,
    N_TEXTURES,
    PALETTES,
    SHAPES,
    STROKES,
    TEXTURES,
    Colour,
    Palette,
    Shape,
    Stroke,
    Texture,
    palette_index,
    shape_index,
    stroke_index,
    texture_index,
)
from .geometry import shape_sdf
from .render import render
from .sampling import (
    WorldSample,
    hard_negatives,
    positive_pairs,
    render_samples,
    sample_scenes,
    sample_styles,
    sample_world,
    style_set,
    subject_set,
)
from .specs import (
    ContentSpec,
    ObjectSpec,
    StyleSpec,
    sample_content,
    sample_style,
    style_label_names,
    style_labels,
)
from .splits import HELD_OUT_PALETTE_TEXTURE, PARTS, SPLITS, Split, held_out_styles, split_of
from .video import Motion, VideoSample, content_at, flow_field, render_video, sample_motion, sample_video

__all__ = [
    "HELD_OUT_PALETTE_TEXTURE",
    "MAX_OBJECTS",
    "N_CONTENT_CLASSES",
    "N_PALETTES",
    "N_SHAPES",
    "N_STROKES",
    "N_STYLES",
    "N_STYLE_LABELS",
    "N_TEXTURES",
    "PALETTES",
    "PARTS",
    "SHAPES",
    "SPLITS",
    "STROKES",
    "TEXTURES",
    "Colour",
    "ContentSpec",
    "Motion",
    "ObjectSpec",
    "Palette",
    "Shape",
    "Split",
    "Stroke",
    "StyleSpec",
    "Texture",
    "VideoSample",
    "WorldSample",
    "caption",
    "caption_vocabulary",
    "caption_words",
    "content_at",
    "flow_field",
    "hard_negatives",
    "held_out_styles",
    "object_phrases",
    "palette_index",
    "positive_pairs",
    "render",
    "render_samples",
    "render_video",
    "sample_content",
    "sample_motion",
    "sample_scenes",
    "sample_style",
    "sample_styles",
    "sample_video",
    "sample_world",
    "shape_index",
    "shape_sdf",
    "split_of",
    "stroke_index",
    "style_label_names",
    "style_labels",
    "style_phrase",
    "style_set",
    "subject_set",
    "texture_index",
]

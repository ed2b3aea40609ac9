"""Videos: moving and rotating objects with exact per-frame masks and ground-truth optical flow.

Motion is rigid and constant per object: frame ``t`` shows object ``k`` at centre ``c_k + t * v_k`` and
rotation ``theta_k + t * w_k`` (scale fixed). The paper is static; object textures, strokes and nuisance
phases live in the object's frame, so they move with the object.

Flow convention (forward flow, pixels): ``flow[t, i, j] = (dx, dy)`` says that the scene point seen at the
centre of pixel ``(row i, col j)`` in frame ``t`` is at ``(x + dx, y + dy)`` in frame ``t + 1``
(``x = j + 0.5``, ``y = i + 0.5`` in pixel units; ``dx`` along columns, ``dy`` along rows). The point
belongs to the topmost object whose mask holds the pixel (highest object index), else to the paper
(flow 0). For object ``k``: ``p' = c_k(t + 1) + R(w_k) (p - c_k(t))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .captions import caption
from .render import render
from .specs import ContentSpec, StyleSpec, sample_content, sample_style
from .splits import check_part, get_split, in_part

MAX_SPEED = 0.04
"""Default bound on an object's displacement per frame (image units)."""
MAX_SPIN = 0.15
"""Default bound on an object's rotation per frame (radians)."""


@dataclass(frozen=True)
class Motion:
    """Constant rigid motion of each object of a content.

    Attributes:
        velocity: per object ``(vx, vy)`` in image units per frame (``y`` down).
        spin: per object rotation per frame in radians (positive = clockwise on screen).
    """

    velocity: tuple[tuple[float, float], ...]
    spin: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.velocity) != len(self.spin):
            raise ValueError("Motion.velocity and Motion.spin must have one entry per object")
        if not all(math.isfinite(v) for vel in self.velocity for v in vel) or not all(
            math.isfinite(w) for w in self.spin
        ):
            raise ValueError("Motion values must be finite")


@dataclass(frozen=True)
class VideoSample:
    """A rendered clip with its ground truth.

    Attributes:
        frames: uint8 ``(T, S, S, 3)``.
        masks: bool ``(T, 3, S, S)`` exact per-object masks of every frame.
        flow: float32 ``(T - 1, S, S, 2)`` forward flow in pixels, ``(dx, dy)`` (module docstring).
        contents: the ``T`` per-frame contents.
        style: the style of every frame.
        motion: the motion that generated the clip.
    """

    frames: np.ndarray
    masks: np.ndarray
    flow: np.ndarray
    contents: tuple[ContentSpec, ...]
    style: StyleSpec
    motion: Motion

    @property
    def caption(self) -> str:
        """Caption of the first frame."""
        return caption(self.contents[0], self.style)


def sample_motion(
    rng: np.random.Generator,
    content: ContentSpec,
    n_frames: int,
    max_speed: float = MAX_SPEED,
    max_spin: float = MAX_SPIN,
) -> Motion:
    """Sample a motion that keeps every object fully inside the image for ``n_frames`` frames.

    Each object heads for a uniform end point inside ``[r + 0.01, 1 - r - 0.01]^2`` (``r`` its scale), slowed
    down to at most ``max_speed`` per frame; its spin is uniform in ``[-max_spin, max_spin]``. Objects that
    start outside that box stand still.
    """
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    velocity, spin = [], []
    for o in content.objects:
        lo, hi = o.scale + 0.01, 1.0 - o.scale - 0.01
        start = np.array([o.cx, o.cy])
        end = rng.uniform(lo, hi, size=2)
        step = (end - start) / (n_frames - 1)
        speed = float(np.hypot(*step))
        if speed > max_speed:
            step *= max_speed / speed
        if not (lo <= o.cx <= hi and lo <= o.cy <= hi):
            step[:] = 0.0
        velocity.append((float(step[0]), float(step[1])))
        spin.append(float(rng.uniform(-max_spin, max_spin)))
    return Motion(tuple(velocity), tuple(spin))


def content_at(content: ContentSpec, motion: Motion, t: float) -> ContentSpec:
    """The content at frame ``t`` (frame 0 is ``content``)."""
    if len(motion.spin) != content.count:
        raise ValueError(f"motion has {len(motion.spin)} objects, content has {content.count}")
    objects = tuple(
        replace(o, cx=o.cx + t * v[0], cy=o.cy + t * v[1], rotation=o.rotation + t * w)
        for o, v, w in zip(content.objects, motion.velocity, motion.spin, strict=True)
    )
    return ContentSpec(objects)


def flow_field(content: ContentSpec, motion: Motion, masks: np.ndarray) -> np.ndarray:
    """Forward flow from the frame showing ``content`` to the next one.

    Args:
        content: the content of frame ``t``.
        motion: its motion.
        masks: bool ``(3, S, S)`` masks of frame ``t``.

    Returns:
        float32 ``(S, S, 2)`` flow ``(dx, dy)`` in pixels.
    """
    size = masks.shape[-1]
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    x = centres[None, :]
    y = centres[:, None]
    flow = np.zeros((size, size, 2), dtype=np.float32)
    for k, (o, v, w) in enumerate(zip(content.objects, motion.velocity, motion.spin, strict=True)):
        c, s = math.cos(w), math.sin(w)
        dx, dy = x - o.cx, y - o.cy
        fx = (o.cx + v[0] + c * dx - s * dy - x) * size
        fy = (o.cy + v[1] + s * dx + c * dy - y) * size
        m = masks[k]
        flow[..., 0] = np.where(m, fx, flow[..., 0])
        flow[..., 1] = np.where(m, fy, flow[..., 1])
    return flow


def render_video(
    content: ContentSpec, style: StyleSpec, motion: Motion, n_frames: int = 8, size: int = 64
) -> VideoSample:
    """Render a clip of ``n_frames`` frames (frame 0 shows ``content``); see the module docstring."""
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    contents = [content_at(content, motion, t) for t in range(n_frames)]
    frames, masks = render(contents, [style] * n_frames, size)
    flow = np.stack([flow_field(contents[t], motion, masks[t]) for t in range(n_frames - 1)])
    return VideoSample(frames, masks, flow, tuple(contents), style, motion)


def sample_video(
    rng: np.random.Generator,
    n_frames: int = 8,
    size: int = 64,
    split: str | None = None,
    part: str = "train",
    max_speed: float = MAX_SPEED,
    max_spin: float = MAX_SPIN,
) -> VideoSample:
    """Sample a scene (within ``part`` of ``split``), a motion, and render the clip."""
    if split is not None:
        get_split(split)
    check_part(part)
    for _ in range(10_000):
        content, style = sample_content(rng), sample_style(rng)
        if in_part(content, style, split, part):
            break
    motion = sample_motion(rng, content, n_frames, max_speed, max_spin)
    return render_video(content, style, motion, n_frames, size)

"""``StyleTokens``: style-extractor tokens through decoupled cross-attention, as a conditioner.

``prepare`` embeds the style references (images with the style extractor, text with the pipeline's text
tower and the adapter's text head, or precomputed embeddings) into style codes; ``attach`` wraps the
UNet's cross-attention processors (restoring the full ``attn_processors`` dict on exit) and, with a
``style_guidance_scale``, adds StyleMaster's three-pass guidance as a UNet hook::

    eps = u + g_text (t - u) + g_style (ts - t)

(u: unconditional, t: text, ts: text + style). The hook appends a text+style copy of the text rows to
the UNet batch and hands the pipeline ``t + g_style / g_text (ts - t)`` as its text prediction, so the
pipeline's own classifier-free guidance produces the formula above.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stylekit.attention.injection import swapped_processors
from stylekit.conditioning import (
    ConditionerBase,
    ImageLike,
    StyleCondition,
    as_condition,
    exclusive_unet,
    schedule_position,
)
from stylekit.tokens.adapter import AdapterCompatibilityError, StyleTokenAdapter
from stylekit.tokens.latent_stats import guide_prediction, image_latent_stats
from stylekit.tokens.processor import StyleTokenProcessor, TokenState, add_time_delta
from stylekit.tokens.scales import ScaleSpec, layer_scales

StyleInput = StyleCondition | ImageLike


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class StyleTokens(ConditionerBase):
    """Condition a diffusers UNet on style tokens.

    Args:
        adapter: a ``StyleTokenAdapter`` or the folder of one (``save_pretrained``).
        style: one style or a list (``StyleCondition`` with ``image``, ``text`` and/or ``embedding``, or a
            bare image); several are mixed by ``weight``; a condition with both ``image`` and ``text`` uses
            their mean. None: use the style images of the pipeline call (StyleID), one per row.
        scale: a number for every cross-attention layer, a block dict in the diffusers vocabulary
            (``{"up": {"block_1": [0.0, 1.0]}}``; layers not named are 0) or a preset of
            ``stylekit.tokens.SCALE_PRESETS``.
        style_guidance_scale: StyleMaster's separate style guidance ``g_style`` (None: the style acts on
            the text rows and is guided together with the text).
        extractor: the style extractor (default: the bundled one), checked against the adapter.
        per_row: one style per output row instead of a mix (row ``i`` of the batch gets
            ``style[i % len(style)]``; ``weight`` and ``steps`` are then ignored).
        time_scale: strength of the adapter's timestep-embedding path (a global path outside the blocks;
            only adapters trained with it have one). None: equal to ``scale`` when that is a number, else 0
            (per-block choices stay confined to their blocks).
        latent_stats_strength: latent-statistics guidance (``stylekit.tokens.latent_stats``): AdaIN strength
            in [0, 1] of each early step's predicted clean latent toward the style's per-channel latent
            mean/std (an image style: its VAE latent; text/embedding: the adapter's latent-statistics head).
            0 = off (the call is unchanged bit for bit).
        latent_stats_steps: the fraction of the schedule (from its start) where that guidance acts.
    """

    def __init__(
        self,
        adapter: StyleTokenAdapter | str | Path,
        style: StyleInput | Sequence[StyleInput] | None = None,
        scale: ScaleSpec = 1.0,
        style_guidance_scale: float | None = None,
        extractor: Any | None = None,
        per_row: bool = False,
        time_scale: float | None = None,
        latent_stats_strength: float = 0.0,
        latent_stats_steps: float = 0.3,
    ) -> None:
        self.adapter = (
            adapter if isinstance(adapter, StyleTokenAdapter) else StyleTokenAdapter.from_pretrained(adapter)
        )
        self.conditions = None if style is None else [as_condition(s) for s in _as_list(style)]
        if self.conditions is not None and not self.conditions:
            raise ValueError("style: expected at least one style (or None to use the call's style images)")
        for i, condition in enumerate(self.conditions or []):
            if condition.image is None and condition.text is None and condition.embedding is None:
                raise ValueError(f"style[{i}]: StyleTokens needs an image, a text or an embedding")
            if condition.embedding is not None:
                self.adapter.check_embedding(tuple(condition.embedding.shape), f"style[{i}].embedding")
            if condition.text is not None and self.adapter.text_head is None:
                raise AdapterCompatibilityError(f"style[{i}].text: this adapter has no text head")
        layer_scales(scale, [layer.name for layer in self.adapter.config.layers])  # validate early
        if style_guidance_scale is not None and not float(style_guidance_scale) >= 0.0:
            raise ValueError(f"style_guidance_scale: expected a number >= 0, got {style_guidance_scale}")
        self.scale = scale
        if time_scale is None:
            time_scale = (
                float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else 0.0
            )
        self.time_scale = float(time_scale)
        self.style_guidance_scale = style_guidance_scale
        self.latent_stats_strength = float(latent_stats_strength)
        self.latent_stats_steps = float(latent_stats_steps)
        self._check_latent_stats()
        self._stats_target: torch.Tensor | None = None
        self._extractor = extractor
        self.state = TokenState()
        self._codes: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.per_row = per_row
        self._num_steps = 0
        self._position: float | None = None
        self._pipe: Any = None

    # ------------------------------------------------------------------------------------ embedding
    @property
    def extractor(self) -> Any:
        """The style extractor (loaded lazily), checked against the adapter's embedding size."""
        if self._extractor is None:
            from stylekit.extractors import load_default

            self._extractor = load_default()
        d, trained_with = self.adapter.config.embed_dim, self.adapter.config.extractor_hash
        found = self._extractor.config_hash()
        if self._extractor.embed_dim != d or (trained_with and found != trained_with):
            raise AdapterCompatibilityError(
                f"the style extractor makes embeddings of shape ({self._extractor.embed_dim},) (architecture "
                f"{found}) but the adapter expects ({d},) from the extractor it was trained with "
                f"(architecture {trained_with or 'any'})"
            )
        return self._extractor

    @torch.no_grad()
    def image_codes(self, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (anything ``StyleExtractor.embed`` takes) -> ``(g (N, D), l (N, D))`` on the CPU."""
        emb, tokens = self.extractor.embed(images, return_tokens=True, progress=False)
        return emb, tokens.mean(dim=1)

    @torch.no_grad()
    def text_codes(self, pipe: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Style descriptions -> ``(g, l)`` through the pipeline's text tower and the adapter's text head."""
        from stylekit.extractors import clip_text_embeddings

        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
            raise ValueError("a text style needs a pipeline with a text_encoder and tokenizer")
        pooled = clip_text_embeddings(pipe.text_encoder, pipe.tokenizer, texts)
        g, local = self.adapter.text_codes(pooled.to(next(self.adapter.parameters()).device))
        return g.float().cpu(), local.float().cpu()

    @torch.no_grad()
    def embedding_codes(self, embedding: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(D,)`` global embedding (local code predicted from it) or ``(1 + T, D)`` (row 0 global, the rest
        local tokens) -> ``(g (1, D), l (1, D))``."""
        e = torch.as_tensor(embedding).float().cpu()
        self.adapter.check_embedding(tuple(e.shape))
        if e.ndim == 2 and len(e) > 1:
            return F.normalize(e[:1], dim=-1), e[1:].mean(0, keepdim=True)
        g = F.normalize(e.reshape(1, -1), dim=-1)
        weight = self.adapter.local_from_global.weight
        return g, self.adapter.local_from_global(g.to(weight)).float().cpu()

    def condition_code(self, pipe: Any, condition: StyleCondition) -> tuple[torch.Tensor, torch.Tensor]:
        """One condition -> its ``(g (1, D), l (1, D))`` (image and text together: their mean)."""
        parts = []
        if condition.image is not None:
            parts.append(self.image_codes([condition.image]))
        if condition.text is not None:
            parts.append(self.text_codes(pipe, [condition.text]))
        if condition.embedding is not None:
            parts.append(self.embedding_codes(condition.embedding))
        g = F.normalize(torch.stack([p[0] for p in parts]).mean(0), dim=-1)
        return g, torch.stack([p[1] for p in parts]).mean(0)

    # ------------------------------------------------------------------------------------ prepare
    def prepare(self, pipe: Any, **call: Any) -> None:
        """Check the adapter against the UNet, embed the styles and resolve the layer scales.

        ``call`` may hold ``styles`` ((N, 3, H, W) in [-1, 1]) and ``rows`` (StyleID: one style per row,
        used when this conditioner was made without ``style``) or ``batch_size`` (text-to-image rows).
        """
        self.adapter.check_unet(pipe.unet)
        self.adapter.to(device=pipe.unet.device, dtype=pipe.unet.dtype)
        self._pipe = pipe
        prediction_type = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
        if self.latent_stats_strength and prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"latent_stats_strength needs an epsilon or v_prediction scheduler, not {prediction_type!r}"
            )
        self.state.scales = layer_scales(self.scale, [layer.name for layer in self.adapter.config.layers])
        self.state.time_scale = self.time_scale
        rows = call.get("rows")
        self.state.n_rows = len(rows) if rows is not None else call.get("batch_size")
        self._num_steps = int(call.get("num_inference_steps") or 0)
        if self.conditions is not None:
            codes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # a condition repeated per row: once
            for condition in self.conditions:
                if id(condition) not in codes:
                    codes[id(condition)] = self.condition_code(pipe, condition)
            self._codes = [codes[id(c)] for c in self.conditions]
            if self.per_row:
                g, local = (torch.cat([code[i] for code in self._codes]) for i in (0, 1))
                self._set_style(g, local)
            else:
                self._set_mixed(None)
            self._stats_target = self._condition_stats(pipe) if self.latent_stats_strength else None
            return
        styles, rows = call.get("styles"), call.get("rows")
        if styles is None or rows is None:
            raise ValueError("StyleTokens without style= needs a StyleID call (style images per row)")
        g, local = self.image_codes(((styles.float() + 1) / 2).clamp(0, 1))
        order = torch.tensor([row.style for row in rows])
        self._set_style(g[order], local[order])
        if self.latent_stats_strength:
            self._stats_target = image_latent_stats(pipe.vae, styles, 0)[order]

    def _set_style(self, g: torch.Tensor | None, local: torch.Tensor | None) -> None:
        """Codes ``(N, D)`` -> the processors' context tokens and timestep-embedding offset (None: off)."""
        if g is None or local is None:
            self.state.context = self.state.time_delta = None
            return
        param = next(self.adapter.parameters())
        with torch.no_grad():
            self.state.context = self.adapter.context(g.to(param), local.to(param))
            self.state.time_delta = self.adapter.time_delta(g.to(param), local.to(param))

    def _set_mixed(self, position: float | None) -> None:
        self._set_style(*self._mixed_codes(position))

    def _mixed_codes(self, position: float | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        assert self.conditions is not None
        active = [
            (c.weight, code)
            for c, code in zip(self.conditions, self._codes, strict=True)
            if position is None or c.steps[0] <= position < c.steps[1]
        ]
        total = sum(w for w, _ in active)
        if not active or total <= 0:
            return None, None
        g = F.normalize(sum(w * code[0] for w, code in active), dim=-1)
        local = sum(w * code[1] for w, code in active) / total
        return g, local

    # ------------------------------------------------------------------------------------ attach
    @contextmanager
    def attach(self, pipe: Any) -> Iterator[None]:
        """Wrap the targeted cross-attention processors (and add the guidance hook); restore on exit."""
        unet = pipe.unet
        active = sorted(name for name, s in self.state.scales.items() if s != 0.0)
        timed = self.state.time_scale != 0.0 and self.adapter.time_proj is not None
        tokens = bool(active or timed) and self.state.context is not None
        handles: list[Any] = []
        with ExitStack() as stack:
            stack.callback(lambda: [handle.remove() for handle in handles])  # also if a registration fails
            if tokens:
                stack.callback(self._end_call)
                handles.append(unet.register_forward_pre_hook(self._step_hook, with_kwargs=True))
                if timed:
                    handles.append(
                        unet.time_embedding.register_forward_hook(
                            lambda m, a, out: add_time_delta(self.state, out)
                        )
                    )
                if self.style_guidance_scale is not None:
                    handles.append(unet.register_forward_pre_hook(self._guidance_pre_hook, with_kwargs=True))
                    handles.append(unet.register_forward_hook(self._guidance_post_hook, with_kwargs=True))
            handles += self._latent_stats_hooks(unet)  # after the guidance hook: sees the three-pass result
            if tokens:

                def wrap(name: str, previous: Any) -> StyleTokenProcessor:
                    return StyleTokenProcessor(
                        name, previous, *self.adapter.layer_projections(name), self.state
                    )

                stack.enter_context(swapped_processors(unet, wrap, active))
            yield

    def _end_call(self) -> None:
        self.state.row_weights = None
        self.state.frames = 1
        self._position = None

    def on_step_begin(self, step_index: int, timestep: int, latents: torch.Tensor) -> None:
        self._position = step_index / max(self._num_steps, 1)

    def _step_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Note the frames per row of a video UNet's ``(B, C, F, h, w)`` sample; apply
        ``StyleCondition.steps``: mix the conditions active at this point of the schedule."""
        sample = args[0] if args else kwargs["sample"]
        self.state.frames = int(sample.shape[2]) if sample.ndim == 5 else 1
        if self.conditions is None or self.per_row or all(c.steps == (0.0, 1.0) for c in self.conditions):
            return
        self._set_mixed(self._schedule_position(args[1] if len(args) > 1 else kwargs["timestep"]))

    # ------------------------------------------------------------------------------------ guidance
    def _text_rows(self, batch: int) -> tuple[int, int]:
        """``(start, count)`` of the text-conditioned rows of a UNet batch."""
        n = self.state.n_rows or batch
        if batch == 2 * n and self._cfg():
            return n, n
        return batch - n, n

    def _cfg(self) -> bool:
        pipe = self._pipe
        return self.state.n_rows is not None and bool(getattr(pipe, "_guidance_scale", 1.0) > 1.0)

    def _guidance_pre_hook(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args = list(args)
        sample = args[0] if args else kwargs["sample"]
        batch = sample.shape[0]
        start, count = self._text_rows(batch)
        rows = slice(start, start + count)
        frames = int(sample.shape[2]) if sample.ndim == 5 else 1  # video: per-frame text rows (AnimateDiff)
        frame_rows = slice(start * frames, (start + count) * frames)

        def extend(value: Any) -> Any:
            if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == batch:
                return torch.cat([value, value[rows]])
            if torch.is_tensor(value) and frames > 1 and value.ndim >= 1 and value.shape[0] == batch * frames:
                return torch.cat([value, value[frame_rows]])
            if isinstance(value, dict):
                return {k: extend(v) for k, v in value.items()}
            return value

        args = [extend(a) for a in args]
        kwargs = {k: extend(v) for k, v in kwargs.items()}
        weights = torch.zeros(batch + count)
        weights[batch:] = 1.0
        self.state.row_weights = weights
        self._guided = (batch, start, count)
        return tuple(args), kwargs

    def _guidance_post_hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        batch, start, count = self._guided
        self.state.row_weights = None
        eps = output[0] if isinstance(output, tuple) else output.sample
        text, styled = eps[start : start + count], eps[batch:]
        text_scale = float(self._pipe._guidance_scale) if self._cfg() and batch == 2 * count else 1.0
        guided = text + float(self.style_guidance_scale) / text_scale * (styled - text)
        eps = torch.cat([eps[:start], guided, eps[start + count : batch]])
        if isinstance(output, tuple):
            return (eps, *output[1:])
        output.sample = eps
        return output

    # ------------------------------------------------------------------------------------ latent statistics
    def _check_latent_stats(self) -> None:
        strength, steps = self.latent_stats_strength, self.latent_stats_steps
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"latent_stats_strength: expected a number in [0, 1], got {strength}")
        if not 0.0 < steps <= 1.0:
            raise ValueError(
                f"latent_stats_steps: expected a fraction of the schedule in (0, 1], got {steps}"
            )
        if not strength or self.adapter.latent_stats_head is not None:
            return
        for i, condition in enumerate(self.conditions or []):
            if condition.image is None:
                raise AdapterCompatibilityError(
                    f"style[{i}]: latent-statistics guidance of a text or embedding style needs an adapter "
                    "with a latent-statistics head, and this one has none (latent_stats_channels=0); give "
                    "the style as an image, set latent_stats_strength=0, or fit the head with "
                    "`python -m stylekit.tokens.latent_stats --adapter DIR`"
                )

    @torch.no_grad()
    def _condition_stats(self, pipe: Any) -> torch.Tensor:
        """Target latent statistics ``(1 or N, 2C)``: an image condition's VAE latent (the image part of an
        image + text condition), else the adapter's head on the condition's code; mixed by ``weight``."""
        assert self.conditions is not None
        size = int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
        param = next(self.adapter.parameters())
        stats = []
        done: dict[int, torch.Tensor] = {}  # a condition repeated per row: once
        for condition, (g, local) in zip(self.conditions, self._codes, strict=True):
            if id(condition) not in done:
                done[id(condition)] = (
                    image_latent_stats(pipe.vae, [condition.image], size)
                    if condition.image is not None
                    else self.adapter.latent_stats(g.to(param), local.to(param)).float().cpu()
                )
            stats.append(done[id(condition)])
        table = torch.cat(stats)
        if self.per_row:
            return table
        weights = torch.tensor([float(c.weight) for c in self.conditions])
        weights = weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1 / len(weights))
        return (weights[:, None] * table).sum(0, keepdim=True)

    def _latent_stats_hooks(self, unet: Any) -> list[Any]:
        if not self.latent_stats_strength or self._stats_target is None:
            return []
        return [unet.register_forward_hook(self._latent_stats_post_hook, with_kwargs=True)]

    def _schedule_position(self, timestep: Any) -> float:
        """Where ``timestep`` lies in the schedule (0 = start), from ``on_step_begin`` or the scheduler."""
        if self._position is not None:
            return self._position
        return schedule_position(self._pipe.scheduler, timestep)

    def _latent_stats_post_hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        """AdaIN the (guided) prediction's x̂₀ toward the target statistics; see ``latent_stats``."""
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        if self._schedule_position(timestep) >= self.latent_stats_steps:
            return output
        eps = output[0] if isinstance(output, tuple) else output.sample
        start, count = self._text_rows(eps.shape[0])
        cfg = self._cfg() and start >= count
        text = slice(start, start + count)
        combined = eps[text]
        if cfg:  # the pipeline's CFG: u + g (t - u)
            uncond = eps[start - count : start]
            combined = uncond + float(self._pipe._guidance_scale) * (combined - uncond)
        scheduler = self._pipe.scheduler
        t = int(torch.as_tensor(timestep).reshape(-1)[0])
        target = self._stats_target
        assert target is not None
        if len(target) > 1:
            target = target[torch.arange(count) % len(target)]
        _, change = guide_prediction(
            sample[text],
            combined,
            float(scheduler.alphas_cumprod[t]),
            target.to(eps.device),
            self.latent_stats_strength,
            scheduler.config.prediction_type,
        )
        eps = eps.clone()
        eps[text] += change.to(eps.dtype)
        if cfg:  # the same change to every chunk: the combined prediction changes by exactly it
            eps[start - count : start] += change.to(eps.dtype)
        if isinstance(output, tuple):
            return (eps, *output[1:])
        output.sample = eps
        return output


def text_to_image(
    pipe: Any,
    prompt: str | list[str],
    style_tokens: StyleTokens | None = None,
    num_images_per_prompt: int = 1,
    **kwargs: Any,
) -> Any:
    """Text-to-image with the stock diffusers call of ``pipe`` (SD or SDXL, also a stylekit StyleID
    pipeline) and optional style tokens. ``kwargs`` go to that call (``guidance_scale``,
    ``num_inference_steps``, ``generator``, ``height``, ``width``, ``output_type``, ...).

    Returns:
        The diffusers pipeline output (``.images``).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    base = next(
        (c for c in (StableDiffusionXLPipeline, StableDiffusionPipeline) if isinstance(pipe, c)), type(pipe)
    )
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    with exclusive_unet(pipe):
        if style_tokens is None:
            return base.__call__(pipe, prompts, num_images_per_prompt=num_images_per_prompt, **kwargs)
        style_tokens.prepare(
            pipe,
            batch_size=len(prompts) * num_images_per_prompt,
            num_inference_steps=kwargs.get("num_inference_steps", 50),
        )
        with style_tokens.attach(pipe):
            return base.__call__(pipe, prompts, num_images_per_prompt=num_images_per_prompt, **kwargs)

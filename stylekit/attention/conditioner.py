"""``AttentionInjection``: the StyleID conditioner.

``prepare`` inverts each distinct content and style image once (or takes the inversion from the
cache), ``attach`` installs injection processors on the targeted layers (and, for the trajectory
strategy, a UNet hook that runs the reference latents in the same batch), and ``on_step_begin``
tells the processors the current timestep. The pipeline reads ``start_latents`` and
``sampling_timesteps`` and runs an ordinary denoising loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from stylekit.attention.injection import InjectionController, InjectionSettings, installed_processors
from stylekit.cache import STRATEGIES, CacheKey, InversionCache, image_digest, scheduler_digest
from stylekit.conditioning import ConditionerBase
from stylekit.inversion import adain_latent, ddim_invert
from stylekit.models import pipeline_fingerprint

ROLE_KINDS = {"content": ("q",), "style": ("k", "v")}
INVERSION_BATCH = 4


@dataclass(frozen=True)
class Row:
    """One stylized output: indices into the content and style lists, and its active step range."""

    content: int
    style: int
    steps: tuple[float, float] = (0.0, 1.0)


@contextmanager
def fp32_for_inversion(pipe: Any) -> Iterator[None]:
    """On CUDA, run the UNet and VAE in fp32 while inverting (weights cast back afterwards, losslessly)."""
    modules = [m for m in (pipe.unet, pipe.vae) if m.dtype != torch.float32]
    device = pipe.__dict__.get("_call_device") or pipe._execution_device
    if device.type != "cuda" or not modules:
        yield
        return
    dtypes = [m.dtype for m in modules]
    for module in modules:
        module.to(torch.float32)
    try:
        yield
    finally:
        for module, dtype in zip(modules, dtypes, strict=True):
            module.to(dtype)


class AttentionInjection(ConditionerBase):
    """StyleID attention injection for a batch of (content, style) rows.

    Args:
        layers: processor names to inject (see ``stylekit.attention.resolve_layers``).
        settings: gamma / temperature / switches.
        adain: AdaIN the start latent with the style's start-latent statistics.
        strategy: ``"features"`` (cached Q/K/V) or ``"trajectory"`` (cached latents; features recomputed
            live from reference rows in the same batch).
        official_timing: reproduce the official start-latent/timestep quirk.
        cache: an ``InversionCache`` (None: no reuse across calls).
        inversion_batch: images inverted per UNet batch (default ``INVERSION_BATCH``).
    """

    def __init__(
        self,
        layers: Sequence[str],
        settings: InjectionSettings,
        adain: bool = True,
        strategy: str = "features",
        official_timing: bool = False,
        cache: InversionCache | None = None,
        inversion_batch: int = INVERSION_BATCH,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"cache_strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.layers = tuple(layers)
        self.settings = settings
        self.adain = adain
        self.strategy = strategy
        self.official_timing = official_timing
        self.cache = cache
        self.inversion_batch = max(1, int(inversion_batch))
        self.controller: InjectionController | None = None
        self.rows: list[Row] = []
        self.start_latents: torch.Tensor | None = None
        self.sampling_timesteps: torch.Tensor | None = None
        self.trajectories: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.content_ids: list[str] = []
        self.style_ids: list[str] = []
        self._num_steps = 0
        self._ref_conditioning: Callable[[int], dict[str, Any]] | None = None

    # ----------------------------------------------------------------------------------- prepare
    def prepare(
        self,
        pipe: Any,
        *,
        contents: torch.Tensor,
        styles: torch.Tensor,
        rows: Sequence[Row],
        num_inference_steps: int,
        unet_conditioning: Callable[[int, torch.dtype], dict[str, Any]],
        **_: Any,
    ) -> None:
        """Invert what the cache lacks and build the start latents.

        Args:
            contents, styles: (Nc, 3, H, W) / (Ns, 3, H, W) pixels in [-1, 1] (same H, W).
            rows: the stylized outputs.
            unet_conditioning: ``f(batch, dtype) -> UNet kwargs`` for the empty prompt.
        """
        device = pipe.__dict__.get("_call_device") or pipe._execution_device
        feature_dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.controller = InjectionController(self.settings, store_dtype=feature_dtype)
        self.rows = list(rows)
        self._num_steps = num_inference_steps
        self._ref_conditioning = unet_conditioning
        model_id = pipeline_fingerprint(pipe)
        height, width = int(contents.shape[-2]), int(contents.shape[-1])

        def key_for(pixels: torch.Tensor, role: str) -> CacheKey:
            return CacheKey(
                image_sha256=image_digest(pixels),
                model=model_id,
                scheduler=scheduler_digest(pipe.scheduler.config),
                steps=num_inference_steps,
                layers=self.layers if self.strategy == "features" else (),
                dtype=str(feature_dtype),
                resolution=(height, width),
                role=role,
                strategy=self.strategy,
                timing="official" if self.official_timing else "corrected",
            )

        jobs: dict[str, tuple[CacheKey, torch.Tensor, str]] = {}
        self.content_ids, self.style_ids = [], []
        for role, images, ids in (("content", contents, self.content_ids), ("style", styles, self.style_ids)):
            for pixels in images:
                key = key_for(pixels, role)
                ids.append(key.digest)
                jobs.setdefault(key.digest, (key, pixels, role))

        entries: dict[str, dict[str, torch.Tensor]] = {}
        missing = []
        for digest, (key, _, _) in jobs.items():
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                entries[digest] = cached
            else:
                missing.append(digest)
        for start in range(0, len(missing), self.inversion_batch):
            chunk = missing[start : start + self.inversion_batch]
            computed = self._invert(pipe, [jobs[d] for d in chunk], chunk, num_inference_steps)
            for digest in chunk:
                entries[digest] = computed[digest]
                if self.cache is not None:
                    self.cache.put(jobs[digest][0], computed[digest])

        for digest, tensors in entries.items():
            self.trajectories[digest] = (tensors["timesteps"], tensors["latents"].to(device))
            if self.strategy == "features":
                self.controller.bank.load(digest, tensors, device)
        first = entries[self.content_ids[0]]
        self.sampling_timesteps = first["sampling_timesteps"]
        start = []
        for row in self.rows:
            content_start = entries[self.content_ids[row.content]]["start"].to(device)
            if self.adain:
                style_start = entries[self.style_ids[row.style]]["start"].to(device)
                content_start = adain_latent(content_start[None], style_start[None])[0]
            start.append(content_start)
        self.start_latents = torch.stack(start)

    def _invert(
        self, pipe: Any, jobs: list[tuple[CacheKey, torch.Tensor, str]], digests: list[str], steps: int
    ) -> dict[str, dict[str, torch.Tensor]]:
        assert self.controller is not None and self._ref_conditioning is not None
        device = pipe.__dict__.get("_call_device") or pipe._execution_device
        controller = self.controller
        with fp32_for_inversion(pipe):
            dtype = pipe.unet.dtype
            pixels = torch.stack([p for _, p, _ in jobs]).to(device=device, dtype=pipe.vae.dtype)
            latents = encode_latents(pipe.vae, pixels).to(dtype)
            conditioning = self._ref_conditioning(len(jobs), dtype)
            capture = self.strategy == "features"
            controller.capture_rows = [
                (d, ROLE_KINDS[role] if capture else ())
                for d, (_, _, role) in zip(digests, jobs, strict=True)
            ]

            def before_eval(_: int, timestep: int) -> None:
                controller.timestep = timestep

            def model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
                return pipe.unet(sample, timestep, **conditioning, return_dict=False)[0]

            controller.mode = "capture"
            try:
                with (
                    installed_processors(pipe.unet, self.layers, controller),
                    pipe.progress_bar(total=steps) as bar,
                ):
                    result = ddim_invert(
                        model, pipe.scheduler, latents, steps, self.official_timing, before_eval, bar.update
                    )
            finally:
                controller.mode = "off"
        out: dict[str, dict[str, torch.Tensor]] = {}
        for row, digest in enumerate(digests):
            tensors = controller.bank.to_tensors(digest) if capture else {}
            controller.bank.discard(digest)
            # Fresh, contiguous copies: the same memory layout as an entry read back from the cache, so
            # a cold call and a cached call give bit-identical results.
            tensors["latents"] = result.latents[:, row].float().clone(memory_format=torch.contiguous_format)
            tensors["start"] = result.start_latent[row].float().clone(memory_format=torch.contiguous_format)
            tensors["timesteps"] = result.timesteps
            tensors["sampling_timesteps"] = result.sampling_timesteps
            out[digest] = tensors
        return out

    # ----------------------------------------------------------------------------------- attach
    @contextmanager
    def attach(self, pipe: Any) -> Iterator[None]:
        assert self.controller is not None, "call prepare() before attach()"
        controller = self.controller
        if self.strategy == "features":
            controller.mode = "inject"
            controller.pairs = [(self.content_ids[r.content], self.style_ids[r.style]) for r in self.rows]
            with installed_processors(pipe.unet, self.layers, controller):
                try:
                    yield
                finally:
                    controller.mode = "off"
            return
        refs = list(
            dict.fromkeys(
                [self.content_ids[r.content] for r in self.rows]
                + [self.style_ids[r.style] for r in self.rows]
            )
        )
        controller.mode = "live"
        controller.live_refs = len(refs)
        controller.live_pairs = [
            (refs.index(self.content_ids[r.content]), refs.index(self.style_ids[r.style])) for r in self.rows
        ]
        handles = []
        n_refs = len(refs)

        def pre_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            # The reference rows go first in and come off last: other conditioners' hooks (style guidance
            # rows, per-row adapters) see the whole batch on the way in and on the way out.
            module._forward_hooks.move_to_end(post.id)
            sample, timestep, *rest = args if args else (kwargs.pop("sample"), kwargs.pop("timestep"))
            t = int(timestep.reshape(-1)[0]) if torch.is_tensor(timestep) else int(timestep)
            ref_latents = torch.stack([self._trajectory_latent(d, t) for d in refs]).to(sample.dtype)
            ref_kwargs = self._ref_conditioning(n_refs, sample.dtype)  # type: ignore[misc]
            kwargs = _prepend_conditioning(kwargs, ref_kwargs)
            if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.shape[0] == sample.shape[0]:
                timestep = torch.cat([timestep[:1].expand(n_refs), timestep])
            return (torch.cat([ref_latents, sample]), timestep, *rest), kwargs

        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
            if isinstance(output, tuple):
                return (output[0][n_refs:], *output[1:])
            output.sample = output.sample[n_refs:]
            return output

        # prepend: the reference rows are added before any other hook (e.g. an evaluation counter) sees the batch
        handles.append(pipe.unet.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True))
        post = pipe.unet.register_forward_hook(hook, with_kwargs=True)
        handles.append(post)
        try:
            with installed_processors(pipe.unet, self.layers, controller):
                yield
        finally:
            for handle in handles:
                handle.remove()
            controller.mode = "off"

    def _trajectory_latent(self, digest: str, timestep: int) -> torch.Tensor:
        timesteps, latents = self.trajectories[digest]
        index = (timesteps == timestep).nonzero()
        if len(index) == 0:
            raise KeyError(f"timestep {timestep} is not on the inverted trajectory")
        return latents[int(index[0])]

    def content_trajectory(self, content_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps ascending (N,), latents (N, C, h, w)) of a content image's inversion."""
        return self.trajectories[self.content_ids[content_index]]

    # ----------------------------------------------------------------------------------- steps
    def on_step_begin(self, step_index: int, timestep: int, latents: torch.Tensor) -> None:
        assert self.controller is not None
        self.controller.timestep = int(timestep)
        assert self.sampling_timesteps is not None
        position = step_index / max(len(self.sampling_timesteps), 1)
        self.controller.row_active = [r.steps[0] <= position < r.steps[1] for r in self.rows]


def encode_latents(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> scaled VAE latents (B, C, H/f, W/f), deterministic (``mode()``)."""
    latents = vae.encode(pixels).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def _prepend_conditioning(kwargs: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    for name, value in ref.items():
        current = out.get(name)
        if isinstance(value, dict):
            current = current or {}
            out[name] = {k: torch.cat([v, current[k]]) if k in current else v for k, v in value.items()}
        elif torch.is_tensor(value) and torch.is_tensor(current):
            out[name] = torch.cat([value.to(current.dtype), current])
    return out

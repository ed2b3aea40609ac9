"""``stylekit`` subcommands beyond ``transfer``: models, embed, similarity, app, training launchers and
the capabilities delegated to their own modules (segment, video, train-lora).

Every handler takes the parsed ``argparse.Namespace`` (or, for pass-through commands, the raw argument
list) and returns an exit code; bad input raises ``InputError`` (exit 2) before any model work, a
missing optional capability raises ``CapabilityUnavailable`` (exit 1). Heavy imports happen inside
the handlers, so ``stylekit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stylekit.batch import InputError, expand_paths

EMBEDDINGS_SUFFIX = ".safetensors"


def _notice(message: str) -> None:
    print(f"stylekit: {message}", file=sys.stderr)


def _positive_int(text: str) -> int:
    from stylekit.cli import positive_int

    return positive_int(text)


# ------------------------------------------------------------------------------------------- models
def add_models_command(subparsers: Any) -> None:
    """Register ``stylekit models``."""
    parser = subparsers.add_parser(
        "models",
        usage="stylekit models [--json] [--cache-dir DIR] [--clear-cache [MODEL ...] [--yes]]",
        help="list model presets and aliases, where downloaded models are cached, clear that cache",
        description="List the model presets (tiny-sd, mini, ...), the aliases of real models (sd15, sd21, sdxl) "
        "and the Hugging Face cache that holds downloaded models. --clear-cache deletes cached models: the "
        "given ones (aliases or hub ids) or, without names, every cached diffusers pipeline; it needs --yes.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="Hugging Face hub cache (default: HF_HUB_CACHE)",
    )
    parser.add_argument(
        "--clear-cache",
        nargs="*",
        default=None,
        metavar="MODEL",
        help="delete these cached models (aliases or hub ids); no names: every cached diffusers pipeline",
    )
    parser.add_argument("--yes", action="store_true", help="confirm --clear-cache")
    parser.set_defaults(handler=run_models)


def hub_cache_dir(cache_dir: Path | None = None) -> Path:
    """The Hugging Face hub cache folder (``--cache-dir``, else ``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def cached_models(cache_dir: Path) -> list[Any]:
    """Cached model repos in ``cache_dir`` (``huggingface_hub`` ``CachedRepoInfo``), sorted by id; [] if none."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    if not cache_dir.is_dir():
        return []
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    return sorted((r for r in info.repos if r.repo_type == "model"), key=lambda r: r.repo_id)


def _is_pipeline(repo: Any) -> bool:
    return any(f.file_name == "model_index.json" for rev in repo.revisions for f in rev.files)


def run_models(args: argparse.Namespace) -> int:
    """``stylekit models``: list, or clear cached models."""
    from stylekit.cli import default_model
    from stylekit.models import ALIASES, MINI_PATH, PRESETS

    cache = hub_cache_dir(args.cache_dir)
    repos = cached_models(cache)
    if args.clear_cache is not None:
        return _clear_cache(cache, repos, args.clear_cache, args.yes, ALIASES)
    by_id = {repo.repo_id: repo for repo in repos}
    listing = {
        "default_model": default_model(),
        "presets": [
            {
                "name": p.name,
                "architecture": p.architecture,
                "description": p.description,
                **(
                    {"path": str(MINI_PATH), "installed": (MINI_PATH / "model_index.json").exists()}
                    if p.name == "mini"
                    else {}
                ),
            }
            for p in PRESETS.values()
        ],
        "aliases": [
            {
                "name": name,
                "hub_id": hub_id,
                "cached_bytes": by_id[hub_id].size_on_disk if hub_id in by_id else None,
            }
            for name, hub_id in ALIASES.items()
        ],
        "cache_dir": str(cache),
        "cached": [
            {"hub_id": r.repo_id, "bytes": r.size_on_disk, "pipeline": _is_pipeline(r)} for r in repos
        ],
    }
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print(f"default model: {listing['default_model']}\n\npresets:")
    for preset in listing["presets"]:
        print(f"  {preset['name']:<10} {preset['architecture']:<5} {preset['description']}")
    print("\naliases (real models, by hub id or local folder):")
    for alias in listing["aliases"]:
        size = _size(alias["cached_bytes"]) if alias["cached_bytes"] is not None else "not cached"
        print(f"  {alias['name']:<10} {alias['hub_id']:<48} {size}")
    total = sum(r.size_on_disk for r in repos)
    print(f"\ncache: {cache} ({len(repos)} model(s), {_size(total)})")
    for repo in repos:
        print(f"  {repo.repo_id:<59} {_size(repo.size_on_disk)}")
    return 0


def _clear_cache(cache: Path, repos: list[Any], names: list[str], yes: bool, aliases: dict[str, str]) -> int:
    wanted = [aliases.get(name, name) for name in names]
    by_id = {repo.repo_id: repo for repo in repos}
    missing = [name for name in wanted if name not in by_id]
    if missing:
        raise InputError(f"--clear-cache: not in the cache {cache}: {', '.join(missing)}")
    chosen = [by_id[name] for name in wanted] if wanted else [r for r in repos if _is_pipeline(r)]
    if not chosen:
        _notice(f"nothing to clear in {cache}")
        return 0
    total = sum(r.size_on_disk for r in chosen)
    if not yes:
        raise InputError(
            f"--clear-cache: would delete {len(chosen)} model(s) ({_size(total)}) from {cache}; add --yes to confirm"
        )
    from huggingface_hub import scan_cache_dir

    hashes = [rev.commit_hash for repo in chosen for rev in repo.revisions]
    scan_cache_dir(cache).delete_revisions(*hashes).execute()
    _notice(f"deleted {len(chosen)} model(s), {_size(total)}: {', '.join(r.repo_id for r in chosen)}")
    return 0


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


# ------------------------------------------------------------------------------------------- extractor
def _add_extractor_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--extractor",
        type=Path,
        default=None,
        metavar="DIR",
        help="a saved StyleExtractor folder (default: the bundled world extractor)",
    )


def add_embed_command(subparsers: Any) -> None:
    """Register ``stylekit embed``."""
    parser = subparsers.add_parser(
        "embed",
        usage="stylekit embed IMAGE... -o FILE.safetensors [--extractor DIR] [--tokens]",
        help="style embeddings of images with the style extractor, saved as safetensors",
        description="Embed images (files or folders) with the style extractor and save the (N, D) L2-normalised "
        "embeddings, stamped with the extractor's identity and the image paths, to a .safetensors file "
        "(usable as `stylekit similarity --to FILE` or stylekit.extractors.load_embeddings).",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="output .safetensors file"
    )
    _add_extractor_flag(parser)
    parser.add_argument("--tokens", action="store_true", help="also save the local style tokens")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64, metavar="N", help="images per batch (64)"
    )
    parser.set_defaults(handler=run_embed)


def load_images(items: Sequence[str | Path], argument: str) -> tuple[list[Path], list[Any]]:
    """Expand files/folders and load every image (RGB PIL); ``InputError`` on a bad path or image."""
    from stylekit.images import InputImageError, load_image

    files, notices = expand_paths(items, argument)
    for message in notices:
        _notice(message)
    images = []
    for path in files:
        try:
            images.append(load_image(path, argument))
        except InputImageError as error:
            raise InputError(str(error)) from None
    return files, images


def check_extractor_path(path: Path | None) -> None:
    """``InputError`` unless ``path`` is None or a saved extractor (a folder with config.json, or its weights)."""
    if path is None:
        return
    folder = path.parent if path.is_file() else path
    if not (folder / "config.json").is_file():
        raise InputError(
            f"--extractor: no config.json in {folder}; expected a folder saved by StyleExtractor.save_pretrained"
        )


def load_extractor(path: Path | None) -> Any:
    """The extractor at ``path`` (``InputError`` if it is not one) or the bundled one."""
    from stylekit.extractors import StyleExtractor, load_default

    if path is None:
        return load_default()
    try:
        return StyleExtractor.from_pretrained(path).eval()
    except (FileNotFoundError, ValueError) as error:
        raise InputError(f"--extractor: {error}") from None


def run_embed(args: argparse.Namespace) -> int:
    """``stylekit embed``: embed images and save them with their paths."""
    from stylekit.extractors import save_embeddings

    if args.output.suffix != EMBEDDINGS_SUFFIX:
        raise InputError(f"-o/--output: expected a {EMBEDDINGS_SUFFIX} file, got {args.output}")
    if args.output.is_dir():
        raise InputError(f"-o/--output: expected a file, got a folder: {args.output}")
    check_extractor_path(args.extractor)
    files, images = load_images(args.images, "IMAGE")
    extractor = load_extractor(args.extractor)
    if args.tokens:
        embeddings, tokens = extractor.embed(images, batch_size=args.batch_size, return_tokens=True)
    else:
        embeddings, tokens = extractor.embed(images, batch_size=args.batch_size), None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"names": json.dumps([str(p) for p in files])}
    save_embeddings(args.output, embeddings, extractor, tokens=tokens, metadata=metadata)
    _notice(f"{len(files)} embeddings {tuple(embeddings.shape)} written to {args.output}")
    return 0


def add_similarity_command(subparsers: Any) -> None:
    """Register ``stylekit similarity``."""
    parser = subparsers.add_parser(
        "similarity",
        usage="stylekit similarity IMAGE... [--to REF...] [--top-k K] [--extractor DIR] [--json]",
        help="style similarity between images (extractor cosine), or nearest styles in a collection",
        description="Without --to: the pairwise style similarity of the IMAGEs (at least two). With --to: for "
        "each IMAGE, the --top-k most similar REFs (image files, folders, or .safetensors files written by "
        "`stylekit embed`). Scores are cosine similarities in [-1, 1] of one extractor; compare them only "
        "with scores of the same extractor.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument(
        "--to", nargs="+", default=None, metavar="REF", help="images, folders or embedding files"
    )
    parser.add_argument(
        "--top-k", type=_positive_int, default=5, metavar="K", help="results per query with --to (5)"
    )
    _add_extractor_flag(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run_similarity)


def _references(items: Sequence[str], extractor: Any) -> tuple[list[str], Any]:
    """Names and (N, D) embeddings of --to items (embedding files are loaded, images embedded)."""
    import torch

    from stylekit.extractors import load_embeddings

    names: list[str] = []
    parts: list[Any] = []
    images: list[str] = []
    for item in items:
        if Path(item).suffix == EMBEDDINGS_SUFFIX:
            if not Path(item).is_file():
                raise InputError(f"--to: no such file: {item}")
            try:
                embeddings, meta = load_embeddings(item, extractor)
            except ValueError as error:
                raise InputError(f"--to: {error}") from None
            embeddings = embeddings.reshape(-1, embeddings.shape[-1])
            stored = json.loads(meta.get("names", "[]"))
            names += (
                stored if len(stored) == len(embeddings) else [f"{item}[{i}]" for i in range(len(embeddings))]
            )
            parts.append(embeddings)
        else:
            images.append(item)
    if images:
        files, loaded = load_images(images, "--to")
        names += [str(p) for p in files]
        parts.append(extractor.embed(loaded))
    return names, torch.nn.functional.normalize(torch.cat(parts).float(), dim=-1)


def run_similarity(args: argparse.Namespace) -> int:
    """``stylekit similarity``: a similarity matrix, or the nearest references of each image."""
    check_extractor_path(args.extractor)
    files, images = load_images(args.images, "IMAGE")
    if args.to is None and len(files) < 2:
        raise InputError("IMAGE: expected at least two images to compare (or give --to REF...)")
    extractor = load_extractor(args.extractor)
    queries = extractor.embed(images)
    if args.to is None:
        matrix = (queries @ queries.T).clamp(-1, 1)
        names = [str(p) for p in files]
        if args.json:
            print(
                json.dumps(
                    {"images": names, "similarity": [[round(float(v), 6) for v in row] for row in matrix]}
                )
            )
        else:
            width = max(len(Path(n).name) for n in names)
            for name, row in zip(names, matrix, strict=True):
                print(f"{Path(name).name:<{width}}  " + "  ".join(f"{float(v):6.3f}" for v in row))
        return 0
    names, database = _references(args.to, extractor)
    scores = queries @ database.T
    k = min(args.top_k, len(names))
    results = []
    for query, row in zip(files, scores, strict=True):
        top = row.topk(k)
        results.append(
            {
                "image": str(query),
                "nearest": [
                    {"ref": names[i], "score": round(float(s), 6)}
                    for s, i in zip(top.values, top.indices, strict=True)
                ],
            }
        )
    if args.json:
        print(json.dumps(results))
    else:
        for result in results:
            print(result["image"])
            for hit in result["nearest"]:
                print(f"  {hit['score']:6.3f}  {hit['ref']}")
    return 0


# ------------------------------------------------------------------------------------------- app
def add_app_command(subparsers: Any) -> None:
    """Register ``stylekit app`` (options from ``stylekit.apps.server``, which imports no Gradio)."""
    from stylekit.apps.server import add_arguments

    parser = subparsers.add_parser(
        "app",
        help="run the web app (Gradio; needs pip install 'stylekit[app]')",
        description="Run the stylekit web app: Image, Regions, Video, LoRA and Style search tabs. Binds "
        "127.0.0.1 unless --host says otherwise; models load on the first request and are shared by every tab.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_app)


def run_app(args: argparse.Namespace) -> int:
    """``stylekit app``: serve until interrupted."""
    from stylekit.capabilities import require

    require("app")
    from stylekit.apps.server import run

    return run(args)


# ------------------------------------------------------------------------------------------- pass-through
def accelerate_command(
    module: str, args: Sequence[str], num_processes: int, cpu: bool, mixed_precision: str
) -> list[str]:
    """``python -m accelerate.commands.launch ... -m MODULE ARGS`` as an argument list. Several CPU processes
    launch as ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1`` in the environment (:func:`launch_environment`):
    accelerate's ``--cpu`` runs one process whatever ``--num_processes`` says."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
    ]
    command += ["--num_processes", str(num_processes), "--mixed_precision", mixed_precision]
    if num_processes > 1:
        command.append("--multi_gpu")  # gloo processes on the CPU under ACCELERATE_USE_CPU=1
    elif cpu:
        command.append("--cpu")
    return [*command, "-m", module, *args]


def launch_environment(cpu: bool) -> dict[str, str]:
    """The environment of a launch: ``ACCELERATE_USE_CPU=1`` added for ``--cpu``."""
    return {**os.environ, "ACCELERATE_USE_CPU": "1"} if cpu else dict(os.environ)


def _launcher_parser(prog: str, module: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        add_help=False,
        description=f"Run `accelerate launch -m {module} ARGS`. The options below are the launcher's; every "
        f"other argument goes to the trainer (see `python -m {module} --help`, printed below with -h). The "
        "trainer's arguments are checked before anything is launched.",
    )
    parser.add_argument("--num-processes", type=_positive_int, default=1, metavar="N", help="processes (1)")
    parser.add_argument("--cpu", action="store_true", help="force CPU processes (gloo)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="(no)")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("-h", "--help", action="store_true", help="show this help and the trainer's")
    return parser


TRAINER_PARSERS = ("parse_args", "parse_config")
"""The names a trainer module's ``argv -> validated config`` function may have."""


def _check_trainer_args(module: Any, args: list[str]) -> None:
    """Run the trainer's own argument parser (``parse_args`` / ``parse_config``) on ``args`` in this
    process, then its ``preflight(config)`` if it has one; ``InputError`` with its message."""
    parse = next((getattr(module, n) for n in TRAINER_PARSERS if hasattr(module, n)), None)
    if parse is None:
        raise RuntimeError(f"{module.__name__} has none of {TRAINER_PARSERS} to check its arguments with")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            config = parse(args)
        if "--help" not in args and hasattr(module, "preflight"):
            module.preflight(config)  # the checks that need no model: data, output folder, resume point
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
            raise InputError(
                lines[-1].split("error: ", 1)[-1] if lines else "invalid trainer arguments"
            ) from None
    except (ValueError, TypeError, OSError) as error:
        raise InputError(str(error)) from None


def launch_trainer(prog: str, capability: str | None, module_name: str, argv: Sequence[str]) -> int:
    """A ``train-*`` command: validate, then run the trainer under ``accelerate launch``; its exit code."""
    import importlib

    from stylekit.capabilities import require

    parser = _launcher_parser(prog, module_name)
    options, rest = parser.parse_known_args(list(argv))
    module = require(capability) if capability else importlib.import_module(module_name)
    if options.help:
        parser.print_help()
        print()
        _check_trainer_args(module, ["--help"])
        return 0
    _check_trainer_args(module, rest)
    command = accelerate_command(
        module_name, rest, options.num_processes, options.cpu, options.mixed_precision
    )
    if options.dry_run:
        print(("ACCELERATE_USE_CPU=1 " if options.cpu else "") + subprocess.list2cmdline(command))
        return 0
    returncode = subprocess.run(command, check=False, env=launch_environment(options.cpu)).returncode
    return 0 if returncode == 0 else 1


def run_train_extractor(argv: Sequence[str]) -> int:
    """``stylekit train-extractor``: ``accelerate launch -m stylekit.extractors.train``."""
    return launch_trainer("stylekit train-extractor", None, "stylekit.extractors.train", argv)


def run_train_lora(argv: Sequence[str]) -> int:
    """``stylekit train-lora``: ``accelerate launch -m stylekit.adapters.train_lora`` (when installed)."""
    from stylekit.capabilities import CAPABILITIES

    return launch_trainer("stylekit train-lora", "train-lora", CAPABILITIES["train-lora"].modules[0], argv)


def _delegate(capability: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        from stylekit.capabilities import CapabilityUnavailable, require

        module = require(capability)
        main = getattr(module, "main", None)
        if main is None:
            raise CapabilityUnavailable(
                f"{module.__name__} has no main(argv) entry point for `stylekit {capability}`"
            )
        code = int(main(list(argv)) or 0)
        return code if code in (0, 2, 130) else 1

    run.__doc__ = f"``stylekit {capability}``: ``main(argv)`` of the {capability} module."
    return run


# Commands whose arguments are passed through untouched: name -> (help line, handler(argv) -> exit code).
PASSTHROUGH: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "video": ("stylize a video (stylekit.video_cli; needs the [video] extra)", _delegate("video")),
    "segment": ("region masks with SAM (stylekit.segment; needs the [sam] extra)", _delegate("segment")),
    "train-lora": (
        "train content/style LoRAs under accelerate launch (stylekit.adapters.train_lora)",
        run_train_lora,
    ),
    "train-extractor": (
        "train a style extractor under accelerate launch (stylekit.extractors.train)",
        run_train_extractor,
    ),
}


def add_passthrough_commands(subparsers: Any) -> None:
    """List the pass-through commands in ``stylekit --help`` (their arguments are parsed by their modules)."""
    for name, (help_text, _) in PASSTHROUGH.items():
        subparsers.add_parser(name, help=help_text, add_help=False)


EXTRA_COMMANDS: tuple[Callable[[Any], None], ...] = (
    add_models_command,
    add_embed_command,
    add_similarity_command,
    add_app_command,
    add_passthrough_commands,
)

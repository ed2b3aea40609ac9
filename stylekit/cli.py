"""The ``stylekit`` command (``transfer`` here; the other subcommands live in ``stylekit.commands``).

    stylekit transfer CONTENT... --style STYLE... -o DIR [--model M] [--gamma G] [--temperature T]
                      [--steps N] [--seed S] [--layers L] [--cache-dir DIR] ...

CONTENT and STYLE are image files or folders (a folder contributes its image files, sorted). Every
content is stylized with every style as one job: each image is inverted once (one ``InversionCache``
for the whole job, on disk with ``--cache-dir``). Outputs are ``DIR/{content}__{style}.png`` with the
parameters in their PNG text chunks. Under ``accelerate launch --num_processes K`` the pairs are split
across the processes. A rerun skips outputs already written with the same settings, so an interrupted
job resumes where it stopped.

Exit codes: 0 success; 2 bad usage or input (one ``stylekit: error: ...`` line on stderr, before any
model work); 1 a failure during the run; 130 interrupted. Outputs already written are always kept.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from stylekit import __version__
from stylekit.batch import (
    InputError,
    Pair,
    expand_paths,
    file_sha256,
    pending_pairs,
    plan_pairs,
    png_text,
    remove_stale_temps,
    style_batches,
    write_atomic,
    write_png_atomic,
)
from stylekit.cache import STRATEGIES
from stylekit.capabilities import CapabilityUnavailable
from stylekit.commands import EXTRA_COMMANDS, PASSTHROUGH
from stylekit.files import ensure_folder

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
LATENT_FACTOR = 8  # VAE downsampling factor of every supported architecture (sizes are rounded down to it)


def default_model() -> str:
    """The model ``--model`` defaults to: the bundled ``mini`` model when installed, else ``tiny-sd``."""
    from stylekit.models import MINI_PATH  # imports torch: only when a command runs, not for --help

    return "mini" if (MINI_PATH / "model_index.json").exists() else "tiny-sd"


# ------------------------------------------------------------------------------------------- parsing
class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises ``InputError`` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise InputError(message)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _number(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def layers_spec(text: str) -> str | dict[str, Any]:
    """argparse type: a preset name, comma-separated layer names/prefixes, or a JSON block mapping
    such as ``{"up": {"block_2": [0, 1, 1], "block_3": true}}``."""
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("expected a preset name, layer names or a JSON mapping, got ''")
    if not text.startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"expected a JSON block mapping ({error.msg}), got {text!r}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_transfer_command(subparsers: Any) -> None:
    """Register ``stylekit transfer``."""
    parser = subparsers.add_parser(
        "transfer",
        usage="stylekit transfer CONTENT... --style STYLE... -o DIR [options]",
        help="stylize content images with style images (StyleID attention injection)",
        description="Stylize every CONTENT image with every STYLE image. Files or folders (a folder's "
        "image files, sorted). Outputs: DIR/{content}__{style}.png with the parameters in the PNG "
        "text metadata. Rerunning skips outputs already written with the same settings. Under "
        "`accelerate launch --num_processes K -m stylekit.cli transfer ...` the pairs are split "
        "across the processes. Give CONTENT before --style (--style takes every path up to the next option).",
    )
    parser.add_argument("content", nargs="+", metavar="CONTENT", help="content image files or folders")
    parser.add_argument(
        "--style",
        nargs="+",
        action="extend",
        required=True,
        metavar="STYLE",
        help="style image files or folders",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="preset (tiny-sd, tiny-sd-v, tiny-sdxl, mini), alias (sd15, sd21, sdxl), hub id or diffusers "
        "folder (default: mini when bundled, else tiny-sd)",
    )
    parser.add_argument(
        "--gamma", type=unit_interval, default=0.75, metavar="G", help="query preservation in [0, 1] (0.75)"
    )
    parser.add_argument(
        "--temperature", type=positive_float, default=1.5, metavar="T", help="attention temperature > 0 (1.5)"
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=50,
        metavar="N",
        help="DDIM steps for inversion and sampling (50)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="random seed, recorded in the outputs (0)"
    )
    parser.add_argument(
        "--layers",
        type=layers_spec,
        default=None,
        metavar="SPEC",
        help="preset (styleid, styleid-diffusers, styleid-official, styleid-xl, ...), comma-separated layer "
        "names, or a JSON block mapping (default: the architecture's preset)",
    )
    parser.add_argument(
        "--height", type=positive_int, default=None, metavar="PX", help="output height (model's native size)"
    )
    parser.add_argument(
        "--width", type=positive_int, default=None, metavar="PX", help="output width (model's native size)"
    )
    parser.add_argument(
        "--no-adain", dest="adain", action="store_false", help="disable AdaIN of the start latent"
    )
    parser.add_argument(
        "--no-injection", dest="attention_injection", action="store_false", help="disable style K/V injection"
    )
    parser.add_argument(
        "--no-query-preservation",
        dest="query_preservation",
        action="store_false",
        help="disable query blending",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep inversions on disk here (reused by reruns)",
    )
    parser.add_argument(
        "--cache-strategy", choices=STRATEGIES, default=None, help="what the inversion cache holds"
    )
    parser.add_argument(
        "--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:N, mps (default: cuda if available)"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="weights dtype (auto: fp16 on CUDA, else fp32)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="pairs per pipeline call; batched pairs share a style (1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE",
        help="write a JSON report (per process: FILE with .rankK before the suffix when K > 1 processes)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(handler=run_transfer)


COMMANDS: tuple[Callable[[Any], None], ...] = (add_transfer_command, *EXTRA_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    """The ``stylekit`` parser; each subcommand sets ``handler(args) -> exit code``."""
    parser = _Parser(prog="stylekit", description="Diffusion-based style transfer on Hugging Face diffusers.")
    parser.add_argument("--version", action="version", version=f"stylekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="print full tracebacks on failure")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def _passthrough(argv: list[str]) -> tuple[bool, Callable[[Sequence[str]], int], list[str]] | None:
    """(debug, handler, arguments) when the command passes its arguments through untouched, else None.

    Top-level options take no values, so the first argument not starting with ``-`` is the command.
    """
    for index, token in enumerate(argv):
        if not token.startswith("-"):
            head = argv[:index]
            if token in PASSTHROUGH and set(head) <= {"--debug"}:
                return "--debug" in head, PASSTHROUGH[token][1], argv[index + 1 :]
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stylekit`` command line; returns the exit code (0, 1, 2 or 130)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = _passthrough(argv)
    if passthrough is not None:
        debug, handler, rest = passthrough
        return _run(lambda: handler(rest), debug)
    try:
        args = build_parser().parse_args(argv)
    except InputError as error:
        return _fail(str(error), EXIT_USAGE)
    except SystemExit as exit_:  # --help / --version
        return exit_.code if isinstance(exit_.code, int) else EXIT_OK
    return _run(lambda: args.handler(args), args.debug)


def _run(handler: Callable[[], int], debug: bool) -> int:
    """Call a command handler and map its outcome to an exit code and one ``stylekit: error:`` line."""
    try:
        return int(handler())
    except InputError as error:
        return _fail(str(error), EXIT_USAGE)
    except CapabilityUnavailable as error:
        return _fail(str(error), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except SystemExit as exit_:  # a delegated module's own argparse (2 = bad usage) or sys.exit
        if exit_.code is None:
            return EXIT_OK
        if not isinstance(exit_.code, int):  # sys.exit("message"): the message is the error
            return _fail(str(exit_.code), EXIT_FAILURE)
        return exit_.code if exit_.code in (EXIT_OK, EXIT_USAGE) else EXIT_FAILURE
    except Exception as error:
        if debug:
            traceback.print_exc()
        return _fail(f"{type(error).__name__}: {error}", EXIT_FAILURE)


def _fail(message: str, code: int) -> int:
    print(f"stylekit: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _notice(message: str) -> None:
    print(f"stylekit: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------- transfer
def collect_inputs(
    contents: Sequence[str], styles: Sequence[str]
) -> tuple[list[Path], list[Path], list[str]]:
    """Expand CONTENT and --style and load every image once to validate it (no model work).

    Returns:
        (content files, style files, notices about skipped non-image files).

    Raises:
        InputError: a missing path, an empty folder, a non-image / truncated / empty image.
    """
    from stylekit.images import InputImageError, load_image

    content_files, content_notes = expand_paths(contents, "CONTENT")
    style_files, style_notes = expand_paths(styles, "--style")
    for files, argument in ((content_files, "CONTENT"), (style_files, "--style")):
        for path in files:
            try:
                load_image(path, argument)
            except InputImageError as error:
                raise InputError(str(error)) from None
    return content_files, style_files, content_notes + style_notes


def process_state(requested_device: str | None) -> Any:
    """accelerate's ``PartialState`` for this process (one process, or one of ``accelerate launch``'s).

    CPU processes are requested when ``ACCELERATE_USE_CPU`` is set, ``--device cpu`` is given, or a
    multi-process launch finds no CUDA GPU (accelerate then uses the gloo backend).
    """
    import os

    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = (
        parse_flag_from_env("ACCELERATE_USE_CPU")
        or (requested_device or "").startswith("cpu")
        or ("LOCAL_RANK" in os.environ and not torch.cuda.is_available())
    )
    return PartialState(cpu=cpu)


def resolve_device(requested: str | None, state: Any) -> Any:
    """The ``torch.device`` to run on: ``--device`` or accelerate's choice (this process's GPU, else CPU)."""
    import torch

    if requested is None:
        return torch.device(state.device)
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise InputError(f"argument --device: expected cpu, cuda, cuda:N or mps, got {requested!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"argument --device: {requested!r} requested but no CUDA GPU is available; expected cpu"
        )
    if device.type == "cuda" and device.index is None and state.num_processes > 1:
        device = torch.device(state.device)
    return device


def resolve_dtype(name: str, device: Any) -> Any:
    """``--dtype`` as a ``torch.dtype``; ``auto`` is fp16 on CUDA and fp32 elsewhere."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type == "cpu":
        raise InputError("argument --dtype: fp16 needs a GPU; expected fp32 or bf16 on cpu")
    return getattr(torch, DTYPES[name])


def load_model(name: str, device: Any, dtype: Any) -> Any:
    """Load ``name`` as a StyleID pipeline on ``device``/``dtype`` with its inner progress bars off."""
    import torch

    from stylekit.models import ALIASES, PRESETS, load_pipeline

    if name in PRESETS and name != "mini" and dtype == torch.float32:
        dtype = None  # tiny presets are built in fp32; casting them again only makes diffusers warn
    try:
        pipe = load_pipeline(name, kind="style-injection", dtype=dtype, device=device)
    except (OSError, ValueError) as error:
        raise InputError(
            f"argument --model: cannot load {name!r}; expected a preset ({', '.join(PRESETS)}), an alias "
            f"({', '.join(ALIASES)}), a hub id or a diffusers folder ({error})"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_layers(pipe: Any, spec: str | dict[str, Any] | None) -> tuple[str, ...]:
    """Resolve ``--layers`` on the loaded UNet (before any inversion); raises ``InputError``."""
    from stylekit.attention import LayerSelectionError, preset_of, resolve_layers

    preset = preset_of(spec)
    if preset is not None and preset.architecture != pipe.architecture:
        raise InputError(
            f"argument --layers: {spec!r} is a preset for {preset.architecture.upper()} models; expected one "
            f"for {pipe.architecture.upper()}"
        )
    try:
        return resolve_layers(spec, pipe.unet.attn_processors.keys(), pipe.architecture)
    except LayerSelectionError as error:
        raise InputError(f"argument --layers: {str(error).removeprefix('layers: ')}") from None


def output_size(pipe: Any, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) of the outputs: given or the model's native size, rounded down to the VAE factor."""
    from stylekit.images import round_to_factor

    factor = int(pipe.vae_scale_factor)
    try:
        return (
            round_to_factor(int(height or pipe.native_resolution), factor, "--height"),
            round_to_factor(int(width or pipe.native_resolution), factor, "--width"),
        )
    except ValueError as error:
        raise InputError(f"argument {error}") from None


def requested_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that determine an output's pixels and are known before the model is loaded."""
    settings: dict[str, Any] = {
        "model": args.model,
        "steps": args.steps,
        "gamma": args.gamma,
        "temperature": args.temperature,
        "layers": args.layers,
        "seed": args.seed,
        "adain": args.adain,
        "attention_injection": args.attention_injection,
        "query_preservation": args.query_preservation,
    }
    for key in ("height", "width"):
        if getattr(args, key) is not None:
            settings[key] = max(LATENT_FACTOR, getattr(args, key) - getattr(args, key) % LATENT_FACTOR)
    return settings


def _report_path(path: Path, state: Any) -> Path:
    if state.num_processes == 1:
        return path
    return path.with_name(f"{path.stem}.rank{state.process_index}{path.suffix}")


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())


def stylize_batch(
    pipe: Any, batch: Sequence[Pair], args: argparse.Namespace, size: tuple[int, int], cache: Any
) -> tuple[list[Any], int]:
    """One pipeline call for pairs sharing a style; returns (PIL images in ``batch`` order, UNet evals)."""
    import torch

    styles = {pair.style for pair in batch}
    if len(styles) != 1:
        raise ValueError(f"a batch must share one style, got {len(styles)}")
    output = pipe(
        content_image=[str(pair.content) for pair in batch],
        style=str(batch[0].style),
        gamma=args.gamma,
        temperature=args.temperature,
        attention_injection=args.attention_injection,
        query_preservation=args.query_preservation,
        adain=args.adain,
        layers=args.layers,
        num_inference_steps=args.steps,
        height=size[0],
        width=size[1],
        generator=torch.Generator("cpu").manual_seed(args.seed),
        cache=cache,
        cache_strategy=args.cache_strategy,
    )
    return list(output.images), int(output.unet_evals)


def run_transfer(args: argparse.Namespace) -> int:
    """``stylekit transfer``: validate everything, plan the pairs, split them across processes, run."""
    started = time.perf_counter()
    args.model = args.model or default_model()
    contents, styles, notices = collect_inputs(args.content, args.style)
    state = process_state(args.device)
    device = resolve_device(args.device, state)
    dtype = resolve_dtype(args.dtype, device)
    if args.cache_dir is not None:
        ensure_folder(args.cache_dir, "argument --cache-dir", InputError)
    out_dir = ensure_folder(args.output, "-o/--output", InputError)
    pairs = plan_pairs(contents, styles)
    digests = {path: file_sha256(path) for path in {*contents, *styles}}
    request = requested_settings(args)

    def settings_for(pair: Pair) -> dict[str, Any]:
        return {**request, "content_sha256": digests[pair.content], "style_sha256": digests[pair.style]}

    todo, done = pending_pairs(pairs, out_dir, settings_for, args.overwrite)
    remove_stale_temps(out_dir, pairs)  # left by a killed run; no process writes before the barrier
    show = state.is_main_process and not args.quiet
    if show:
        for message in notices:
            _notice(message)
    state.wait_for_everyone()  # every process has planned before any output is written
    with state.split_between_processes(todo) as assigned:
        mine: list[Pair] = list(assigned)

    report: dict[str, Any] = {
        "command": "transfer",
        "version": __version__,
        "process_index": state.process_index,
        "num_processes": state.num_processes,
        "pairs_total": len(pairs),
        "pairs_already_done": len(done),
        "pairs_assigned": [pair.name for pair in mine],
        "written": [],
        "unet_evals": 0,
        "pipeline_calls": 0,
        "model": args.model,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "status": "running",
    }
    code = EXIT_OK
    try:
        if mine:
            code = _run_pairs(mine, args, device, dtype, out_dir, settings_for, report, show)
        else:
            report["status"] = "complete"
    finally:
        if report["status"] == "running":
            report["status"] = "error"
        report["seconds"] = round(time.perf_counter() - started, 3)
        if args.report is not None:
            _write_report(_report_path(args.report, state), report)
    if code != EXIT_OK:
        return code
    if state.num_processes > 1:
        if not args.quiet:
            _notice(
                f"process {state.process_index}/{state.num_processes}: {len(report['written'])} of "
                f"{len(pairs)} pairs written here ({len(done)} already done)"
            )
        state.wait_for_everyone()
    if show:
        _notice(f"{len(pairs) - len(done)} written, {len(done)} already done, in {out_dir}")
    return EXIT_OK


def _run_pairs(
    mine: list[Pair],
    args: argparse.Namespace,
    device: Any,
    dtype: Any,
    out_dir: Path,
    settings_for: Callable[[Pair], dict[str, Any]],
    report: dict[str, Any],
    show: bool,
) -> int:
    """Load the model, check layers and size, stylize this process's pairs and write each output."""
    from tqdm.auto import tqdm

    from stylekit.attention.targeting import DEFAULT_PRESET
    from stylekit.cache import InversionCache
    from stylekit.inversion import check_inference_steps

    pipe = load_model(args.model, device, dtype)
    check_layers(pipe, args.layers)
    try:
        check_inference_steps(args.steps, pipe.scheduler)
    except ValueError as error:
        raise InputError(f"argument --steps: {str(error).removeprefix('num_inference_steps: ')}") from None
    size = output_size(pipe, args.height, args.width)
    cache = InversionCache(directory=args.cache_dir)
    strategy = args.cache_strategy or pipe.default_cache_strategy
    common = {
        "model_id": getattr(pipe, "stylekit_model_id", args.model),
        "height": size[0],
        "width": size[1],
        "dtype": report["dtype"],
        "cache_strategy": strategy,
        "layers_effective": args.layers if args.layers is not None else DEFAULT_PRESET[pipe.architecture],
        "version": __version__,
    }
    bar = tqdm(total=len(mine), unit="pair", desc="stylekit", disable=not show, file=sys.stderr)
    try:
        for batch in style_batches(mine, args.batch_size):
            images, evals = stylize_batch(pipe, batch, args, size, cache)
            report["unet_evals"] += evals
            report["pipeline_calls"] += 1
            for pair, image in zip(batch, images, strict=True):
                parameters = {
                    "content": str(pair.content),
                    "style": str(pair.style),
                    **settings_for(pair),
                    **common,
                }
                write_png_atomic(image, out_dir / pair.name, png_text(parameters))
                report["written"].append(pair.name)
                bar.update()
    except KeyboardInterrupt:
        report["status"] = "interrupted"
        bar.close()
        _notice(
            f"interrupted; the {len(report['written'])} output(s) written are kept; rerun the same "
            "command to finish the rest"
        )
        return EXIT_INTERRUPTED
    except Exception as error:
        report["status"] = "failed"
        report["error"] = f"{type(error).__name__}: {error}"
        bar.close()
        if args.debug:
            traceback.print_exc()
        _fail(
            f"{type(error).__name__}: {error} (the {len(report['written'])} output(s) written are kept; rerun "
            "the same command to finish the rest)",
            EXIT_FAILURE,
        )
        return EXIT_FAILURE
    finally:
        bar.close()
        report["cache"] = dict(cache.stats)
    report["status"] = "complete"
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

"""Launching the app with safe defaults; ``main(argv)`` is ``stylekit app``."""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Sequence
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_FILE_SIZE = "20mb"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def launch(
    demo: Any,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    block: bool = True,
    **launch_kwargs: Any,
) -> tuple[Any, str, str | None]:
    """Launch a demo from :func:`~stylekit.apps.build_demo` with safe defaults.

    Binds ``host`` (127.0.0.1: this machine only), refuses uploads over ``max_file_size`` (e.g. ``"20mb"``
    or bytes), serves files only from the app's own folder, never shares publicly, no analytics.

    Returns:
        Gradio's ``(app, local_url, share_url)``; with ``block=False`` the server runs in a thread
        (close it with ``demo.close()``).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    work_dir = getattr(demo, "stylekit_work_dir", None)
    allowed = [str(work_dir)] if work_dir is not None else []
    return demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=max_file_size,
        allowed_paths=allowed,
        share=False,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=not block,
        **launch_kwargs,
    )


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``stylekit app`` (also used by ``stylekit.cli``)."""
    parser = argparse.ArgumentParser(
        prog="stylekit app",
        description="Run the stylekit web app (Gradio). Binds 127.0.0.1 unless --host says otherwise; models "
        "load on the first request and are shared by every tab.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``stylekit app`` options to ``parser``."""
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind ({DEFAULT_HOST}: this machine only)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0 = any free port)"
    )
    parser.add_argument("--model", default=None, metavar="MODEL", help="default model (mini when bundled)")
    parser.add_argument(
        "--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:N (default: cuda if available)"
    )
    parser.add_argument(
        "--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto", help="weights dtype (auto)"
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="the app's folder for uploads and results (a new temp folder)",
    )
    parser.add_argument(
        "--max-file-size",
        default=DEFAULT_MAX_FILE_SIZE,
        metavar="SIZE",
        help="largest upload, e.g. 20mb (20mb)",
    )
    parser.add_argument(
        "--max-steps", type=int, default=100, metavar="N", help="most DDIM steps per request (100)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="requests running at once on the GPU queue (1)",
    )
    parser.add_argument(
        "--search-folder",
        action="append",
        default=None,
        metavar="DIR",
        help="folder offered in Style search (repeatable; default: a gallery rendered from the synthetic world)",
    )


def run(args: argparse.Namespace) -> int:
    """Build and serve the app until interrupted; returns 0."""
    from stylekit.apps.ui import build_demo
    from stylekit.batch import InputError
    from stylekit.files import ensure_folder

    for name in ("max_steps", "concurrency"):
        if getattr(args, name) < 1:
            raise InputError(
                f"argument --{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}"
            )
    if not 0 <= args.port <= 65535:
        raise InputError(f"argument --port: expected 0..65535, got {args.port}")
    for folder in args.search_folder or []:
        if not os.path.isdir(folder):
            raise InputError(f"argument --search-folder: not a folder: {folder}")
    if args.work_dir is not None:
        ensure_folder(args.work_dir, "argument --work-dir", InputError)
    if not re.fullmatch(r"\d+\s*(b|kb|mb|gb|tb)", str(args.max_file_size).strip(), flags=re.IGNORECASE):
        raise InputError(
            f"argument --max-file-size: expected a number and a unit (b, kb, mb, gb, tb), e.g. 20mb; "
            f"got {args.max_file_size!r}"
        )
    demo = build_demo(
        work_dir=args.work_dir,
        default_model=args.model,
        device=args.device,
        dtype=args.dtype,
        max_steps=args.max_steps,
        concurrency_limit=args.concurrency,
        search_folders=args.search_folder,
    )
    launch(demo, host=args.host, port=args.port or None, max_file_size=args.max_file_size, block=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``stylekit app``: parse ``argv`` and serve; returns the exit code."""
    return run(build_parser().parse_args(argv))

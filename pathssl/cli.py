"""Command-line entry point: ``pathssl <command> ...``.

The CLI is a thin layer. Each command lives in ``pathssl/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports happen inside ``run`` so that
``pathssl --help`` and ``pathssl tile`` never import torch. Every command is also a documented
Python function (see each module's docstring for the function it calls).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "tile": ("pathssl.commands.tile", "tile whole-slide images into zarr tile stores"),
    "stain-stats": (
        "pathssl.commands.stain_stats",
        "compute RandStainNA colour statistics from tile stores",
    ),
    "augment-preview": (
        "pathssl.commands.augment_preview",
        "write a picture of what an augmentation recipe does",
    ),
    "pretrain": ("pathssl.commands.pretrain", "pretrain an encoder with a self-supervised method"),
    "embed": ("pathssl.commands.embed", "write one feature vector per tile of a store"),
    "eval": ("pathssl.commands.eval", "tile classification on frozen features: metrics + plots"),
    "nuclei": (
        "pathssl.commands.nuclei",
        "nuclei segmentation + classification: train|predict|evaluate",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from pathssl import __version__

    parser = argparse.ArgumentParser(
        prog="pathssl",
        description="Self-supervised learning for computational pathology.",
    )
    parser.add_argument("--version", action="version", version=f"pathssl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command-line entry point: ``pathssl <command> ...``.

The CLI is a thin layer. Each command lives in ``pathssl/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports happen inside ``run`` so that
``pathssl --help`` and ``pathssl tile`` never import torch. Every command is also a documented
Python function (see each module's docstring for the function it calls).

One error style for every command (:func:`main`): an error prints one line,
``pathssl <cmd>: error: <what>, <where>, <what to do>``. Exit codes: 0 success; 2 bad arguments,
config or inputs (argparse errors, the ``ValueError`` family, e.g. ``tiling.errors.UsageError``,
which commands raise before any work starts, and ``FileNotFoundError``: an input that is not
there); 1 a failure during work (any other exception, or a batch in which some slides or images
failed); 130 interrupted. ``pathssl --debug <cmd>`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

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
    "orl": ("pathssl.commands.orl", "ORL stage 2: object proposals and cross-tile RoI pairs"),
    "demo": ("pathssl.commands.demo", "run the whole pipeline on the sample data: one report"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``pathssl <cmd>: error: <what>; see pathssl <cmd> --help``
    (exit code 2). Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from pathssl import __version__

    parser = _Parser(
        prog="pathssl",
        description="Self-supervised learning for computational pathology.",
    )
    parser.add_argument("--version", action="version", version=f"pathssl {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (for bug reports)"
    )
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


def _command_name(args: argparse.Namespace) -> str:
    """``tile``, ``nuclei predict``, ...: the command as the user typed it."""
    name = str(getattr(args, "command", "") or "")
    sub = getattr(args, f"{name.replace('-', '_')}_command", None)
    return f"{name} {sub}" if sub else name


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and len(exc.args) == 1:  # str(KeyError) is the bare repr
        key = exc.args[0]
        text = key if isinstance(key, str) and " " in key else f"missing key {key!r}"
    if not isinstance(exc, (ValueError, OSError)) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (see the module docstring for the rule)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    name = _command_name(args)
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print(f"pathssl {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        usage = isinstance(exc, ValueError | FileNotFoundError)
        hint = "" if usage else " (pathssl --debug " + name + " ... shows the traceback)"
        print(f"pathssl {name}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 2 if usage else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Errors raised by the tiling stage and the one rule the CLI applies to every command.

Exit-code rule (``pathssl.cli.main``): an error of the ``ValueError`` family means the input was
bad (arguments, config, an input file, an output that may not be written) and is raised before
any work starts: the CLI prints it on one line and exits 2. :class:`UsageError` is the class
commands raise for that; a ``FileNotFoundError`` (an input that is not there) also exits 2.
Any other exception (``OSError``, ``RuntimeError``, ...) is a failure during work: exit 1. A
batch in which some slides or images failed also exits 1. Messages are one line: what is wrong,
where (the file, option or key), and what to do. ``pathssl --debug <cmd>`` shows tracebacks.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad arguments, config, inputs or outputs, found before work starts (CLI exit code 2)."""


class InputNotFoundError(UsageError, FileNotFoundError):
    """An input file or folder that does not exist (still a ``FileNotFoundError``)."""


class OutputError(UsageError):
    """An output that may not be written: it is an input, holds what the command did not write,
    exists without ``--force``, or lies in a folder that cannot be written."""


class DamagedStoreError(ValueError):
    """A tile store whose files do not match what was recorded when it was written."""


class TilingError(Exception):
    """Base class for tiling errors."""


class SlideError(TilingError):
    """A slide cannot be tiled (unreadable, no resolution, would need upsampling, ...).

    The message is one line and names the slide, so a batch manifest can show it as is.
    """

    def __init__(self, slide: str, message: str) -> None:
        super().__init__(f"{slide}: {message}")
        self.slide = slide
        self.reason = message


class ConfigError(TilingError, UsageError):
    """Bad options (e.g. tile size <= overlap)."""

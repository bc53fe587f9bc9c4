"""Errors raised by the tiling stage. Each names the slide and says what to do."""

from __future__ import annotations


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


class ConfigError(TilingError):
    """Bad options (e.g. tile size <= overlap)."""

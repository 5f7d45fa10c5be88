"""What an image job asks for, checked: output formats, sizes, qualities and :class:`OutputSpec`.

Plain Python, no Pillow or NumPy, so a worker's main process validates a job's arguments on its event
loop without loading the imaging libraries: only the process pool that decodes and encodes needs
them (:mod:`mediaq.pure.imaging`, which re-exports everything here).

>>> check_format("JPG"), OutputSpec((250, 200))
('jpeg', OutputSpec(box=(250, 200), format='jpeg', quality=87))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mediaq.errors import PermanentJobError

__all__ = ["MAX_EDGE", "OUTPUT_FORMATS", "OutputSpec", "check_format", "check_quality", "check_size"]

#: Output formats: name -> (Pillow format, file extension).
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}
_FORMAT_ALIASES = {"jpg": "jpeg"}
#: Largest output box side accepted as an argument.
MAX_EDGE = 16384


# -- arguments --------------------------------------------------------------------------------------
def check_format(fmt: Any) -> str:
    """``"JPG"`` -> ``"jpeg"``; a format we cannot write raises ``bad_argument``.

    >>> check_format("JPG"), check_format("webp")
    ('jpeg', 'webp')
    """
    name = _FORMAT_ALIASES.get(str(fmt).lower(), str(fmt).lower()) if isinstance(fmt, str) else None
    if name not in OUTPUT_FORMATS:
        raise PermanentJobError("bad_argument", f"format={fmt!r} is not one of {sorted(OUTPUT_FORMATS)}",
                                argument="format", value=repr(fmt))
    return name


def check_quality(quality: Any) -> int:
    """An encoder quality, an int in 1..100 (bools refused)."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise PermanentJobError("bad_argument", f"quality={quality!r} must be an integer from 1 to 100",
                                argument="quality", value=repr(quality))
    return quality


def check_size(name: str, value: Any) -> int:
    """A box side or edge, an int in 1..MAX_EDGE (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EDGE:
        raise PermanentJobError("bad_argument", f"{name}={value!r} must be an integer from 1 to {MAX_EDGE}",
                                argument=name, value=repr(value))
    return value


@dataclass(frozen=True)
class OutputSpec:
    """One output: fit within ``box`` (``(edge, edge)`` for variants), encoded as ``format``."""

    box: tuple[int, int]
    format: str = "jpeg"
    quality: int = 87

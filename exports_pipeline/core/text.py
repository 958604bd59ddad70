"""Campaign names as people see them in one line: run tags, the command line's tables and summaries.

Names are free text (CR, LF, TAB, escape characters, emoji, combining accents). These helpers change
only how a name is shown, never the value exported.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

ELLIPSIS = "…"
ZERO_WIDTH_JOINER = "\u200d"
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")  # whitespace and control characters (terminal escapes too)
_VARIATION_SELECTORS = ("\ufe0e", "\ufe0f")
_SKIN_TONES = ("\U0001f3fb", "\U0001f3ff")


def single_line(text: str) -> str:
    """Each run of whitespace or control characters as one space, none at either end."""
    return _BREAKS.sub(" ", text).strip()


def _drawn_with_previous(char: str) -> bool:
    """Accents and other marks, joiners, variation selectors and skin tones belong to the character before."""
    return (
        unicodedata.category(char).startswith("M")
        or char == ZERO_WIDTH_JOINER
        or char in _VARIATION_SELECTORS
        or _SKIN_TONES[0] <= char <= _SKIN_TONES[1]
    )


def char_width(char: str) -> int:
    """Terminal columns of a character: none for what is drawn with the previous one, 2 for wide ones."""
    if _drawn_with_previous(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def text_width(text: str) -> int:
    """Terminal columns a text takes."""
    return sum(map(char_width, text))


def shorten(text: str, limit: int, measure: Callable[[str], int] = lambda char: 1) -> str:
    """The text if it measures at most limit (code points by default), else its longest start that fits
    with an ellipsis, never cut between a character and what is drawn with it (an accent, an emoji's
    skin tone, the rest of an emoji joined by ZWJ)."""
    if sum(map(measure, text)) <= limit:
        return text
    cut, used = 0, measure(ELLIPSIS)
    while used + measure(text[cut]) <= limit:
        used += measure(text[cut])
        cut += 1
    while cut > 0 and (_drawn_with_previous(text[cut]) or text[cut - 1] == ZERO_WIDTH_JOINER):
        cut -= 1
    return text[:cut].rstrip() + ELLIPSIS

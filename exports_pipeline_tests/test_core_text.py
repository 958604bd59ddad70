"""Names shown on one line (core/text.py): run tags, the command line's tables. Plain functions, no server."""

from __future__ import annotations

import pytest

from exports_pipeline.core.text import ELLIPSIS, char_width, shorten, single_line, text_width


@pytest.mark.parametrize(
    "raw, line",
    [
        ("Spring survey", "Spring survey"),
        ("  padded\t", "padded"),
        ("a\r\nb", "a b"),  # CR LF is one break, not two spaces
        ("a\rb\nc", "a b c"),
        ("tab\t\tand  spaces", "tab and spaces"),
        ("bell\x07and\x00nul", "bell and nul"),
        ("\x1b[31mred\x1b[0m", "[31mred [0m"),  # the escape character goes, so no terminal colour survives
        ("C1 control\x85here", "C1 control here"),
        ("DEL\x7fchar", "DEL char"),
        ("non\u00a0breaking", "non breaking"),  # a no-break space is whitespace too
        ('Café, "quoted", 東京', 'Café, "quoted", 東京'),  # commas, quotes, accents and CJK are kept
        ("\n\r\t ", ""),
        ("", ""),
    ],
)
def test_single_line_turns_each_run_of_breaks_into_one_space(raw, line):
    assert single_line(raw) == line


@pytest.mark.parametrize(
    "char, width",
    [
        ("a", 1),
        ("é", 1),
        ("東", 2),
        ("Ｆ", 2),  # fullwidth Latin
        ("😀", 2),
        ("\u0301", 0),  # combining acute accent
        ("\u200d", 0),  # zero-width joiner
        ("\ufe0f", 0),  # variation selector
        ("\U0001f3fd", 0),  # skin tone modifier
    ],
)
def test_char_width_counts_terminal_columns(char, width):
    assert char_width(char) == width


def test_text_width_adds_wide_characters_and_ignores_marks():
    assert text_width("ab東京") == 6
    assert text_width("e\u0301te\u0301") == 3  # été written with combining accents
    assert text_width("👍\U0001f3fd") == 2
    assert text_width("") == 0


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("short", 5, "short"),
        ("shorter", 5, "shor" + ELLIPSIS),
        ("word    spaced", 9, "word" + ELLIPSIS),  # no trailing spaces before the ellipsis
        ("abc", 1, ELLIPSIS),
        ("e\u0301e\u0301e\u0301", 3, "e\u0301" + ELLIPSIS),  # never an accent cut from its letter
    ],
)
def test_shorten_by_code_points_keeps_what_fits_and_marks_the_cut(text, limit, expected):
    assert shorten(text, limit) == expected
    assert len(shorten(text, limit)) <= limit


def test_shorten_by_terminal_columns_never_splits_a_wide_character():
    name = "東京都の調査"  # 12 columns
    assert shorten(name, 12, char_width) == name
    cut = shorten(name, 6, char_width)
    assert cut == "東京" + ELLIPSIS and text_width(cut) == 5
    assert text_width(shorten(name, 7, char_width)) <= 7


def test_shorten_keeps_an_emoji_sequence_whole_or_drops_it():
    family = "👨\u200d👩\u200d👧"
    assert shorten("ab" + family + "cd", 4) == "ab" + ELLIPSIS
    assert shorten("ab" + family, 10) == "ab" + family

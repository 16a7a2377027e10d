#!/usr/bin/python3
"""Reference for Zoetrope's prompt cleaning (spec wan21.md sec. 6.4), in Python.

Wan cleans every prompt with `whitespace_clean(basic_clean(text))`:
    basic_clean:      ftfy.fix_text(text) -> html.unescape(html.unescape(text)) -> strip()
    whitespace_clean: re.sub(r'\\s+', ' ', text).strip()

ftfy is not installed here, so `fix_text` is re-implemented below from ftfy 6.3's source
(ftfy/__init__.py fix_text / fix_and_explain, ftfy/fixes.py, ftfy/chardata.py) with its own regexes
and tables, minus the steps the C++ port leaves out on purpose (mojibake repair `fix_encoding`, and the
1,000,000-character segmentation). html.unescape and unicodedata.normalize are Python's own.

Input file: one UTF-8 string per line, hex-encoded. Output file: per input line
"<hex of the cleaned text>\\t<hex of unicodedata.normalize('NFC', text)>".

Usage: prompt_clean_reference.py INPUT OUTPUT
"""

from __future__ import annotations

import html
import html.entities
import re
import sys
import unicodedata

# ---- ftfy.chardata ----------------------------------------------------------------------------------
SINGLE_QUOTE_RE = re.compile("[\u02bc\u2018-\u201b]")
DOUBLE_QUOTE_RE = re.compile("[\u201c-\u201f]")
C1_CONTROL_RE = re.compile(r"[\x80-\x9f]")
HTML_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
ANSI_RE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")


def _build_html_entities():
    entities = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            entities["&" + name] = char
            if name == name.lower():
                name_upper = name.upper()
                entity_upper = "&" + name_upper
                if html.unescape(entity_upper) == entity_upper:
                    entities[entity_upper] = char.upper()
    return entities


HTML_ENTITIES = _build_html_entities()

CONTROL_CHARS = {}
for _code in [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
              *range(0xFFF9, 0xFFFD)]:
    CONTROL_CHARS[_code] = None

LIGATURES = {
    ord("Ĳ"): "IJ", ord("ĳ"): "ij", ord("ŉ"): "ʼn", ord("Ǳ"): "DZ", ord("ǲ"): "Dz", ord("ǳ"): "dz",
    ord("Ǆ"): "DŽ", ord("ǅ"): "Dž", ord("ǆ"): "dž", ord("Ǉ"): "LJ", ord("ǈ"): "Lj", ord("ǉ"): "lj",
    ord("Ǌ"): "NJ", ord("ǋ"): "Nj", ord("ǌ"): "nj", ord("ﬀ"): "ff", ord("ﬁ"): "fi", ord("ﬂ"): "fl",
    ord("ﬃ"): "ffi", ord("ﬄ"): "ffl", ord("ﬅ"): "ſt", ord("ﬆ"): "st",
}


def _build_width_map():
    width_map = {0x3000: " "}
    for i in range(0xFF01, 0xFFF0):
        char = chr(i)
        alternate = unicodedata.normalize("NFKC", char)
        if alternate != char:
            width_map[i] = alternate
    return width_map


WIDTH_MAP = _build_width_map()


def _sloppy_windows_1252(byte: int) -> str:
    try:
        return bytes([byte]).decode("windows-1252")
    except UnicodeDecodeError:
        return chr(byte)


# ---- ftfy.fixes ---------------------------------------------------------------------------------------
def _unescape_fixup(match):
    text = match.group(0)
    if text in HTML_ENTITIES:
        return HTML_ENTITIES[text]
    elif text.startswith("&#"):
        unescaped = html.unescape(text)
        if ";" in unescaped:
            return text
        else:
            return unescaped
    else:
        return text


def unescape_html(text):
    return HTML_ENTITY_RE.sub(_unescape_fixup, text)


def fix_c1_controls(text):
    return C1_CONTROL_RE.sub(lambda m: _sloppy_windows_1252(ord(m.group(0))), text)


def fix_latin_ligatures(text):
    return text.translate(LIGATURES)


def fix_character_width(text):
    return text.translate(WIDTH_MAP)


def uncurl_quotes(text):
    return SINGLE_QUOTE_RE.sub("'", DOUBLE_QUOTE_RE.sub('"', text))


def fix_line_breaks(text):
    return (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
            .replace("\u0085", "\n"))


def remove_terminal_escapes(text):
    return ANSI_RE.sub("", text)


def remove_control_chars(text):
    return text.translate(CONTROL_CHARS)


# ---- ftfy.fix_text / fix_and_explain (no fix_encoding, no surrogates: input is valid UTF-8) -----------
MAX_PASSES = 64  # the C++ port's bound; ftfy itself loops until nothing changes


def fix_and_explain(text, unescape):
    for _ in range(MAX_PASSES):
        origtext = text
        if unescape:
            text = unescape_html(text)
        for fixer in (fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes,
                      fix_line_breaks, remove_terminal_escapes, remove_control_chars):
            text = fixer(text)
        text = unicodedata.normalize("NFC", text)
        if text == origtext:
            return text
    return text


def fix_text(text):
    unescape = True  # "auto"
    out = []
    pos = 0
    while pos < len(text):
        textbreak = text.find("\n", pos) + 1
        if textbreak == 0:
            textbreak = len(text)
        segment = text[pos:textbreak]
        if unescape and "<" in segment:
            unescape = False
        out.append(fix_and_explain(segment, unescape))
        pos = textbreak
    return "".join(out)


# ---- Wan's wrapper ----------------------------------------------------------------------------------------
def basic_clean(text):
    text = fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text):
    text = re.sub(r"\s+", " ", text)
    return text.strip()


def clean(text):
    return whitespace_clean(basic_clean(text))


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="ascii") as handle:
        lines = handle.read().splitlines()
    with open(sys.argv[2], "w", encoding="ascii") as handle:
        for line in lines:
            text = bytes.fromhex(line).decode("utf-8")
            handle.write(clean(text).encode("utf-8").hex() + "\t" +
                         unicodedata.normalize("NFC", text).encode("utf-8").hex() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

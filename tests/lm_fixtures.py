"""A tiny text corpus shared by the language-model tests (a TEXT_PATH file of one's own)."""

from __future__ import annotations

from nbhelpers.core import text


def tiny_corpus(tmp_path_factory) -> text.Corpus:
    """Nine short sentences repeated 20 times, written to a file and loaded with context 16."""
    path = tmp_path_factory.mktemp("text") / "t.txt"
    lines = [f"the {w} cat sat on the {v} mat.\n" for w in ("red", "big", "old") for v in "abc"]
    path.write_text("".join(lines) * 20)
    return text.load_corpus(str(path), context=16)

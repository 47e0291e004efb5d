"""sentencepiece BPE: training on a text sample, loading, and the fixed special ids.

Special ids are fixed for every model this package trains, so datasets, checkpoints
and generation agree without asking the model:

    PAD = 0   padding (never a target: the loss ignores it)
    UNK = 1   a character not seen in the tokenizer's training sample
    BOS = 2   start of a generated text (an empty prompt starts from it)
    EOS = 3   end of a document: documents are joined with it in the dataset
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path

import sentencepiece as spm

from horovod_llm.errors import UserError

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_FILE = "tokenizer.model"
# sentencepiece reads its training input one sentence per line and normalises "\n" to
# a space, which would flatten verse and dialogue. Newlines are therefore mapped to
# this symbol (one reserved piece) before training and encoding, and back on decoding.
NEWLINE = "\u240a"  # SYMBOL FOR LINE FEED


def to_model_text(text: str) -> str:
    return text.replace("\n", NEWLINE)


def encode(processor: spm.SentencePieceProcessor, texts: list[str]) -> list[list[int]]:
    """Batched encoding (sentencepiece loops over the list in C++)."""
    return processor.encode([to_model_text(t) for t in texts])


def decode(processor: spm.SentencePieceProcessor, ids: list[int]) -> str:
    return processor.decode(ids).replace(NEWLINE, "\n")


MODEL_TYPES = ("bpe", "char")


def train_bpe(sample_path: Path, vocab_size: int, character_coverage: float, seed: int, model_type: str = "bpe") -> bytes:
    """Train a BPE model (or, with model_type "char", one piece per character, for which
    vocab_size is only a ceiling) on a local text file, one passage per line with
    newlines already mapped to NEWLINE; return the serialized model.

    Sentences are streamed in and the model written to memory, so the model records no
    temporary paths: the same sample gives the same bytes (and tokenizer hash).
    """
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    with open(sample_path, encoding="utf-8") as sample:
        sentences = (line.rstrip("\n") for line in sample)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=model,
                model_type=model_type,
                vocab_size=vocab_size,
                # a character model has as many pieces as the sample has characters
                hard_vocab_limit=model_type != "char",
                character_coverage=character_coverage,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                # The sample is already bounded and drawn at random by Spark.
                shuffle_input_sentence=False,
                input_sentence_size=0,
                num_threads=2,
                # Keep whitespace runs: verse indentation and line structure matter here.
                remove_extra_whitespaces=False,
                # The text is already normalised (or deliberately not) by data.normalization.
                normalization_rule_name="identity",
                split_digits=True,
                user_defined_symbols=[NEWLINE],
                minloglevel=2,
            )
        except RuntimeError as exc:
            message = str(exc)
            if "Vocabulary size" in message or "vocab_size" in message:
                limit = re.search(r"<= (\d+)", message)
                most = f"at most {limit.group(1)} pieces can be learned from its sample" if limit else message.strip().splitlines()[-1]
                raise UserError(f"tokenizer.vocab_size ({vocab_size}) is too large for this corpus ({most}): lower tokenizer.vocab_size or add text") from None
            raise
    return model.getvalue()


def load(model_bytes: bytes) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    ids = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise UserError(f"tokenizer has special ids {ids}, expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}: retrain it with this package")
    return processor


def fingerprint(model_bytes: bytes) -> str:
    return hashlib.sha256(model_bytes).hexdigest()

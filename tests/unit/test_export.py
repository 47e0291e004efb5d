"""`horovod-llm export --format hf`: transformers loads the folder on its own, in a process
that never imports horovod_llm, and gets this package's token ids and logits."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sentencepiece import sentencepiece_model_pb2

from horovod_llm import checkpoint
from horovod_llm.cli import main
from horovod_llm.config import load_config
from horovod_llm.data import tokenizer
from horovod_llm.errors import UserError
from horovod_llm.inference import export
from horovod_llm.inference.export import export_hf
from horovod_llm.model import GPT, GPTConfig
from tests import tiny_checkpoint

# Newlines, a blank line, leading and trailing spaces, a tab, punctuation, digits,
# characters the tiny tokenizers never saw (unknown: one UNK for a run of them) and a
# special piece's name typed as text (characters, not BOS).
SAMPLE = "KING:\nNow is the winter of our discontent\n\n  Made glorious summer;\tby this sun of York!? \n 'our' \"house\" 1597 — naïve 日本 <s>\n"
# Only characters the tiny tokenizers know: decoding gives the text back on both sides.
KNOWN = tiny_checkpoint.DOCUMENTS[1] + "\n  In the deep;\n"

# Runs in a fresh interpreter: transformers alone loads each folder.
LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    request = json.load(sys.stdin)
    results = {}
    for name, folder in request["folders"].items():
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(torch.tensor(request["batches"][name])).logits
        results[name] = {
            "model_class": type(model).__name__,
            "ids": tok(request["sample"])["input_ids"],
            "known_ids": tok(request["known"])["input_ids"],
            "decoded_known": tok.decode(tok(request["known"])["input_ids"]),
            "special": [tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id],
            "logits": logits.tolist(),
        }
    assert not [m for m in sys.modules if m.startswith("horovod_llm")], "horovod_llm was imported"
    json.dump(results, sys.stdout)
    """
)


def perturbed(model: GPT, seed: int) -> GPT:
    """model with every parameter moved off its initial value: biases off zero, norm gains
    off one, so a bias or gain left out or misplaced shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def char_tokenizer(tmp_path: Path) -> bytes:
    sample = tmp_path / "char-sample.txt"
    sample.write_text("\n".join(tokenizer.to_model_text(d) for d in tiny_checkpoint.DOCUMENTS) + "\n")
    return tokenizer.train_bpe(sample, vocab_size=200, character_coverage=1.0, seed=1, model_type="char")


def save(out: Path, model: GPT, tokenizer_bytes: bytes) -> str:
    return checkpoint.save_checkpoint(str(out), 1, model, None, load_config(None), tokenizer_bytes, {"metrics": {}})


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{variant: (checkpoint URL, export folder)}, each exported a different way, and what
    transformers made of them in a process of its own."""
    tmp = tmp_path_factory.mktemp("export")
    sources = {
        # The trained tiny model as training saves it: sinusoidal, tied, no biases.
        "sinusoidal": tiny_checkpoint.save_tiny_checkpoint(str(tmp / "sinusoidal")),
        "learned": tiny_checkpoint.save_tiny_checkpoint(str(tmp / "learned"), positional="learned"),
    }
    torch.manual_seed(1)
    config = GPTConfig(vocab_size=120, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=True, tie_weights=False)
    untied = save(tmp / "bias-untied", perturbed(GPT(config), 1), tiny_checkpoint.tiny_tokenizer())
    sources["bias-untied"] = str(tmp / "bias-untied.zip")  # exported from a model.zip
    checkpoint.export_model_zip(untied, sources["bias-untied"])
    chars = char_tokenizer(tmp)
    char_vocab = tokenizer.load(chars).get_piece_size()
    sources["char"] = save(tmp / "char", perturbed(GPT(GPTConfig(vocab_size=char_vocab, block_size=12, n_layer=1, n_head=2, n_embd=16)), 2), chars)

    folders = {name: str(tmp / f"hf-{name}") for name in sources}
    for name, source in sources.items():
        if name == "sinusoidal":  # as a user runs it
            assert main(["export", "--format", "hf", "--checkpoint", source, "--out", folders[name]]) == 0
        else:
            export_hf(source, folders[name])
    generator = torch.Generator().manual_seed(0)
    batches = {}
    for name, source in sources.items():
        loaded = checkpoint.load_checkpoint(source)
        block_size, vocab_size = loaded.model.config.block_size, loaded.model.config.vocab_size
        text_ids = tokenizer.encode(tokenizer.load(loaded.tokenizer_bytes), [SAMPLE])[0][:block_size]
        # (3, block_size): the sample's ids and random ones (special ids included), every position
        batches[name] = [text_ids, *torch.randint(0, vocab_size, (2, block_size), generator=generator).tolist()]
    request = {"folders": folders, "batches": batches, "sample": SAMPLE, "known": KNOWN}
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", LOADER], input=json.dumps(request), capture_output=True, text=True, cwd=tmp, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return sources, batches, json.loads(done.stdout)


VARIANTS = ["sinusoidal", "learned", "bias-untied", "char"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_tokenizer_gives_this_packages_ids(exports, variant):
    sources, _, results = exports
    result = results[variant]
    processor = tokenizer.load(checkpoint.load_checkpoint(sources[variant]).tokenizer_bytes)
    ids = tokenizer.encode(processor, [SAMPLE])[0]
    assert tokenizer.UNK_ID in ids and processor.piece_to_id(tokenizer.NEWLINE) in ids  # the sample tests what it should
    assert result["ids"] == ids
    assert result["known_ids"] == tokenizer.encode(processor, [KNOWN])[0]
    assert result["decoded_known"] == tokenizer.decode(processor, result["known_ids"]) == KNOWN
    assert result["special"] == [tokenizer.PAD_ID, tokenizer.UNK_ID, tokenizer.BOS_ID, tokenizer.EOS_ID]


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_model_gives_this_packages_logits(exports, variant):
    sources, batches, results = exports
    assert results[variant]["model_class"] == "GPT2LMHeadModel"
    model = checkpoint.load_checkpoint(sources[variant]).model
    with torch.no_grad():
        ours = model(torch.tensor(batches[variant]))[0]  # (3, block_size, vocab)
    theirs = torch.tensor(results[variant]["logits"])
    assert theirs.shape == ours.shape
    assert export.logits_differ_by(ours, theirs) <= export.MAX_LOGITS_DIFF  # the README's bound, the export's own check
    assert ours.abs().max().item() > 1.0  # logits that say something, not all near zero


def test_an_unmappable_setting_is_refused_in_one_line_naming_it(tmp_path, capsys):
    url = tiny_checkpoint.save_tiny_checkpoint(str(tmp_path / "run"))
    meta_path = Path(url) / "meta.json"
    meta = json.loads(meta_path.read_text())
    # As a later version's checkpoint might say: positions GPT-2 has no table for.
    meta["model_args"] |= {"positional": "rotary", "rope_theta": 10000.0}
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "hf"
    assert main(["export", "--format", "hf", "--checkpoint", url, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "model.positional ('rotary')" in err and "model.rope_theta" in err
    assert not out.exists()


def test_a_tokenizer_setting_this_package_never_uses_is_refused(tmp_path):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tiny_checkpoint.tiny_tokenizer())
    proto.trainer_spec.byte_fallback = True
    url = save(tmp_path / "run", tiny_checkpoint.tiny_model(), proto.SerializeToString())
    with pytest.raises(UserError, match="byte_fallback=true"):
        export_hf(url, str(tmp_path / "hf"))


def test_export_refuses_a_folder_that_holds_files(tmp_path):
    url = tiny_checkpoint.save_tiny_checkpoint(str(tmp_path / "run"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"another model")
    with pytest.raises(UserError, match="is not empty"):
        export_hf(url, str(tmp_path / "hf"))


def test_without_transformers_the_error_names_the_extra(tmp_path, monkeypatch):
    url = tiny_checkpoint.save_tiny_checkpoint(str(tmp_path / "run"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(UserError, match=r"horovod-llm\[hf\]"):
        export_hf(url, str(tmp_path / "hf"))


def test_export_zip_from_the_command_line(tmp_path):
    url = tiny_checkpoint.save_tiny_checkpoint(str(tmp_path / "run"))
    assert main(["export", "--format", "zip", "--checkpoint", url, "--out", str(tmp_path / "model.zip")]) == 0
    assert checkpoint.load_checkpoint(str(tmp_path / "model.zip")).step == 1
    assert main(["export", "--format", "zip", "--checkpoint", url, "--out", str(tmp_path / "model")]) == 2

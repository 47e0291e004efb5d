"""`horovod-llm export --format hf`: a checkpoint as a Hugging Face folder that
`AutoModelForCausalLM` and `AutoTokenizer` load without this package.

The decoder is GPT-2's architecture (`GPT2LMHeadModel`): pre-LayerNorm blocks, exact
GELU, 4x MLP, absolute positions added to the token embeddings, a head tied to them
(or not: model.tie_weights).
The differences are in the storage only:

- GPT-2's `Conv1D` holds (in, out) weights where `nn.Linear` holds (out, in): every
  projection is transposed;
- GPT-2 always has biases: where this model has none (`model.bias=false`) they are
  zeros, which adds nothing;
- the sinusoidal table is a buffer here and a learned embedding there: it is copied
  into GPT-2's `wpe`, whose values then equal it at every position up to block_size.

The sentencepiece model becomes a `tokenizers` tokenizer with the same ids, built by
transformers' converter from sentencepiece's own settings, plus this package's one
addition: newlines are the reserved piece NEWLINE (tokenizer.to_model_text). Prompts
are encoded as `tokenizer.encode` does, without BOS (`generate` puts one first).

A setting this mapping has not been checked for is refused by name, never exported
approximately: the point of the export is that both sides compute the same logits,
which the export checks on a batch before it writes anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import torch

from horovod_llm import checkpoint, storage
from horovod_llm.data import tokenizer
from horovod_llm.errors import UserError
from horovod_llm.model import GPT, GPTConfig

log = logging.getLogger(__name__)

# sentencepiece's ModelProto.TrainerSpec.ModelType: a char model is a BPE model without merges.
SPM_MODEL_TYPES = {2: "bpe", 4: "char"}
# The most the exported model's logits may differ from this package's, relative to the
# largest logit (the same bound in the README and tests/unit/test_export.py). Not bit for
# bit: transformers adds biases and multiplies transposed weights in its own order, which a
# CPU's kernels may round otherwise.
MAX_LOGITS_DIFF = 1e-5


def logits_differ_by(ours, theirs) -> float:
    """The largest difference of two models' logits, relative to the largest logit (at least 1)."""
    return ((ours - theirs).abs().max() / ours.abs().max().clamp(min=1.0)).item()


def unsupported_settings(model_args: dict, spm_proto) -> list[str]:
    """Every setting of a checkpoint that the GPT-2 mapping does not cover, by name."""
    problems = []
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    problems += [f"model.{name} (from a newer version of horovod-llm?) has no GPT-2 equivalent here" for name in sorted(set(model_args) - known)]
    if model_args.get("positional") not in ("sinusoidal", "learned"):
        problems.append(f"model.positional ({model_args.get('positional')!r}) has no GPT-2 equivalent: GPT-2 adds a table of absolute positions")
    trainer, normalizer = spm_proto.trainer_spec, spm_proto.normalizer_spec
    # tokenizer.train_bpe fixes these; the conversion is checked for its settings only,
    # and a tokenizer.model made some other way may have others.
    if trainer.model_type not in SPM_MODEL_TYPES:
        problems.append(f"tokenizer model type {trainer.model_type} is not one of this package's ({', '.join(SPM_MODEL_TYPES.values())})")
    if normalizer.name != "identity":
        problems.append(f"tokenizer normalization rule {normalizer.name!r} is not this package's ('identity')")
    settings = {
        "byte_fallback": (trainer.byte_fallback, False),
        "remove_extra_whitespaces": (normalizer.remove_extra_whitespaces, False),
        "add_dummy_prefix": (normalizer.add_dummy_prefix, True),
        "escape_whitespaces": (normalizer.escape_whitespaces, True),
    }
    for name, (value, ours) in settings.items():
        if value != ours:
            problems.append(f"tokenizer {name}={str(value).lower()} is not this package's setting ({str(ours).lower()})")
    return problems


def gpt2_config_kwargs(config: GPTConfig, layer_norm_eps: float) -> dict:
    """GPT2Config's arguments for a model of `config`."""
    return dict(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=4 * config.n_embd,
        # nn.GELU() is the exact (erf) GELU: transformers' "gelu". "gelu_new", GPT-2's
        # default, is the tanh approximation: logits move by about 1e-3 (the export test's models).
        activation_function="gelu",
        # GPT-2 drops out where this model does: embeddings, attention weights, and the
        # two residual branches.
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        resid_pdrop=config.dropout,
        layer_norm_epsilon=layer_norm_eps,
        initializer_range=config.init_std,
        # Attention scores scaled by 1/sqrt(head size), as scaled_dot_product_attention does.
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=config.tie_weights,
        bos_token_id=tokenizer.BOS_ID,
        eos_token_id=tokenizer.EOS_ID,
        pad_token_id=tokenizer.PAD_ID,
        architectures=["GPT2LMHeadModel"],
    )


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict with the weights of `model`."""
    config = model.config

    def linear(prefix: str, layer: torch.nn.Linear) -> dict[str, torch.Tensor]:
        # Conv1D computes x @ weight + bias with weight (in, out): nn.Linear's transposed.
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
        return {f"{prefix}.weight": layer.weight.detach().t().contiguous(), f"{prefix}.bias": bias.detach().clone()}

    def norm(prefix: str, layer: torch.nn.LayerNorm) -> dict[str, torch.Tensor]:
        bias = layer.bias if layer.bias is not None else torch.zeros_like(layer.weight)
        return {f"{prefix}.weight": layer.weight.detach().clone(), f"{prefix}.bias": bias.detach().clone()}

    positions = model.wpe.weight if config.positional == "learned" else model.wpe_table  # (block_size, n_embd)
    state = {"transformer.wte.weight": model.wte.weight.detach().clone(), "transformer.wpe.weight": positions.detach().clone()}
    for i, block in enumerate(model.blocks):
        prefix = f"transformer.h.{i}"
        # c_attn's outputs are q, k, v one after another, each split into heads the same
        # way on both sides ((B, T, nh, hs)): the same layout, only transposed.
        state |= norm(f"{prefix}.ln_1", block.ln_1) | linear(f"{prefix}.attn.c_attn", block.attn.c_attn)
        state |= linear(f"{prefix}.attn.c_proj", block.attn.c_proj) | norm(f"{prefix}.ln_2", block.ln_2)
        state |= linear(f"{prefix}.mlp.c_fc", block.mlp.c_fc) | linear(f"{prefix}.mlp.c_proj", block.mlp.c_proj)
    state |= norm("transformer.ln_f", model.ln_f)
    # Tied, this is wte's tensor again (GPT2LMHeadModel lists the key either way).
    state["lm_head.weight"] = model.lm_head.weight.detach().clone() if not config.tie_weights else state["transformer.wte.weight"]
    return state


def fast_tokenizer(spm_proto, block_size: int):
    """A transformers fast tokenizer that gives the ids tokenizer.encode gives."""
    from tokenizers import decoders, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    pieces = spm_proto.pieces
    vocab = {piece.piece: i for i, piece in enumerate(pieces)}
    # Follows the model's normalizer spec (dummy prefix, spaces as U+2581, no whitespace
    # folding) and isolates user-defined pieces (NEWLINE) as sentencepiece does.
    converted = SpmConverter.build_tokenizer_from_spm_proto(spm_proto, vocab)
    converted.normalizer = normalizers.Sequence([normalizers.Replace("\n", tokenizer.NEWLINE), converted.normalizer])
    converted.decoder = decoders.Sequence([converted.decoder, decoders.Replace(tokenizer.NEWLINE, "\n")])
    return PreTrainedTokenizerFast(
        tokenizer_object=converted,
        bos_token=pieces[tokenizer.BOS_ID].piece,
        eos_token=pieces[tokenizer.EOS_ID].piece,
        unk_token=pieces[tokenizer.UNK_ID].piece,
        pad_token=pieces[tokenizer.PAD_ID].piece,
        # "<s>" typed in a text is three characters to sentencepiece, not BOS.
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        model_max_length=block_size,
    )


def _check(model: GPT, hf_model, processor, hf_tokenizer) -> float:
    """Max abs difference of both models' logits on a batch; a RuntimeError if the
    tokenizers or the models disagree (a bug in this module, not in the checkpoint)."""
    text = "First line,\n\n  indented: 'quoted' — 42!\n\tend"
    # verbose=False: no warning that the text is longer than the model's context.
    ids, hf_ids = tokenizer.encode(processor, [text])[0], hf_tokenizer(text, verbose=False)["input_ids"]
    if ids != hf_ids:
        raise RuntimeError(f"the exported tokenizer encodes {text!r} as {hf_ids}, this package's as {ids}")
    block_size, vocab_size = model.config.block_size, model.config.vocab_size
    batch = torch.randint(0, vocab_size, (2, block_size), generator=torch.Generator().manual_seed(0))  # (B, T)
    with torch.no_grad():
        diff = logits_differ_by(model(batch)[0], hf_model(batch).logits)
    if not diff <= MAX_LOGITS_DIFF:
        raise RuntimeError(f"the exported model's logits differ from this package's by {diff:.3g} of the largest (at most {MAX_LOGITS_DIFF} expected)")
    return diff


def export_hf(checkpoint_url: str, out_url: str) -> str:
    """Write the checkpoint at `checkpoint_url` (a folder, a run's output_url or a
    model.zip) as a Hugging Face GPT-2 folder at `out_url`; return the checkpoint's URL."""
    try:
        import transformers
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise UserError(f"export --format hf needs transformers ({exc}): pip install 'horovod-llm[hf]'") from None
    out_url = storage.normalize(out_url)
    if storage.exists(out_url) and storage.list_dir(out_url):
        raise UserError(f"--out {out_url} is not empty: pass a new folder (files left from another model would be loaded with this one)")
    source = checkpoint.resolve_checkpoint_url(checkpoint_url)
    files = checkpoint.read_checkpoint_files(source)
    meta = json.loads(files["meta.json"])
    spm_proto = sentencepiece_model_pb2.ModelProto()
    spm_proto.ParseFromString(files["tokenizer.model"])
    problems = unsupported_settings(meta["model_args"], spm_proto)
    if problems:
        raise UserError(f"checkpoint {source} cannot be exported as GPT-2: {'; '.join(problems)}")
    loaded = checkpoint.loaded_from_files(source, files)
    model, processor = loaded.model, tokenizer.load(loaded.tokenizer_bytes)

    hf_config = transformers.GPT2Config(**gpt2_config_kwargs(model.config, model.ln_f.eps))
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    # strict: a GPT-2 weight this module does not fill would keep its random init.
    hf_model.load_state_dict(gpt2_state_dict(model), strict=True)
    hf_tokenizer = fast_tokenizer(spm_proto, model.config.block_size)
    diff = _check(model, hf_model, processor, hf_tokenizer)

    with tempfile.TemporaryDirectory() as tmp:
        # One shard, written in milliseconds: transformers' progress bar would only be noise.
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            hf_model.save_pretrained(tmp)
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        hf_tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            storage.write_bytes(storage.join(out_url, path.name), path.read_bytes())
    log.info("exported %s (step %d) to %s as GPT-2; logits agree within %.1e", source, loaded.step, out_url, diff)
    return source

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from horovod_llm.model import GPT, ROW_BLOCK, GPTConfig, KVCache, crop_length, draw, padded_rows, sample_next, sampling_probs, sinusoidal_table
from tests import tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    args = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    args.update(overrides)
    return GPT(GPTConfig(**args)).eval()


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_output_shapes_and_loss(positional):
    model = tiny(positional=positional)
    idx = torch.randint(4, 50, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 50)
    assert loss.ndim == 0 and torch.isfinite(loss)
    logits, loss = model(idx[:, :5])
    assert logits.shape == (3, 5, 50) and loss is None


def test_attention_is_causal():
    model = tiny()
    idx = torch.randint(4, 50, (1, 10))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :7], b[0, :7], atol=1e-6)  # earlier positions never see later ids
    assert not torch.allclose(a[0, 7:], b[0, 7:])


def test_pad_targets_carry_no_loss():
    model = tiny()
    idx = torch.randint(4, 50, (2, 8))
    targets = idx.clone()
    _, loss_all = model(idx, targets)
    targets[:, 4:] = 0  # PAD
    _, loss_masked = model(idx, targets)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 50), idx[:, :4].reshape(-1))
    assert torch.allclose(loss_masked, expected, atol=1e-6)
    assert not torch.allclose(loss_all, loss_masked)


def test_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_tied_weights_share_storage_and_untied_do_not():
    model = tiny()
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    untied = tiny(tie_weights=False)
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()


def test_param_groups_decay_matrices_only():
    groups = tiny().param_groups(0.1)
    assert groups[0]["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.dim() < 2 for p in groups[1]["params"])


def test_sinusoidal_table_values():
    table = sinusoidal_table(4, 6, rms=0.5**0.5)  # unscaled: sin and cos themselves
    assert table.shape == (4, 6)
    assert torch.allclose(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert torch.isclose(table[1, 0], torch.sin(torch.tensor(1.0)))
    scaled = sinusoidal_table(64, 32, rms=0.02)
    assert torch.isclose(scaled.pow(2).mean().sqrt(), torch.tensor(0.02), rtol=1e-3)


def test_generate_appends_tokens_and_crops_context():
    model = tiny()
    out = model.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=20, temperature=0)
    assert out.shape == (1, 23)  # 23 > block_size: the context is cropped, not refused
    again = model.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=20, temperature=0)
    assert torch.equal(out, again)  # greedy is deterministic


def test_sampling_is_seeded_and_top_k_restricts_choices():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    draws = {int(sample_next(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(s))) for s in range(50)}
    assert draws <= {2, 3} and len(draws) == 2
    a = sample_next(logits, 1.0, 0, torch.Generator().manual_seed(7))
    b = sample_next(logits, 1.0, 0, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert int(sample_next(logits, 0.0, 0)) == 3


def spread(model: GPT) -> GPT:
    """Random weights far from the 0.02 init, so that greedy choices vary from step to step."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_cached_logits_match_a_full_forward_pass(positional):
    model = tiny(positional=positional)
    idx = torch.randint(4, 50, (2, 16))
    full, _ = model(idx)
    cache = KVCache(model.config, batch_size=2)
    steps = [model.lm_head(model.hidden(idx[:, :5], cache))]  # a 5-id prefill, then one id at a time
    steps += [model.lm_head(model.hidden(idx[:, i : i + 1], cache)) for i in range(5, 16)]
    assert cache.length == 16
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        model.hidden(idx[:, :1], cache)  # the cache is full


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_greedy_output_is_the_same_with_and_without_the_cache(positional):
    # a model trained to recite two passages: its greedy output varies from step to step
    # (random weights settle into repeating one id), so a mismatch would show
    model = tiny_checkpoint.tiny_model(positional)
    prompt = torch.tensor([[2, *tiny_checkpoint.encode("QUEEN:\n")]] * 2)  # a batch of 2
    # 4 x block_size new ids: the context overflows and is cropped several times
    with_cache = model.generate(prompt, max_new_tokens=64, temperature=0, use_cache=True)
    without = model.generate(prompt, max_new_tokens=64, temperature=0, use_cache=False)
    assert with_cache.shape == (2, prompt.size(1) + 64)
    assert len(set(with_cache[0].tolist())) > 15
    assert torch.equal(with_cache, without) and torch.equal(with_cache[0], with_cache[1])


def test_a_long_prompt_is_cropped_to_its_last_block_size_ids():
    model = spread(tiny())
    prompt = torch.randint(4, 50, (1, 40))
    first = next(model.generate_tokens(prompt, temperature=0))
    logits, _ = model(prompt[:, -16:])
    assert int(first) == int(logits[0, -1].argmax())
    assert crop_length(16) == 12 and crop_length(1) == 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()

    def draws(top_p, top_k=0):
        return {int(sample_next(logits, 1.0, top_k, torch.Generator().manual_seed(s), top_p=top_p)) for s in range(200)}

    assert draws(0.7) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert draws(0.5) == {0}
    assert draws(0.81) == {0, 1, 2}
    assert draws(1.0) == {0, 1, 2, 3}
    assert draws(0.81, top_k=2) == {0, 1}  # top-k first, then top-p among what is left
    assert draws(1e-9) == {0}  # the most likely id always stays


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_decode_step_puts_each_row_at_its_own_position(positional):
    model = spread(tiny(positional=positional))
    idx = torch.randint(4, 50, (3, 16))
    full, _ = model(idx)  # (3, 16, vocab)
    lengths = [3, 9, 16]  # row b decodes its id at position lengths[b] - 1
    cache = KVCache(model.config, padded_rows(3))
    for b, length in enumerate(lengths):
        if length > 1:
            model.hidden(idx[b : b + 1, : length - 1], cache.rows(b, b + 1))
    positions = torch.tensor(lengths) - 1
    logits = model.decode_step(idx[torch.arange(3), positions], cache, positions)
    assert torch.allclose(logits, full[torch.arange(3), positions], atol=1e-5)
    with pytest.raises(ValueError, match="padded_rows"):
        model.decode_step(idx[:, 0], KVCache(model.config, 3), positions)
    with pytest.raises(ValueError, match="past block_size"):
        model.decode_step(idx[:, 0], cache, positions + 1)


# The kernel settings one machine can force: torch's own kernels for older instruction
# sets, and MKL's code paths (MKL_CBWR=COMPATIBLE is the one under which rows padded to
# 4 but multiplied together lost their bits on AMD, as its AVX-512 path did on Intel).
KERNEL_SETTINGS = [
    {},
    {"ATEN_CPU_CAPABILITY": "avx2"},
    {"ATEN_CPU_CAPABILITY": "default"},
    {"MKL_CBWR": "COMPATIBLE"},
    {"MKL_CBWR": "AVX2"},
    {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"},
    {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
]


@pytest.mark.parametrize("setting", KERNEL_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "native")
def test_a_rows_logits_are_the_same_bits_in_any_batch(setting):
    # What makes a seeded request's output independent of the requests decoded beside
    # it (batching.py): decode_slots' fixed row blocks, each row in its place (model.py's
    # ROW_BLOCK), checked with 1 and 2 threads, under each setting in a process of its
    # own. Rows that moved to another place in a block failed under MKL_CBWR=AVX2 and
    # MKL_ENABLE_INSTRUCTIONS=AVX2 on an Intel Xeon with AMX (and passed on AMD).
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.unit.batch_invariance"], env={**env, **setting}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mismatches"] == [], f"rows that changed bits with the batch (n_embd, threads, size, start) on {result['capability']}: {result['mismatches']}"


def test_decode_slots_decodes_only_the_blocks_of_its_slots():
    model = tiny()
    cache = KVCache(model.config, 3 * ROW_BLOCK)
    before = cache.k.clone()
    slots = [ROW_BLOCK + 5, ROW_BLOCK + 1]  # in the second block, out of order
    ids, positions = torch.tensor([7, 9]), torch.tensor([0, 0])
    with torch.no_grad():
        logits = model.decode_slots(slots, ids, cache, positions)
        alone = [model.decode_step(ids[i : i + 1], KVCache(model.config, ROW_BLOCK), positions[i : i + 1]) for i in range(2)]
    assert torch.allclose(logits, torch.cat(alone), atol=1e-6)  # each row's own logits, in the order asked
    touched = (cache.k != before).flatten(2).any(-1).any(0)  # cache rows written
    assert not touched[:ROW_BLOCK].any() and not touched[2 * ROW_BLOCK :].any() and touched[slots].all()
    assert model.decode_slots([], ids[:0], cache, positions[:0]).shape == (0, model.config.vocab_size)
    with pytest.raises(ValueError, match="whole blocks"):
        model.decode_slots([0], ids[:1], KVCache(model.config, ROW_BLOCK + 1), positions[:1])


def test_generate_tokens_pads_its_cache_for_decode_step():
    model = tiny()
    out = model.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=40, temperature=0)
    assert out.shape == (1, 43)
    assert padded_rows(1) == padded_rows(8) == ROW_BLOCK == 8 and padded_rows(9) == 16 and padded_rows(0) == 0


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.8, 0, 0.95), (1.3, 4, 0.9), (1.0, 50, 1.0), (2.0, 0, 0.5)])
def test_a_rows_sampling_probabilities_are_the_same_bits_in_any_batch(temperature, top_k, top_p):
    # The batcher filters rows with the same settings together and draws each row
    # alone: its draw is the one sample_next makes for that row by itself.
    logits = torch.randn(20, 120, generator=torch.Generator().manual_seed(0)) * 3
    logits[3, :10] = logits[3, 10]  # ties at the top_p boundary
    together = sampling_probs(logits, temperature, top_k, top_p)
    for b in range(20):
        assert torch.equal(sampling_probs(logits[b : b + 1], temperature, top_k, top_p), together[b : b + 1])
    for seed in range(5):
        alone = sample_next(logits[7:8], temperature, top_k, torch.Generator().manual_seed(seed), top_p)
        uniform = torch.rand(1, 1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(alone, draw(together[7:8], uniform))


def test_draw_takes_each_id_with_its_probability_and_never_a_dropped_one():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    ids = draw(probs.repeat(20000, 1), torch.rand(40000, 1, generator=torch.Generator().manual_seed(0)))
    first, second = ids[0::2, 0], ids[1::2, 0]
    frequencies = torch.bincount(first, minlength=5) / first.numel()
    assert torch.allclose(frequencies, probs[0], atol=0.015) and frequencies[1] == frequencies[4] == 0
    assert (second == 4).all()
    # the extremes of [0, 1): the first id that has any probability, and the last
    assert draw(probs[:1], torch.tensor([[0.0]])).item() == 0
    assert draw(probs[:1], torch.tensor([[1.0 - 2**-24]])).item() == 3


def test_top_p_finds_the_same_ids_as_a_sort_of_the_whole_vocabulary():
    # near-uniform rows keep hundreds of ids: past the first 64 that sampling_probs looks at
    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.05], [0.5], [1.0], [3.0], [8.0], [0.01]])
    for top_p in (0.3, 0.9, 0.99):
        sorted_probs, order = torch.sort(torch.softmax(logits, dim=-1), descending=True)
        keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
        keep[:, 0] = True
        expected = torch.zeros_like(keep).scatter(1, order, keep)
        kept = sampling_probs(logits, 1.0, 0, top_p) > 0
        assert torch.equal(kept, expected), top_p
        assert kept.sum(dim=-1).max() > 64


@pytest.mark.parametrize("temperature", [2.978730296859854e-129, 1e-300, 5e-324, 1e-40])
def test_a_temperature_below_the_dtypes_range_samples_greedily(temperature):
    # found by fuzzing the server: such a temperature underflowed to 0, and 0/0 made the
    # probabilities NaN, which drew an id past the vocabulary (an IndexError, a 500)
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    for top_k, top_p in ((0, 1.0), (897, 1.0), (5, 0.5)):
        probs = sampling_probs(logits, temperature, top_k, top_p)
        assert torch.isfinite(probs).all()
        drawn = sample_next(logits, temperature, top_k, torch.Generator().manual_seed(1), top_p)
        assert torch.equal(drawn[:, 0], logits.argmax(dim=-1))

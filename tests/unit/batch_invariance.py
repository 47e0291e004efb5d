"""The check behind test_model.py's batch-invariance test, run in a fresh process per
kernel setting (instruction set, MKL code path), since those are read once at start-up.

    python -m tests.unit.batch_invariance

prints one JSON line: the cases where a row decoded in a smaller batch differs in any
bit from the same row, in the same cache row, decoded among all the others, [] when
there is none.
"""

from __future__ import annotations

import json

import torch

from horovod_llm.model import GPT, GPTConfig, KVCache, padded_rows

# (n_embd, n_head, vocab_size, rows): widths of both parities of head size, batches of
# one to three blocks.
SHAPES = ((32, 4, 120, 13), (48, 4, 300, 20), (128, 4, 2048, 17))


def mismatches(n_embd: int, n_head: int, vocab_size: int, rows: int, threads: int) -> list[list[int]]:
    """Decode `rows` sequences, each in its own cache row (slot) at its own position,
    together (`decode_slots`, as a server decodes them); then every run of consecutive
    slots (the first ones and the last ones) alone, in the same slots, the others
    neither decoded nor holding what they held. The (size, start) of every run whose
    logits differ from the batch's."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=n_head, n_embd=n_embd)).eval()
    with torch.no_grad():
        for p in model.parameters():  # weights far from their initial scale, so that rows differ well
            p.add_(torch.randn_like(p) * 0.2)
    cache = KVCache(model.config, padded_rows(rows))
    prompts = torch.randint(4, vocab_size, (rows, 24))
    positions = torch.randint(0, 24, (rows,))
    with torch.no_grad():
        for b in range(rows):
            if positions[b] > 0:
                model.hidden(prompts[b : b + 1, : positions[b]], cache.rows(b, b + 1))
    ids = prompts[torch.arange(rows), positions]
    snapshot = (cache.k.clone(), cache.v.clone())
    together = model.decode_slots(list(range(rows)), ids, cache, positions)
    found = []
    for size in range(1, rows):
        for start in (0, rows - size):
            cache.k.copy_(snapshot[0])
            cache.v.copy_(snapshot[1])
            others = [b for b in range(rows) if not start <= b < start + size]
            cache.k[:, others] = torch.randn_like(cache.k[:, others])  # neighbours that hold something else
            slots = list(range(start, start + size))
            alone = model.decode_slots(slots, ids[slots], cache, positions[slots])
            if not torch.equal(alone, together[slots]):
                found.append([n_embd, threads, size, start])
    return found


def main() -> None:
    found = [case for threads in (1, 2) for shape in SHAPES for case in mismatches(*shape, threads)]
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "mismatches": found}))


if __name__ == "__main__":
    main()

"""A GPT-style decoder: pre-LayerNorm blocks of causal self-attention and an MLP.

Torch only: no Horovod, Spark, storage or configuration files. Names follow nanoGPT
(n_layer, n_head, n_embd, block_size, vocab_size).

Generation decodes incrementally with a key/value cache (`KVCache`). Positions are
absolute (sinusoidal or learned, added to the token embeddings), so a cached key is
only valid at the position it was computed for: the cache cannot slide. The context
policy, the same with and without the cache, is therefore: the context holds at most
`block_size` ids; when a new id would overflow it, it is cropped to its last
`crop_length(block_size)` ids (three quarters) and, with the cache, the cache is
recomputed from those in one forward pass. Recomputing every `block_size // 4` steps
costs little, and greedy output with and without the cache is identical.

With the cache, each step feeds one id per sequence through `decode_step`, where every
row of the batch sits at its own position (a server decodes unrelated requests
together, each joining and leaving as it starts and ends); the ids before it are
prefilled in one pass. Through `decode_slots`, a sequence that keeps its cache row gets
the same logits, bit for bit, whatever else is in the batch, so a seeded sample does not
depend on its neighbours: see ROW_BLOCK for how.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False
    positional: str = "sinusoidal"  # or "learned"
    tie_weights: bool = True
    pad_id: int = 0  # targets equal to it carry no loss
    init_std: float = 0.02  # of the normal initialisation of weights and embeddings (GPT-2's)


def sinusoidal_table(block_size: int, n_embd: int, rms: float) -> torch.Tensor:
    """(block_size, n_embd) fixed positional encodings of "Attention Is All You Need",
    scaled to root-mean-square `rms` (the embeddings' init_std). Unscaled (RMS 0.71) they
    drown token embeddings initialised at std 0.02, and the model learns little beyond unigram statistics
    (seen here: validation loss 6.5 against 5.6 after 150 steps on the demo)."""
    position = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd))
    table = torch.zeros(block_size, n_embd)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: n_embd // 2])
    return table * (rms / math.sqrt(0.5))


# Batch invariance by construction. A server's sequence keeps one cache row (its slot)
# for its whole life, and `decode_slots` decodes it in the block of ROW_BLOCK cache rows
# its slot falls in, as one tensor of exactly ROW_BLOCK rows (the block's other rows are
# its neighbours, or padding where none is decoded). Every kernel then sees the same
# shape, and the row the same place in it, at every step whatever else is decoded, so
# no CPU, BLAS or thread count can compute it another way. The one assumption left is
# that a row's result does not depend on the values in the other rows of its block:
# true of matrix products (a row's dot products never read another row), of row-wise
# ops (LayerNorm, softmax) and of element-wise ones. A row's place in the block does
# matter: MKL's AVX2 path on an Intel Xeon (MKL_CBWR=AVX2, and natively on a CPU
# without AVX-512) computes rows of an 8-row block differently by place, so a row that
# moved to another place lost its bits; the older schemes (rows packed to the front as
# others left, and before that padded to 4 and multiplied all together) relied on
# places not mattering. tests/unit/test_model.py checks it under forced instruction
# sets, MKL's code paths and thread counts. The price: a batch of 16 takes two block
# passes where one pass did (about 1.2x a step of the demo's model,
# bench/serve_batching.py), one row alone computes 8, and slots freed in the middle
# of the batch can leave a block decoded for fewer rows than it could hold.
ROW_BLOCK = 8


def padded_rows(num_rows: int, block: int = ROW_BLOCK) -> int:
    """The rows `decode_step` computes for num_rows sequences (and a cache must hold)."""
    return -(-num_rows // block) * block


def crop_length(block_size: int) -> int:
    """Ids kept when generation's context overflows block_size (see the module's docstring)."""
    return max(1, block_size * 3 // 4)


class KVCache:
    """Keys and values of the positions seen so far, for every layer, preallocated to
    block_size: k and v are (n_layer, B, nh, block_size, hs), valid up to `length`."""

    def __init__(self, config: GPTConfig, batch_size: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache of rows start .. stop - 1 that shares this one's storage, at length 0:
        prefilling it writes into this cache."""
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.length = self.k[:, start:stop], self.v[:, start:stop], 0
        return view

    def copy_row(self, source: int, target: int) -> None:
        self.k[:, target] = self.k[:, source]
        self.v[:, target] = self.v[:, source]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
        """x (B, T, C); kv: this layer's cache keys and values (B, nh, block_size, hs) and
        the position of x's first id, for incremental decoding."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        else:
            cache_k, cache_v, start = kv
            cache_k[:, :, start : start + T] = k
            cache_v[:, :, start : start + T] = v
            k, v = cache_k[:, :, : start + T], cache_v[:, :, : start + T]  # (B, nh, start + T, hs)
            # Query i sits at position start + i and sees keys 0 .. start + i; one new
            # query sees every cached key, so it needs no mask.
            mask = None if T == 1 else torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def decode(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, 1, C): one new id per row, row b at position positions[b]; cache_k and
        cache_v (B, nh, block_size, hs) this layer's rows of the cache; mask
        (B, 1, 1, block_size) True where a row's key is valid (positions 0 .. its own),
        or None for a single row."""
        B, _, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, self.n_head, 1, hs)  # (B, nh, 1, hs): with one position, no transpose is needed
        if mask is None:  # one sequence, unpadded: as `forward` decodes it, over the keys up to it
            end = int(positions[0]) + 1
            cache_k[:, :, end - 1 : end] = k.view(B, self.n_head, 1, hs)
            cache_v[:, :, end - 1 : end] = v.view(B, self.n_head, 1, hs)
            y = F.scaled_dot_product_attention(q, cache_k[:, :, :end], cache_v[:, :, :end])
        else:
            rows = torch.arange(B, device=x.device)
            cache_k[rows, :, positions] = k.view(B, self.n_head, hs)
            cache_v[rows, :, positions] = v.view(B, self.n_head, hs)
            # Written out rather than F.scaled_dot_product_attention: its fused CPU kernel
            # splits the work by batch size when it has several threads, so a row's result
            # would depend on the batch; these products and the softmax treat each row
            # alone. Keys past a row's position (another sequence's, or none yet) weigh 0.
            att = (q @ cache_k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, 1, block_size)
            att = att.masked_fill(~mask, float("-inf"))
            y = F.softmax(att, dim=-1) @ cache_v  # (B, nh, 1, hs)
        return self.resid_dropout(self.c_proj(y.view(B, 1, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv)
        return x + self.mlp(self.ln_2(x))

    def decode(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn.decode(self.ln_1(x), cache_k, cache_v, positions, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional must be 'sinusoidal' or 'learned', not {config.positional!r}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.positional == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            # A buffer, not a parameter: saved with the weights, never trained.
            self.register_buffer("wpe_table", sinusoidal_table(config.block_size, config.n_embd, config.init_std), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's
        # variance from growing with depth.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    @torch.no_grad()
    def init_token_embedding(self, matrix: torch.Tensor) -> None:
        """Copy a prepared (vocab_size, n_embd) matrix (e.g. Word2Vec) into the token embedding."""
        if tuple(matrix.shape) != tuple(self.wte.weight.shape):
            raise ValueError(f"embedding matrix has shape {tuple(matrix.shape)}, the model needs {tuple(self.wte.weight.shape)}")
        self.wte.weight.copy_(matrix)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.positional == "learned":
            n -= self.wpe.weight.numel()
        return n

    def positions(self, T: int, start: int = 0) -> torch.Tensor:
        """(T, C) embeddings of positions start .. start + T - 1."""
        if self.config.positional == "learned":
            return self.wpe(torch.arange(start, start + T, device=self.wte.weight.device))
        return self.wpe_table[start : start + T]

    def position_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """(B,) positions -> (B, C) their embeddings."""
        if self.config.positional == "learned":
            return self.wpe(positions)
        return self.wpe_table[positions]

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) ids -> final hidden states (B, T, C). With a cache, idx continues the
        cached positions, and its keys and values are added to the cache."""
        B, T = idx.size()
        start = 0 if cache is None else cache.length
        if self.config.block_size < start + T:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.positions(T, start))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else (cache.k[i], cache.v[i], start))
        if cache is not None:
            cache.length = start + T
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) ids -> logits (B, T, vocab); with targets, also the mean loss."""
        logits = self.lm_head(self.hidden(idx))  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=self.config.pad_id)
        return logits, loss

    def flops_per_token(self) -> int:
        """nanoGPT's estimate of training FLOPs per token: 6N + 12 L H Q T."""
        c = self.config
        return 6 * self.num_parameters() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Matrices are decayed; biases, norms and (1-D) gains are not."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @torch.no_grad()
    def decode_step(self, ids: torch.Tensor, cache: KVCache, positions: torch.Tensor, row_block: int | None = ROW_BLOCK) -> torch.Tensor:
        """ids (B,), one per sequence, each at its own position (B,) -> next-id logits
        (B, vocab). Sequence b is row b of the cache, valid below positions[b]; its new
        key and value go at positions[b].

        With row_block (the default, ROW_BLOCK), the rows are padded to
        padded_rows(B, row_block), which the cache must hold, and decoded one block of
        row_block rows at a time, so that a row's logits do not depend on the values in
        the other rows (`decode_slots` keeps each sequence's place too: see ROW_BLOCK).
        The padding rows' position 0 is overwritten, harmless to a row that a later
        prefill or step writes before reading. With row_block None, the B
        rows are decoded together, unpadded: faster, but a row's bits may depend on
        the batch (`generate_tokens`, whose rows are one prompt's samples)."""
        B, block_size = ids.size(0), self.config.block_size
        block = B if row_block is None else row_block
        padded = B if row_block is None else padded_rows(B, row_block)
        if cache.k.size(1) < padded:
            raise ValueError(f"a cache of {cache.k.size(1)} rows cannot decode {B} sequences: it needs padded_rows({B}) = {padded}")
        if B and int(positions.max()) >= block_size:
            raise ValueError(f"position {int(positions.max())} is past block_size {block_size}: crop the context first")
        if padded > B:
            ids = torch.cat((ids, ids.new_zeros(padded - B)))
            positions = torch.cat((positions, positions.new_zeros(padded - B)))
        blocks = [self._decode_block(ids[s : s + block], cache, s, positions[s : s + block]) for s in range(0, padded, block)]
        return (blocks[0] if len(blocks) == 1 else torch.cat(blocks))[:B]  # (B, vocab)

    def decode_slots(self, slots: list[int], ids: torch.Tensor, cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
        """ids and positions (N,) of the sequences in cache rows `slots` (N distinct) ->
        their next-id logits (N, vocab), each row decoded in the block of ROW_BLOCK cache
        rows its slot falls in (`decode_step` on that block, the rows no sequence asked
        for padding it), blocks without one skipped: a sequence that keeps its slot gets
        the same bits in any batch (see ROW_BLOCK). The cache holds whole blocks."""
        if cache.k.size(1) % ROW_BLOCK:
            raise ValueError(f"a cache of {cache.k.size(1)} rows is not whole blocks of {ROW_BLOCK}: make it padded_rows(rows) rows")
        if not slots:
            return torch.empty(0, self.config.vocab_size, device=ids.device)
        firsts = sorted({slot - slot % ROW_BLOCK for slot in slots})  # the blocks decoded, stacked in this order
        stacked = {first: i * ROW_BLOCK for i, first in enumerate(firsts)}
        places = torch.tensor([stacked[slot - slot % ROW_BLOCK] + slot % ROW_BLOCK for slot in slots], device=ids.device)
        all_ids, all_positions = ids.new_zeros(len(firsts) * ROW_BLOCK), positions.new_zeros(len(firsts) * ROW_BLOCK)
        all_ids[places], all_positions[places] = ids, positions
        blocks = [
            self.decode_step(all_ids[at : at + ROW_BLOCK], cache.rows(first, first + ROW_BLOCK), all_positions[at : at + ROW_BLOCK], ROW_BLOCK)
            for first, at in stacked.items()
        ]
        return (blocks[0] if len(blocks) == 1 else torch.cat(blocks))[places]

    def _decode_block(self, ids: torch.Tensor, cache: KVCache, first: int, positions: torch.Tensor) -> torch.Tensor:
        """One block of `decode_step`: ids and positions (R,) of cache rows first ..
        first + R - 1 -> their logits (R, vocab)."""
        R, block_size = ids.size(0), self.config.block_size
        # (R, 1, 1, block_size) the keys each row sees; none for one row decoded alone
        mask = None if R == 1 else (torch.arange(block_size, device=ids.device) <= positions[:, None])[:, None, None, :]
        x = self.drop(self.wte(ids) + self.position_rows(positions)).unsqueeze(1)  # (R, 1, C)
        for i, block in enumerate(self.blocks):
            x = block.decode(x, cache.k[i, first : first + R], cache.v[i, first : first + R], positions, mask)
        # lm_head over every padded row too: sliced before it, fewer rows would take
        # the matrix product's other kernels.
        return self.lm_head(self.ln_f(x[:, 0]))

    @torch.no_grad()
    def generate_tokens(
        self,
        idx: torch.Tensor,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield the next ids (B, 1) after idx (B, T >= 1), one step at a time, for as long
        as the caller iterates. Context policy: see the module's docstring."""
        block_size = self.config.block_size
        context = idx[:, -block_size:]  # (B, T) what the model conditions on
        if not use_cache:
            while True:
                next_id = sample_next(self.lm_head(self.hidden(context)[:, -1, :]), temperature, top_k, generator, top_p)
                yield next_id
                context = torch.cat((context, next_id), dim=1)
                if context.size(1) > block_size:
                    context = context[:, -crop_length(block_size) :]
        B = idx.size(0)
        # Unpadded: the rows are one prompt's samples, so no row must be independent of
        # the batch, and one sequence keeps the matrix-vector speed.
        cache = KVCache(self.config, B, self.wte.weight.dtype, idx.device)
        rows = cache.rows(0, B)
        prefill = True
        while True:
            if prefill:
                # Every id but the last into the cache in one pass; the last goes through
                # decode_step like any other step (as a server decodes it).
                rows.reset()
                if context.size(1) > 1:
                    self.hidden(context[:, :-1], rows)
            positions = torch.full((B,), context.size(1) - 1, dtype=torch.long, device=idx.device)
            next_id = sample_next(self.decode_step(context[:, -1], cache, positions, row_block=None), temperature, top_k, generator, top_p)
            yield next_id
            context = torch.cat((context, next_id), dim=1)
            prefill = context.size(1) > block_size
            if prefill:
                context = context[:, -crop_length(block_size) :]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
        stop_id: int | None = None,
        top_p: float = 1.0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Append up to `max_new_tokens` sampled ids to idx (B, T); temperature 0 is greedy.
        Stops early once every row has produced `stop_id`."""
        steps = self.generate_tokens(idx, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, use_cache=use_cache)
        stopped = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _, next_id in zip(range(max_new_tokens), steps, strict=False):
            idx = torch.cat((idx, next_id), dim=1)
            if stop_id is not None:
                stopped |= next_id[:, 0] == stop_id
                if bool(stopped.all()):
                    break
        return idx


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    generator: torch.Generator | None = None,
    top_p: float = 1.0,
) -> torch.Tensor:
    """(B, vocab) logits -> (B, 1) ids: greedy at temperature 0; else sampling from the
    top_k most likely ids (0: all), then from the smallest set of them whose
    probability reaches top_p (nucleus sampling; 1: all)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    # Drawn on the CPU (the generator's device) whatever the model's: a seed gives the
    # same numbers on a GPU as on a CPU.
    return draw(probs, torch.rand(probs.size(0), 1, generator=generator).to(probs.device))


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """(B, vocab) probabilities and (B, 1) numbers uniform in [0, 1) -> (B, 1) ids: the
    first id whose running sum of probabilities exceeds the row's number (of that sum's
    total, so that rounding never runs past the last id), which is id i with probability
    probs[i]; an id of probability 0 is never drawn. One random number per row: a server
    drawing each row with its own generator makes one small call per row, where
    torch.multinomial's draw takes vocab exponential numbers (68 us per row of 2048)."""
    cdf = probs.cumsum(dim=-1)  # (B, vocab), row by row
    return torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float = 1.0) -> torch.Tensor:
    """(B, vocab) logits -> (B, vocab) the probabilities `sample_next` draws from
    (temperature > 0). Row by row: a row's probabilities are the same bits whatever
    rows lie beside it, so a server can filter many rows at once and still draw each
    from exactly what it gets alone."""
    # A tiny temperature (3e-129, found by fuzzing the server) underflowed to 0 in the
    # logits' dtype, and 0/0 made the probabilities NaN. With each row's largest logit
    # at 0 and the temperature at least the dtype's smallest normal number, the most
    # likely ids stay at 0 and the rest go to -inf: greedy, as such a temperature means.
    temperature = max(temperature, torch.finfo(logits.dtype).tiny)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # An id is dropped when the ids more likely than it already reach top_p; the
        # most likely id is always kept. The ids kept are a row's most likely few, so
        # they are looked for among its top 64, then 4x more for the rows that need it,
        # rather than by sorting the whole vocabulary (2.5 ms for 16 rows of 2048): the
        # same ids either way, since a row's running sums over its most likely ids do
        # not depend on how many are taken.
        probs = F.softmax(logits, dim=-1)
        kept, pending = _nucleus(probs, top_p, min(64, probs.size(-1)))
        k = min(64, probs.size(-1))
        while pending.numel():  # the rows whose k-th id was still kept
            k = min(4 * k, probs.size(-1))
            some, still = _nucleus(probs[pending], top_p, k)
            kept[pending] = some
            pending = pending[still]
        logits = logits.masked_fill(~kept, float("-inf"))
    return F.softmax(logits, dim=-1)


def _nucleus(probs: torch.Tensor, top_p: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, vocab) probabilities -> (B, vocab) the ids top_p keeps among each row's k most
    likely, and the rows whose k-th id is kept too (they may keep more: to redo with a
    larger k)."""
    top, order = torch.topk(probs, k)  # (B, k), most likely first
    before = top.cumsum(dim=-1) - top
    keep = before < top_p
    keep[:, 0] = True
    kept = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, keep)
    if k == probs.size(-1):
        return kept, torch.zeros(0, dtype=torch.long, device=probs.device)
    return kept, keep[:, -1].nonzero()[:, 0]

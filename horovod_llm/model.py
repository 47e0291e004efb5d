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
        cache = KVCache(self.config, idx.size(0), self.wte.weight.dtype, idx.device) if use_cache else None
        unseen = context  # ids whose keys and values are not in the cache yet
        while True:
            x = self.hidden(unseen, cache) if cache is not None else self.hidden(context)
            # Only the last position's logits are needed: (B, vocab), not (B, T, vocab).
            next_id = sample_next(self.lm_head(x[:, -1, :]), temperature, top_k, generator, top_p)
            yield next_id
            context = torch.cat((context, next_id), dim=1)
            unseen = next_id
            if context.size(1) > block_size:
                context = context[:, -crop_length(block_size) :]
                if cache is not None:
                    cache.reset()
                    unseen = context

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
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        # An id is dropped when the ids more likely than it already reach top_p; the
        # most likely id is always kept.
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop = before >= top_p
        drop[:, 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)

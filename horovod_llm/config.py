"""Typed, sectioned configuration: defaults < YAML file < `section.key=value` overrides.

The dataclasses below are the schema (OmegaConf structured configs): an unknown key or
a value of the wrong type fails with the key's full name, and `validate` collects every
semantic problem and reports them at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from horovod_llm.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "horovod-llm"
    driver_memory: str = "2g"
    # Extra Spark settings, passed to the SparkSession builder as they are.
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class DataConfig:
    # A file, folder or glob of .txt/.md/.gz files; empty means the embedded Shakespeare.
    input_url: str | None = None
    # One document per file, or one per blank-line separated paragraph block.
    split_on_blank_lines: bool = False
    # Unicode normalisation of the text before tokenisation: "nfkc" or "none".
    normalization: str = "nfkc"
    window_size: int = 128
    overlap: int = 64
    val_fraction: float = 0.1
    # Row groups are sized so that up to this many ranks each get one per split.
    max_ranks: int = 8
    # Encoding partitions per split; 0: from the corpus size (32 MB of text each, at
    # least 4 per Spark core), capped by the number of documents.
    num_partitions: int = 0


@dataclass
class TokenizerConfig:
    vocab_size: int = 4000
    # Upper bound on the bytes of text sampled by Spark to train the BPE model.
    sample_bytes: int = 20_000_000
    character_coverage: float = 1.0
    seed: int = 1234
    # An existing tokenizer.model (trained by this package) to reuse instead of training.
    model_url: str | None = None


@dataclass
class Word2VecConfig:
    enabled: bool = True
    # 0 means model.n_embd: the vectors initialise the model's token embedding.
    vector_size: int = 0
    window: int = 5
    min_count: int = 1
    epochs: int = 5
    workers: int = 2
    # Upper bound on the training-split tokens sampled by Spark for Word2Vec.
    sample_tokens: int = 2_000_000
    seed: int = 1234


@dataclass
class EmbeddingConfig:
    word2vec: Word2VecConfig = field(default_factory=Word2VecConfig)


@dataclass
class ModelConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    bias: bool = False
    positional: str = "sinusoidal"  # or "learned"
    tie_weights: bool = True
    # Initialise the token embedding from the dataset's Word2Vec vectors.
    init_from_word2vec: bool = True


@dataclass
class TrainConfig:
    launcher: str = "spark"  # spark | horovodrun | local
    num_proc: int = 2
    # Torch threads per rank; 0 means spark.task.cpus under Spark, else cores / ranks.
    threads_per_rank: int = 0
    batch_size: int = 16  # windows per rank per step
    epochs: int = 1
    max_steps: int = 0  # > 0 stops after this many steps, whatever `epochs` says
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # Horovod's rule: multiply the learning rate by the number of ranks (or not).
    scale_lr_by_ranks: bool = False
    # hvd.DistributedOptimizer: fp16 gradient compression on the wire, gradient
    # accumulation over several micro-batches per optimizer step, and the reduction.
    fp16_allreduce: bool = False
    backward_passes_per_step: int = 1
    allreduce_op: str = "average"  # or "adasum" (needs a Horovod built with MPI)
    # Peak fp32 FLOP/s of one rank for model FLOPs utilisation; 0: measured at start.
    peak_flops_per_rank: float = 0.0
    log_interval: int = 10
    eval_interval: int = 0  # 0: evaluate at the end of each epoch only
    eval_max_batches: int = 50  # per rank; bounds evaluation time on big datasets
    checkpoint_interval: int = 0  # 0: checkpoint at the end only
    keep_last: int = 3
    # Continue from the latest complete checkpoint under output_url, if there is one.
    resume: bool = True
    seed: int = 1337
    start_timeout: int = 120  # seconds Horovod waits for all ranks to start


@dataclass
class GenerateConfig:
    prompt: str = "ROMEO:"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 50
    seed: int = 42


@dataclass
class RunConfig:
    output_url: str = "runs/local"
    log_level: str = "INFO"
    spark: SparkConfig = field(default_factory=SparkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


def _describe(exc: OmegaConfBaseException) -> str:
    """OmegaConf's message without its multi-line object dump."""
    message = str(exc).splitlines()[0].strip()
    key = getattr(exc, "full_key", None)
    if key and key not in message:
        message = f"{key}: {message}"
    return message


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then `section.key=value` overrides; validated."""
    try:
        merged = OmegaConf.structured(RunConfig)
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise UserError(f"config file {path} not found: pass --config with an existing YAML file (see configs/)")
            loaded = OmegaConf.load(path)
            if not isinstance(loaded, type(merged)) and loaded is not None:
                raise UserError(f"config file {path} must hold a mapping of sections, not a list")
            merged = OmegaConf.merge(merged, loaded or {})
        for item in overrides or []:
            if "=" not in item:
                raise UserError(f"override '{item}' is not of the form section.key=value")
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        config: RunConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise UserError(f"invalid configuration: {_describe(exc)}") from None
    except Exception as exc:  # YAML syntax errors come from PyYAML
        if exc.__class__.__module__.startswith("yaml"):
            first = str(exc).splitlines()[0]
            raise UserError(f"config file {path} is not valid YAML ({first}): fix the syntax") from None
        raise
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Check the relations between values; report every problem at once."""
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    d, t, m, tr, g = config.data, config.tokenizer, config.model, config.train, config.generate
    need(d.window_size >= 2, f"data.window_size ({d.window_size}) must be at least 2: a window holds inputs and next-token targets")
    need(d.overlap >= 0, f"data.overlap ({d.overlap}) must be 0 or more")
    need(
        d.window_size > d.overlap,
        f"data.window_size ({d.window_size}) must be larger than data.overlap ({d.overlap}): the stride would be {d.window_size - d.overlap}",
    )
    need(0.0 < d.val_fraction < 1.0, f"data.val_fraction ({d.val_fraction}) must be between 0 and 1 (exclusive)")
    need(d.max_ranks >= 1, f"data.max_ranks ({d.max_ranks}) must be at least 1")
    need(d.num_partitions >= 0, f"data.num_partitions ({d.num_partitions}) must be 0 (automatic) or more")
    need(d.normalization in ("nfkc", "none"), f"data.normalization ('{d.normalization}') must be 'nfkc' or 'none'")
    w2v = config.embedding.word2vec
    need(
        w2v.vector_size in (0, m.n_embd),
        f"embedding.word2vec.vector_size ({w2v.vector_size}) must be 0 or model.n_embd ({m.n_embd}): the vectors initialise the token embedding",
    )
    for name in ("window", "min_count", "epochs", "workers", "sample_tokens"):
        need(getattr(w2v, name) >= 1, f"embedding.word2vec.{name} ({getattr(w2v, name)}) must be at least 1")
    need(t.vocab_size >= 16, f"tokenizer.vocab_size ({t.vocab_size}) must be at least 16")
    need(t.sample_bytes >= 1024, f"tokenizer.sample_bytes ({t.sample_bytes}) must be at least 1024")
    need(0.9 <= t.character_coverage <= 1.0, f"tokenizer.character_coverage ({t.character_coverage}) must be in [0.9, 1]")
    need(m.n_layer >= 1 and m.n_head >= 1 and m.n_embd >= 1, "model.n_layer, model.n_head and model.n_embd must be positive")
    need(
        m.n_head >= 1 and m.n_embd % m.n_head == 0,
        f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})",
    )
    need(0.0 <= m.dropout < 1.0, f"model.dropout ({m.dropout}) must be in [0, 1)")
    need(m.positional in ("sinusoidal", "learned"), f"model.positional ('{m.positional}') must be 'sinusoidal' or 'learned'")
    need(tr.launcher in ("spark", "horovodrun", "local"), f"train.launcher ('{tr.launcher}') must be 'spark', 'horovodrun' or 'local'")
    need(tr.num_proc >= 1, f"train.num_proc ({tr.num_proc}) must be at least 1")
    need(tr.threads_per_rank >= 0, f"train.threads_per_rank ({tr.threads_per_rank}) must be 0 (automatic) or more")
    need(tr.batch_size >= 1, f"train.batch_size ({tr.batch_size}) must be at least 1")
    need(tr.backward_passes_per_step >= 1, f"train.backward_passes_per_step ({tr.backward_passes_per_step}) must be at least 1")
    need(tr.allreduce_op in ("average", "adasum"), f"train.allreduce_op ('{tr.allreduce_op}') must be 'average' or 'adasum'")
    need(tr.peak_flops_per_rank >= 0, f"train.peak_flops_per_rank ({tr.peak_flops_per_rank}) must be 0 (measure) or more")
    need(tr.epochs >= 1 or tr.max_steps > 0, "train.epochs must be at least 1 unless train.max_steps is set")
    need(tr.max_steps >= 0, f"train.max_steps ({tr.max_steps}) must be 0 (use epochs) or more")
    need(tr.learning_rate > 0, f"train.learning_rate ({tr.learning_rate}) must be positive")
    need(0 <= tr.min_lr <= tr.learning_rate, f"train.min_lr ({tr.min_lr}) must be between 0 and train.learning_rate")
    need(tr.warmup_steps >= 0, f"train.warmup_steps ({tr.warmup_steps}) must be 0 or more")
    need(tr.weight_decay >= 0, f"train.weight_decay ({tr.weight_decay}) must be 0 or more")
    need(tr.grad_clip >= 0, f"train.grad_clip ({tr.grad_clip}) must be 0 (off) or more")
    need(tr.log_interval >= 1, f"train.log_interval ({tr.log_interval}) must be at least 1")
    for name in ("eval_interval", "eval_max_batches", "checkpoint_interval"):
        need(getattr(tr, name) >= 0, f"train.{name} ({getattr(tr, name)}) must be 0 or more")
    need(tr.keep_last >= 1, f"train.keep_last ({tr.keep_last}) must be at least 1")
    need(tr.start_timeout >= 10, f"train.start_timeout ({tr.start_timeout}) must be at least 10 seconds")
    need(g.max_new_tokens >= 1, f"generate.max_new_tokens ({g.max_new_tokens}) must be at least 1")
    need(g.temperature >= 0, f"generate.temperature ({g.temperature}) must be 0 (greedy) or more")
    need(g.top_k >= 0, f"generate.top_k ({g.top_k}) must be 0 (off) or more")
    need(config.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), f"log_level ('{config.log_level}') must be DEBUG, INFO, WARNING or ERROR")
    need(bool(config.output_url), "output_url must be set: a folder or an s3:// prefix for every output of the run")
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def from_dict(values: dict) -> RunConfig:
    """Rebuild a RunConfig from `to_dict` output (e.g. a checkpoint's saved config)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), values))

"""Typed, sectioned configuration: defaults < YAML file < `section.key=value` overrides.

The dataclasses below are the schema (OmegaConf structured configs): an unknown key or
a value of the wrong type fails with the key's full name, and `validate` collects every
semantic problem and reports them at once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from horovod_llm.errors import UserError
from horovod_llm.inference.sampling import Sampling, default
from horovod_llm.storage import S3Settings

# train.precision and train.device (training/precision.py, training/device.py).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")

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
    # true: files are cut into units of consecutive paragraphs (at most unit_chars
    # characters each, blank lines kept inside them), which the train/validation split
    # then assigns; false: a document is a file; null: true only for a one-file corpus.
    split_on_blank_lines: bool | None = None
    # null: about 200 units in the corpus, so that a 10% validation share is ~20 of them
    # (a steady share), each between 2,000 and 64,000 characters.
    unit_chars: int | None = None
    # How documents are assigned to validation: "hash" (of the document id, stable as a
    # corpus grows) or "tail" (the last val_fraction of the corpus, in file and text order:
    # held out by position, nothing after it ever trains).
    val_split: str = "hash"
    # Unicode normalisation of the text before tokenisation: "nfkc" or "none".
    normalization: str = "nfkc"
    # Tokens of context per window, and tokens that consecutive windows share; null: the
    # recipe's (recipe.py).
    window_size: int | None = None
    overlap: int | None = None
    val_fraction: float = 0.1
    # Row groups are sized so that up to this many ranks each get one per split.
    max_ranks: int = 8
    # Encoding partitions per split; 0: from the corpus size (32 MB of text each, at
    # least 4 per Spark core), capped by the number of documents.
    num_partitions: int = 0


@dataclass
class TokenizerConfig:
    # "bpe" (sentencepiece byte-pair encoding) or "char" (one piece per character, for
    # comparisons with character-level models: vocab_size is then only a ceiling).
    model_type: str = "bpe"
    vocab_size: int | None = None  # null: the recipe's (recipe.py)
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
    # null: the recipe's, from the corpus's size and the budget (recipe.py)
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None
    bias: bool = False
    positional: str = "sinusoidal"  # or "learned"
    tie_weights: bool = True
    # Standard deviation of the normal initialisation of weights and embeddings (GPT-2's);
    # the Word2Vec vectors are rescaled to it.
    init_std: float = 0.02
    # Initialise the token embedding from the dataset's Word2Vec vectors.
    init_from_word2vec: bool = True


# train.bind_cores: the backend whose ranks are bound to cores of their own, or all or none.
BIND_CORES = ("horovod", "all", "none")


@dataclass
class TrainConfig:
    # spark (horovod.spark.run), horovodrun, torch_distributor (Spark's TorchDistributor:
    # torch.distributed, no Horovod needed) or local (one rank in this process).
    launcher: str = "spark"
    num_proc: int = 2
    # Torch threads per rank; 0 means spark.task.cpus under Spark, else cores / ranks.
    threads_per_rank: int = 0
    batch_size: int | None = None  # windows per rank per step; null: the recipe's
    # Whole passes over the training windows; null: 1, or as many as the budget allows.
    epochs: int | None = None
    max_steps: int = 0  # > 0 stops after this many steps, whatever `epochs` says
    # A wall-clock budget for the training loop, in minutes (0: none). Training stops when
    # it runs out (or at max_steps or epochs, if they come first), writing a final
    # checkpoint and the statistics; the learning rate decays with the share spent. A
    # resumed run counts the time its checkpoint had trained.
    max_minutes: float = 0.0
    # The schedule's peak and floor and the warm-up steps; null: the recipe's.
    learning_rate: float | None = None
    min_lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # Horovod's rule: multiply the learning rate by the number of ranks (or not).
    scale_lr_by_ranks: bool = False
    # hvd.DistributedOptimizer: fp16 gradient compression on the wire, gradient
    # accumulation over several micro-batches per optimizer step, and the reduction.
    # fp16 halves the bytes but a CPU sums fp16 in software: 2 ranks on one 2-core host
    # spent 22% of the loop in the allreduce against 10% in fp32 (Intel Xeon, paired runs
    # of the demo model, issue 28). It pays where the wire is the limit, between hosts.
    fp16_allreduce: bool = False
    backward_passes_per_step: int = 1
    # Where every rank runs on one host, average the fp32 gradients through a segment of
    # /dev/shm (training/host_reduction.py) instead of the backend's allreduce over
    # loopback TCP. Ranks on several hosts, fp16 on the wire, GPUs, Adasum and elastic
    # runs use the backend's allreduce whatever this says.
    shared_memory_allreduce: bool = True
    # How those ranks meet between writing their rows and reading the others': "pipes"
    # (named pipes, rank 0 the hub: training/pipe_barrier.py), or "backend" (Horovod's or
    # Gloo's barrier, at which Horovod's ranks waited longer in paired runs on 2 cores,
    # their tokens/s within the pairs' spread: bench/results.md).
    shared_memory_barrier: str = "pipes"
    allreduce_op: str = "average"  # or "adasum" (needs a Horovod built with MPI)
    # Milliseconds between the idle cycles of Horovod's background thread
    # (HOROVOD_CYCLE_TIME, which wins when set). With the stack's wake patch (scripts/
    # install-stack.sh) a collective never waits for the next cycle: an enqueue wakes the
    # thread, and cycles are at most 1 ms apart while a tensor waits. An idle cycle only
    # negotiates with the other ranks, waking a thread on cores that are busy computing:
    # Horovod's 1 ms default cost 2 ranks on 2 cores about 10% of their throughput, 2 ms
    # ran 7% slower than 10, and 10 ms left one rank waiting for the other 1.9-2.6 ms a
    # step on average against 1.1-1.4 at 100 (steps 2% shorter, 5 alternated pairs; all
    # issue 28, bench/results.md). A shutdown waits up to one idle cycle.
    horovod_cycle_time_ms: float = 100.0
    # Where a host's ranks times their threads use exactly the cores a rank may run on,
    # each rank's threads run on cores of their own (whole physical cores first), so that
    # the kernel never moves a rank between cores (training/affinity.py): "horovod" for
    # Horovod's ranks (bound ran faster than unbound in 9 of 9 paired runs on 2 cores),
    # "all" for TorchDistributor's too (bound ran slower in 6 of 9, a median 0.96 of
    # unbound: bench/results.md), or "none". Ranks that leave cores free or share them,
    # and elastic runs (whose ranks change), are never bound.
    bind_cores: str = "horovod"
    # The arithmetic of the forward and backward passes: fp32; bf16 or fp16 under autocast,
    # with fp32 weights, optimizer state and checkpoints (fp16 with a gradient scaler, for
    # GPUs without bf16); auto: bf16 where a short calibration at rank start finds it
    # measurably faster for this model on this machine, else fp32 (training/precision.py).
    precision: str = "auto"
    # cpu, cuda (a GPU per rank: the one Spark scheduled for its task, else its local
    # rank's), or auto: cuda where torch finds a GPU and the collectives can reduce on it.
    device: str = "auto"
    # torch.compile the model for training (minutes of compilation first; pays on GPUs
    # and large models, bench/results.md).
    compile: bool = False
    # Peak FLOP/s of one rank, in the precision trained in, for model FLOPs utilisation;
    # 0: measured at start.
    peak_flops_per_rank: float = 0.0
    log_interval: int = 10
    # Python's garbage collector runs every this many steps, on every rank at the same
    # step, instead of at each process's own moments, where the other ranks wait for it at
    # the allreduce (training/collection.py); 0: at its own moments. Off by default: on
    # 2 ranks of the demo it changed nothing beyond the runs' spread (bench/paired.py
    # --compare gc, issue 28); the more ranks, the likelier one is collecting at a step.
    gc_interval: int = 0
    eval_interval: int = 0  # 0: evaluate at the end of each epoch only
    eval_max_batches: int = 50  # per rank; bounds evaluation time on big datasets
    checkpoint_interval: int = 0  # 0: checkpoint at the end only
    keep_last: int = 3
    # Continue from the latest complete checkpoint under output_url, if there is one.
    resume: bool = True
    # Start a failed training job again (from the latest complete checkpoint) this many times.
    max_restarts: int = 0
    # Horovod elastic (launcher spark): keep training on the remaining ranks when one is
    # lost, and take it back when Spark restarts its task; between min_proc and num_proc.
    elastic: bool = False
    min_proc: int = 1
    elastic_commit_interval: int = 10  # steps between in-memory commits (what a reset rolls back to)
    elastic_timeout: int = 120  # seconds to wait for enough ranks after a change
    seed: int = 1337
    start_timeout: int = 120  # seconds Horovod waits for all ranks to start
    # Seconds without progress (no rank finished a step, an evaluation or a checkpoint,
    # or entered training after a reset) after which the driver fails the job, naming the
    # ranks last heard from (watchdog.py); 0: never. Before the ranks first report,
    # start_timeout more; in elastic mode it must exceed elastic_timeout.
    stall_timeout: int = 300
    # Network interfaces for Horovod's services and Gloo on a cluster (e.g. [eth0]): the
    # same name must exist on every host. Empty: Horovod picks the interfaces every host
    # can route to. Local mode always uses loopback.
    nics: list[str] = field(default_factory=list)


@dataclass
class GenerateConfig:
    """The pipeline's sample: a prompt and the sampling settings, whose defaults and
    rules are `sampling.Sampling`'s."""

    prompt: str = "ROMEO:"
    max_new_tokens: int = default("max_new_tokens")
    temperature: float = default("temperature")
    top_k: int = default("top_k")
    top_p: float = default("top_p")
    seed: int = default("seed")
    stop: list[str] = field(default_factory=list)

    def sampling(self) -> Sampling:
        """These settings as a Sampling (its fields, by name: tests/unit/test_config.py
        checks that this section repeats each of them with its default)."""
        return Sampling(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Sampling)} | {"stop": tuple(self.stop)})


@dataclass
class EmrConfig:
    """The AWS EMR cluster and the S3 prefix `horovod-llm emr` works under (see docs/emr.md)."""

    # The S3 prefix this project owns: artifacts (bootstrap, wheel, configs) go under
    # <s3_url>/artifacts, logs under <s3_url>/logs/ unless log_uri says otherwise.
    s3_url: str = ""
    log_uri: str = ""
    region: str = "us-east-1"
    release_label: str = "emr-7.5.0"  # 7.x: Spark 3.5, Java 17, Amazon Linux 2023 (bootstrap.sh needs AL2023)
    cluster_name: str = "horovod-llm"
    # x86_64 types only: horovod 0.28.1 does not build on aarch64 (Graviton).
    master_instance_type: str = "m5.xlarge"
    core_instance_type: str = "m5.2xlarge"
    core_instance_count: int = 2
    # ON_DEMAND or SPOT (capped at the on-demand price) for the core nodes; the primary
    # node is always on demand: a reclaimed primary would end the cluster.
    market: str = "ON_DEMAND"
    root_volume_gb: int = 32  # the venv (torch, horovod) lives on the root volume
    subnet_id: str = ""  # empty: the region's default VPC
    key_name: str = ""  # an EC2 key pair for `ssh hadoop@<primary node>`; empty: none
    service_role: str = "EMR_DefaultRole"
    instance_profile: str = "EMR_EC2_DefaultRole"
    idle_timeout_s: int = 3600  # the cluster terminates itself after this long idle; 0: never
    # Every node gets the same venv at this path: Horovod starts ranks with the driver's
    # interpreter path, and PYSPARK_PYTHON (spark-env classification) points here.
    venv: str = "/opt/horovod-llm/venv"
    # A horovod wheel built on EMR (AL2023, Python 3.11, this torch); empty: each node builds one.
    horovod_wheel_url: str = ""
    # PyPI's torch for Linux x86_64 is a CUDA build (GBs); this index has the CPU build.
    # GPU nodes (emr.gpu) take a CUDA build's index instead (configs/emr-gpu.yaml).
    torch_index_url: str = "https://download.pytorch.org/whl/cpu"
    # Core nodes with NVIDIA GPUs (g5, g6, p4d, p5...): YARN schedules and isolates GPUs,
    # Spark discovers them, the bootstrap installs a CUDA torch and (Horovod launcher)
    # builds Horovod with NCCL. docs/emr.md, "GPU instances".
    gpu: bool = False
    step_action_on_failure: str = "CANCEL_AND_WAIT"  # or CONTINUE, TERMINATE_CLUSTER
    # spark.driver.memoryOverhead of the cluster-mode steps: their driver is a YARN
    # container whose Python process (torch, Horovod's driver service, sentencepiece
    # training on up to tokenizer.sample_bytes of text) YARN counts as overhead.
    driver_memory_overhead: str = "2g"
    # `--conf` settings of the training step's spark-submit only (preprocessing keeps
    # EMR's dynamic allocation): fixed executors, spark.task.cpus per rank, no retries.
    train_conf: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class S3Config:
    # What each setting means, and its default: storage.S3Settings, the value a run's
    # processes get (storage.storage_settings).
    endpoint_url: str | None = S3Settings.endpoint_url
    region: str | None = S3Settings.region
    max_attempts: int = S3Settings.max_attempts
    read_timeout: float = S3Settings.read_timeout


@dataclass
class StorageConfig:
    s3: S3Config = field(default_factory=S3Config)


@dataclass
class TrackingConfig:
    # MLflow (pip install horovod-llm[mlflow]): off unless a URI is set here or in
    # MLFLOW_TRACKING_URI. Rank 0 logs; a server that fails warns once and training goes on.
    mlflow_uri: str | None = None
    experiment: str = "horovod-llm"
    run_name: str | None = None  # null: the output_url's last part


@dataclass
class RunConfig:
    output_url: str = "runs/local"
    log_level: str = "INFO"
    # Progress bars on stderr (progress.py): null, only when stderr is a terminal; true,
    # always; false, never (plain log lines). A boolean, not on/off words: YAML reads
    # `on` and `off` as true and false.
    progress: bool | None = None
    spark: SparkConfig = field(default_factory=SparkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    emr: EmrConfig = field(default_factory=EmrConfig)


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
    flatten_settings(config)
    if config.tracking.mlflow_uri is None and os.environ.get("MLFLOW_TRACKING_URI"):
        config.tracking.mlflow_uri = os.environ["MLFLOW_TRACKING_URI"]  # MLflow's own variable turns tracking on too
    validate(config)
    return config


# Mappings whose keys are dotted names (Spark settings, tags). An override such as
# spark.conf.spark.sql.shuffle.partitions=7 reaches them as nested mappings.
_DOTTED_KEY_MAPPINGS = (("spark", "conf"), ("emr", "train_conf"), ("emr", "tags"))


def flatten(mapping: dict, prefix: str = "") -> dict[str, str]:
    """{"spark": {"sql": {"x": 7}}} -> {"spark.sql.x": "7"}: the keys Spark and EMR expect."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = str(value)
    return flat


def flatten_settings(config: RunConfig) -> None:
    """Give the dotted-key mappings their flat form, in place, so that the config has
    one shape whichever way a setting was written (and dumps as YAML)."""
    for section, name in _DOTTED_KEY_MAPPINGS:
        owner = getattr(config, section)
        setattr(owner, name, flatten(getattr(owner, name)))


def validate(config: RunConfig) -> None:
    """Check the relations between values; report every problem at once."""
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    d, t, m, tr, g = config.data, config.tokenizer, config.model, config.train, config.generate

    def known(*values) -> bool:
        """Relations between settings are checked once all of them are set (unset ones are
        the recipe's: recipe.resolve fills them in, and validates again)."""
        return all(v is not None for v in values)

    if known(d.window_size):
        need(d.window_size >= 2, f"data.window_size ({d.window_size}) must be at least 2: a window holds inputs and next-token targets")
    if known(d.overlap):
        need(d.overlap >= 0, f"data.overlap ({d.overlap}) must be 0 or more")
    if known(d.window_size, d.overlap):
        need(
            d.window_size > d.overlap,
            f"data.window_size ({d.window_size}) must be larger than data.overlap ({d.overlap}): the stride would be {d.window_size - d.overlap}",
        )
    need(0.0 < d.val_fraction < 1.0, f"data.val_fraction ({d.val_fraction}) must be between 0 and 1 (exclusive)")
    need(d.unit_chars is None or d.unit_chars >= 256, f"data.unit_chars ({d.unit_chars}) must be at least 256, or null")
    need(d.val_split in ("hash", "tail"), f"data.val_split ('{d.val_split}') must be 'hash' or 'tail'")
    need(d.max_ranks >= 1, f"data.max_ranks ({d.max_ranks}) must be at least 1")
    need(d.num_partitions >= 0, f"data.num_partitions ({d.num_partitions}) must be 0 (automatic) or more")
    need(d.normalization in ("nfkc", "none"), f"data.normalization ('{d.normalization}') must be 'nfkc' or 'none'")
    w2v = config.embedding.word2vec
    if known(m.n_embd):
        need(
            w2v.vector_size in (0, m.n_embd),
            f"embedding.word2vec.vector_size ({w2v.vector_size}) must be 0 or model.n_embd ({m.n_embd}): the vectors initialise the token embedding",
        )
    for name in ("window", "min_count", "epochs", "workers", "sample_tokens"):
        need(getattr(w2v, name) >= 1, f"embedding.word2vec.{name} ({getattr(w2v, name)}) must be at least 1")
    if known(t.vocab_size):
        need(t.vocab_size >= 16, f"tokenizer.vocab_size ({t.vocab_size}) must be at least 16")
    need(t.model_type in ("bpe", "char"), f"tokenizer.model_type ('{t.model_type}') must be 'bpe' or 'char'")
    need(t.sample_bytes >= 1024, f"tokenizer.sample_bytes ({t.sample_bytes}) must be at least 1024")
    need(0.9 <= t.character_coverage <= 1.0, f"tokenizer.character_coverage ({t.character_coverage}) must be in [0.9, 1]")
    for name in ("n_layer", "n_head", "n_embd"):
        if known(getattr(m, name)):
            need(getattr(m, name) >= 1, f"model.{name} ({getattr(m, name)}) must be positive")
    if known(m.n_embd, m.n_head) and m.n_head >= 1:
        need(m.n_embd % m.n_head == 0, f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    if known(m.dropout):
        need(0.0 <= m.dropout < 1.0, f"model.dropout ({m.dropout}) must be in [0, 1)")
    need(0.0 < m.init_std < 1.0, f"model.init_std ({m.init_std}) must be in (0, 1)")
    need(m.positional in ("sinusoidal", "learned"), f"model.positional ('{m.positional}') must be 'sinusoidal' or 'learned'")
    if known(tr.batch_size):
        need(tr.batch_size >= 1, f"train.batch_size ({tr.batch_size}) must be at least 1")
    if known(tr.learning_rate):
        need(tr.learning_rate > 0, f"train.learning_rate ({tr.learning_rate}) must be positive")
    if known(tr.min_lr, tr.learning_rate):
        need(0 <= tr.min_lr <= tr.learning_rate, f"train.min_lr ({tr.min_lr}) must be between 0 and train.learning_rate")
    if known(tr.warmup_steps):
        need(tr.warmup_steps >= 0, f"train.warmup_steps ({tr.warmup_steps}) must be 0 or more")
    # The launcher registry and the EMR rules import this schema: read when validating.
    from horovod_llm import launchers
    from horovod_llm.emr.rules import emr_problems

    need(tr.launcher in launchers.LAUNCHERS, f"train.launcher ('{tr.launcher}') must be {launchers.names()}")
    need(tr.num_proc >= 1, f"train.num_proc ({tr.num_proc}) must be at least 1")
    need(tr.threads_per_rank >= 0, f"train.threads_per_rank ({tr.threads_per_rank}) must be 0 (automatic) or more")
    need(tr.backward_passes_per_step >= 1, f"train.backward_passes_per_step ({tr.backward_passes_per_step}) must be at least 1")
    need(tr.shared_memory_barrier in ("pipes", "backend"), f"train.shared_memory_barrier ('{tr.shared_memory_barrier}') must be 'pipes' or 'backend'")
    need(tr.allreduce_op in ("average", "adasum"), f"train.allreduce_op ('{tr.allreduce_op}') must be 'average' or 'adasum'")
    need(tr.bind_cores in BIND_CORES, f"train.bind_cores ('{tr.bind_cores}') must be one of {', '.join(BIND_CORES)}")
    need(tr.horovod_cycle_time_ms > 0, f"train.horovod_cycle_time_ms ({tr.horovod_cycle_time_ms}) must be positive")
    need(tr.precision in PRECISIONS, f"train.precision ('{tr.precision}') must be {', '.join(PRECISIONS)}")
    need(tr.device in DEVICES, f"train.device ('{tr.device}') must be {', '.join(DEVICES)}")
    need(tr.peak_flops_per_rank >= 0, f"train.peak_flops_per_rank ({tr.peak_flops_per_rank}) must be 0 (measure) or more")
    need(tr.epochs is None or tr.epochs >= 1, f"train.epochs ({tr.epochs}) must be at least 1, or null")
    need(tr.max_minutes >= 0, f"train.max_minutes ({tr.max_minutes}) must be 0 (no budget) or more")
    need(tr.max_steps >= 0, f"train.max_steps ({tr.max_steps}) must be 0 (use epochs) or more")
    need(tr.weight_decay >= 0, f"train.weight_decay ({tr.weight_decay}) must be 0 or more")
    need(tr.grad_clip >= 0, f"train.grad_clip ({tr.grad_clip}) must be 0 (off) or more")
    need(tr.log_interval >= 1, f"train.log_interval ({tr.log_interval}) must be at least 1")
    for name in ("gc_interval", "eval_interval", "eval_max_batches", "checkpoint_interval"):
        need(getattr(tr, name) >= 0, f"train.{name} ({getattr(tr, name)}) must be 0 or more")
    need(1 <= tr.min_proc <= tr.num_proc, f"train.min_proc ({tr.min_proc}) must be between 1 and train.num_proc ({tr.num_proc})")
    need(tr.elastic_commit_interval >= 1, f"train.elastic_commit_interval ({tr.elastic_commit_interval}) must be at least 1")
    elastic = launchers.elastic()
    need(
        not tr.elastic or tr.launcher in elastic,
        f"train.elastic=true needs train.launcher={' or '.join(elastic)} (Horovod elastic; '{tr.launcher}' has no elastic mode): "
        f"set train.launcher={elastic[0]}, or train.elastic=false and train.max_restarts to resume from checkpoints",
    )
    need(
        all(nic and nic.strip() == nic and "," not in nic for nic in tr.nics),
        f"train.nics ({list(tr.nics)}) must list interface names present on every host, e.g. [eth0]",
    )
    need(tr.max_restarts >= 0, f"train.max_restarts ({tr.max_restarts}) must be 0 or more")
    need(tr.keep_last >= 1, f"train.keep_last ({tr.keep_last}) must be at least 1")
    need(tr.start_timeout >= 10, f"train.start_timeout ({tr.start_timeout}) must be at least 10 seconds")
    need(tr.stall_timeout >= 0, f"train.stall_timeout ({tr.stall_timeout}) must be 0 (no watchdog) or more")
    need(
        not tr.elastic or tr.stall_timeout == 0 or tr.stall_timeout > tr.elastic_timeout,
        f"train.stall_timeout ({tr.stall_timeout}) must be more than train.elastic_timeout ({tr.elastic_timeout}), or 0: "
        "an elastic job waiting for ranks after a change is not stalled",
    )
    problems.extend(f"generate.{problem}" for problem in g.sampling().problems())
    need(config.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), f"log_level ('{config.log_level}') must be DEBUG, INFO, WARNING or ERROR")
    need(config.storage.s3.max_attempts >= 1, f"storage.s3.max_attempts ({config.storage.s3.max_attempts}) must be at least 1")
    need(config.storage.s3.read_timeout > 0, f"storage.s3.read_timeout ({config.storage.s3.read_timeout}) must be positive (seconds)")
    need(bool(config.output_url), "output_url must be set: a folder or an s3:// prefix for every output of the run")
    problems.extend(emr_problems(config))
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def from_dict(values: dict) -> RunConfig:
    """Rebuild a RunConfig from `to_dict` output (e.g. a checkpoint's saved config)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), values))

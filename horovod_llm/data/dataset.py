"""Reading the windows dataset with Petastorm (its manifest: manifest.py).

Rank and world size are arguments, so one process can read any rank's shard.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

# CVE-2023-47248: pyarrow < 14.0.1 unpickles (runs code from) the metadata of an
# `arrow.py_extension_type` column in any Arrow or Parquet file it reads. petastorm pins
# pyarrow 10, so upstream's mitigation is imported before any Parquet read: every reader
# of datasets imports this module.
import pyarrow_hotfix  # noqa: F401

from horovod_llm import layout, storage
from horovod_llm.errors import UserError

log = logging.getLogger(__name__)

_UNSAFE_TYPE_ERROR = "Disallowed deserialization of 'arrow.py_extension_type'"


class _PickledTypeProbe(pa.PyExtensionType):
    """An extension type that pyarrow 10 stores as a pickle: what the hotfix refuses."""

    def __init__(self):
        super().__init__(pa.int8())

    def __reduce__(self):
        return _PickledTypeProbe, ()


def unsafe_arrow_types_refused() -> bool:
    """Whether reading a pickled Arrow extension type fails here, as the hotfix makes it."""
    sink = pa.BufferOutputStream()
    table = pa.table({"probe": pa.ExtensionArray.from_storage(_PickledTypeProbe(), pa.array([1], pa.int8()))})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    try:
        pa.ipc.open_stream(sink.getvalue()).read_all()
    except RuntimeError as exc:
        return _UNSAFE_TYPE_ERROR in str(exc)
    return False


@contextmanager
def unsafe_files_refused(url: str) -> Iterator[None]:
    """The hotfix's refusal as a one-line UserError naming the dataset."""
    try:
        yield
    except RuntimeError as exc:
        if _UNSAFE_TYPE_ERROR not in str(exc):
            raise
        raise UserError(
            f"{url} holds a Parquet file with a pickled Arrow extension type, which would run code when read (CVE-2023-47248): "
            "refusing it; rebuild the dataset with 'horovod-llm preprocess'"
        ) from None


def _install_end_of_data_fix() -> None:
    """Make petastorm's thread pool decide "no more data" without losing a row group.

    petastorm 0.13.1's `ThreadPool.get_results` ends a pass when "every ventilated item
    was processed" and then "the ventilator has finished". The two are read one after
    the other while the ventilator thread hands out row groups: if it hands out the last
    one and finishes between the two reads, the pass ends one row group early, silently.
    With `num_epochs=1` (evaluation) that lost a row group in about one read in five of
    a rank's shard here (tests/integration/test_preprocess.py reads it repeatedly);
    training reads with `num_epochs=None`, whose ventilator never finishes.

    Reading "finished" first closes the gap: once the ventilator has finished, the counts
    are final when they are compared. make_batch_reader takes no pool object, only a pool
    type, so the fix replaces the class it instantiates; the subclass changes nothing else.
    """
    from petastorm import reader as petastorm_reader
    from petastorm.workers_pool.thread_pool import ThreadPool

    if getattr(petastorm_reader.ThreadPool, "ends_after_ventilation", False):
        return

    class EndSafeThreadPool(ThreadPool):
        ends_after_ventilation = True

        def all_workers_done(self) -> bool:
            finished = self._ventilator is None or self._ventilator.completed()
            return finished and super().all_workers_done()

    petastorm_reader.ThreadPool = EndSafeThreadPool


# How long petastorm's reader threads block on a queue before they look at the stop flag
# again (its default: 1 ms). See _quiet_reader_threads.
READER_POLL_S = 0.05


def _quiet_reader_threads() -> None:
    """Let petastorm's reader thread sleep while the batches it read wait to be taken.

    The loader reads about 10,000 times faster than a rank trains, so its results queue
    is nearly always full; petastorm 0.13.1's worker then retries its `put` every
    `IO_TIMEOUT_INTERVAL_S` (1 ms) to look at the stop flag in between. A thousand wakeups
    a second took 2.1-2.3% of a core per rank here (/proc task times of 2 ranks of the
    demo under `train.launcher=spark`, 30 s; Intel Xeon), taken from the other rank's
    compute when 2 ranks share 2 cores. The wait still ends as soon as a slot frees (a
    Queue's put is woken by the get), so only `stop()` sees the longer interval: a
    reader closes up to READER_POLL_S later. The module reads the constant at each call.
    """
    from petastorm.workers_pool import thread_pool

    thread_pool.IO_TIMEOUT_INTERVAL_S = max(thread_pool.IO_TIMEOUT_INTERVAL_S, READER_POLL_S)


def _quiet_ventilator(reader) -> None:
    """Let petastorm's ventilator thread sleep as long as the reader thread does.

    While the row groups it handed out wait to be read (nearly always: the loader
    outruns a rank), petastorm 0.13.1's ventilator looks again every 10 ms: 99 wakeups a
    second in each rank, each one taking the GIL from the training thread, on its core
    once the rank is bound to one (affinity.py). The ventilator reads the interval at each
    look, and the next row group is handed out up to READER_POLL_S later, while the
    reader still has the current one to read (a row group lasts seconds of steps). Only
    for training's endless readers: one pass over a split (evaluation) reads row groups
    as fast as it can, and there a wait for the next one would cost. The cost in
    training: the reader can run at most 3 row groups ahead per look, so it delivers at
    most about 60 row groups a second (bench/loader_throughput.py: 67,000 windows/s of
    1,024-window row groups on the AMD EPYC, 400-500 times what a rank of the demo
    trains on)."""
    reader.ventilator._ventilation_interval = max(reader.ventilator._ventilation_interval, READER_POLL_S)


def check_only_our_files(output_url: str, split: str) -> None:
    """Refuse a split folder holding any file preprocessing did not write (the manifest
    lists its parts; hidden files are never read). Petastorm reads a folder's
    `_common_metadata` and `_metadata` and unpickles a schema from them: one placed under
    a shared output_url would run code on every rank and in `evaluate`. This package
    never writes either."""
    from horovod_llm.data.manifest import read_manifest

    expected = set(read_manifest(output_url).splits[split].files)
    split_url = layout.split_url(output_url, split)
    for name in storage.list_dir(split_url):
        # Hidden files (an interrupted atomic write's .tmp-*) are never read as data.
        if name not in expected and not name.startswith("."):
            raise UserError(
                f"{storage.join(split_url, name)} was not written by horovod-llm (the dataset's manifest does not list it) and would be read as "
                f"part of the dataset{', running the code a pickled schema holds' if name.startswith('_') else ''}: "
                "remove it, or rebuild the dataset with 'horovod-llm preprocess --force'"
            )


def _never_unpickle_schemas() -> None:
    """Make petastorm's schema loader refuse pickles, whatever a folder holds. Its
    `restricted_loads` admits all of `builtins` (eval among them); this package's
    datasets carry no pickled schema (make_batch_reader infers it from Parquet), so the
    loader has nothing legitimate to unpickle. Belt and braces beside
    `check_only_our_files`."""
    from petastorm.etl import dataset_metadata

    if getattr(dataset_metadata.depickle_legacy_package_name_compatible, "refuses", False):
        return

    def refuse(_pickled) -> None:
        raise dataset_metadata.PetastormMetadataError("horovod-llm reads no pickled schema")

    refuse.refuses = True
    dataset_metadata.depickle_legacy_package_name_compatible = refuse


def _petastorm_url(url: str) -> str:
    url = storage.normalize(url)
    return url if storage.is_remote(url) else "file://" + url


@contextmanager
def window_batches(
    output_url: str,
    split: str,
    rank: int,
    world_size: int,
    batch_size: int,
    *,
    num_epochs: int | None,
    seed: int,
    shuffle: bool,
    skip_batches: int = 0,
) -> Iterator[Iterator[np.ndarray]]:
    """Batches of windows, int64 arrays of shape (B, window_size + 1), from this rank's shard.

    `num_epochs=None` repeats the shard forever (training counts its own steps);
    `num_epochs=1` reads it once (evaluation). A rank whose shard holds no row group
    gets an empty iterator.

    The order is a function of (seed, rank, world_size) alone, so that a resumed run
    replays it exactly after skipping `skip_batches`: row groups are shuffled by the
    reader's seeded ventilator each epoch, one reader thread keeps them in that order,
    and rows were already shuffled within each part at preprocessing. Petastorm's
    shuffling queue is left off because it draws from torch's global RNG, which dropout
    shares.
    """
    from petastorm import make_batch_reader
    from petastorm.errors import NoDataAvailableError
    from petastorm.pytorch import BatchedDataLoader

    _install_end_of_data_fix()
    _quiet_reader_threads()
    _never_unpickle_schemas()
    check_only_our_files(output_url, split)
    split_url = layout.split_url(output_url, split)
    try:
        with unsafe_files_refused(split_url):
            reader = make_batch_reader(
                _petastorm_url(split_url),
                storage_options=storage.options_for(split_url) or None,
                schema_fields=["ids"],
                cur_shard=rank,
                shard_count=world_size,
                num_epochs=num_epochs,
                shuffle_row_groups=shuffle,
                seed=seed,
                reader_pool_type="thread",
                workers_count=1,
            )
    except NoDataAvailableError:
        log.warning("rank %d: no %s row group in its shard (%d shards)", rank, split, world_size)
        yield iter(())
        return
    if num_epochs is None:
        _quiet_ventilator(reader)
    try:
        batches = (batch["ids"].numpy().astype(np.int64, copy=False) for batch in BatchedDataLoader(reader, batch_size=batch_size))
        for _ in range(skip_batches):
            next(batches)
        yield batches
    finally:
        reader.stop()
        reader.join()

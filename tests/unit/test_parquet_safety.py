"""CVE-2023-47248: a Parquet file whose column type is a pickle must never run its code
when a dataset is read (pyarrow-hotfix, imported by horovod_llm.data.dataset)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from horovod_llm.data import dataset
from horovod_llm.errors import UserError

# Written by a plain interpreter, without the hotfix: unpickling this column type runs
# `touch MARKER`.
MALICIOUS_PART = textwrap.dedent(
    """
    import os, sys
    import pyarrow as pa, pyarrow.parquet as pq

    class Payload(pa.PyExtensionType):
        def __init__(self):
            super().__init__(pa.list_(pa.int32()))

        def __reduce__(self):
            return os.system, ("touch " + sys.argv[2],)

    ids = pa.array([[1, 2, 3]] * 4, pa.list_(pa.int32()))
    pq.write_table(pa.table({"ids": pa.ExtensionArray.from_storage(Payload(), ids)}), sys.argv[1])
    """
)


def test_the_hotfix_is_active():
    assert dataset.unsafe_arrow_types_refused()


def test_reading_a_malicious_dataset_runs_no_code(fresh_run, tmp_path):
    # a part the manifest lists, replaced by one whose column type is the pickle
    from horovod_llm.data.manifest import read_manifest

    name = read_manifest(fresh_run).splits["val"].files[0]
    part = Path(fresh_run) / "dataset" / "val" / name
    marker = tmp_path / "code-ran"
    subprocess.run([sys.executable, "-c", MALICIOUS_PART, str(part), str(marker)], check=True, timeout=120)
    assert part.exists() and not marker.exists()
    refused = pytest.raises(UserError, match=r"pickled Arrow extension type.*CVE-2023-47248")
    with refused, dataset.window_batches(fresh_run, "val", 0, 1, 2, num_epochs=1, seed=0, shuffle=False) as batches:
        list(batches)
    assert not marker.exists()

"""Writers killed mid-write (SIGKILL, real processes): nothing half-written counts."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from horovod_llm import checkpoint, layout, storage
from tests.conftest import TINY_CONFIG

# A process that writes a complete checkpoint at step 1, then dies by SIGKILL while
# writing the one at step 2, after its weights and before its marker.
DYING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from horovod_llm import checkpoint, storage
    from horovod_llm.config import load_config
    from horovod_llm.model import GPT, GPTConfig

    out = sys.argv[1]
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8))
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint.save_checkpoint(out, 1, model, optimizer, load_config(None), b"tok", {})
    write_text = storage.write_text

    def die_before_marker(url, text):
        if url.endswith(checkpoint.MARKER):
            os.kill(os.getpid(), signal.SIGKILL)
        write_text(url, text)

    storage.write_text = die_before_marker
    checkpoint.save_checkpoint(out, 2, model, optimizer, load_config(None), b"tok", {})
    """
)


def test_checkpoint_writer_killed_mid_write(tmp_path):
    out = str(tmp_path)
    died = subprocess.run([sys.executable, "-c", DYING_WRITER, out], capture_output=True, text=True, timeout=120)
    assert died.returncode == -signal.SIGKILL, died.stderr
    partial = Path(layout.checkpoints_url(out)) / "step-00000002"
    assert (partial / "model.pt").exists() and not (partial / checkpoint.MARKER).exists()
    # the latest complete checkpoint still loads; the partial one is ignored ...
    assert [s for s, _ in checkpoint.complete_checkpoints(out)] == [1]
    assert checkpoint.load_checkpoint(out).step == 1
    # ... then cleaned up by the next training job (which calls this before resuming)
    assert checkpoint.remove_incomplete(out) == ["step-00000002"]
    assert storage.list_dir(layout.checkpoints_url(out)) == ["step-00000001"]


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "horovod_llm.cli", *args], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.spark
def test_preprocessing_killed_mid_write_is_redone_and_never_trained_on(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    args = ["--config", str(TINY_CONFIG), f"output_url={out}", f"data.input_url={tiny_corpus}"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    job = subprocess.Popen([sys.executable, "-m", "horovod_llm.cli", "preprocess", *args], env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    parts = out / "dataset" / "train"
    deadline = time.monotonic() + 300
    while not (parts.exists() and any(parts.glob("part-*.parquet"))):
        assert job.poll() is None and time.monotonic() < deadline, "preprocess ended before writing a part"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the driver, its JVM and the Python workers
    job.wait(timeout=60)
    assert not (out / "dataset" / "manifest.json").exists()

    refused = cli("train", *args, "train.launcher=local", "train.num_proc=1", env=env)
    assert refused.returncode == 2 and "no complete dataset" in refused.stderr.strip().splitlines()[-1]
    assert not (out / "checkpoints").exists()

    redone = cli("preprocess", *args, env=env)
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert "skipping" not in redone.stderr
    assert (out / "dataset" / "manifest.json").exists()

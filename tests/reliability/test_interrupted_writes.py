"""Writers killed mid-write (SIGKILL, real processes): nothing half-written counts."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from horovod_llm import checkpoint, layout
from horovod_llm.launchers.launch import launch_training
from tests.conftest import TINY_CONFIG
from tests.e2e.test_train import with_output

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
    # the latest complete checkpoint still loads; the partial one is ignored
    assert [s for s, _ in checkpoint.complete_checkpoints(out)] == [1]
    assert checkpoint.load_checkpoint(out).step == 1


@pytest.mark.horovod
def test_the_next_training_job_removes_a_partial_checkpoint_and_resumes_from_the_last_complete_one(fresh_run, tiny_dataset, capfd):
    config, _ = tiny_dataset
    run = with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=3, checkpoint_interval=3)
    launch_training(run)
    # A writer killed at step 9, after its weights and before its marker (as above). Step 9
    # lies beyond the run's last step, so only the job's start-up clean-up can remove it
    # (pruning keeps later folders).
    root = Path(layout.checkpoints_url(fresh_run))
    shutil.copytree(root / "step-00000003", root / "step-00000009")
    (root / "step-00000009" / checkpoint.MARKER).unlink()
    capfd.readouterr()
    summary = launch_training(with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=6, checkpoint_interval=3))["summary"]
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 6
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003", "step-00000006"]
    assert "removed incomplete checkpoint folder(s) left by an interrupted writer: step-00000009" in capfd.readouterr().err


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "horovod_llm.cli", *args], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.spark
def test_preprocessing_killed_mid_write_is_redone_and_never_trained_on(fresh_run, tiny_corpus):
    # Start from a complete dataset, so that the old manifest is there to be invalidated
    # first: a rebuild killed while it writes must leave no manifest (old or new) beside
    # its new parts.
    out = Path(fresh_run)
    manifest = out / "dataset" / "manifest.json"
    assert manifest.exists()
    old_parts = {p: p.stat().st_mtime_ns for p in (out / "dataset").rglob("part-*.parquet")}
    args = ["--config", str(TINY_CONFIG), f"output_url={out}", f"data.input_url={tiny_corpus}"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    job = subprocess.Popen(
        [sys.executable, "-m", "horovod_llm.cli", "preprocess", "--force", *args], env=env, start_new_session=True, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300

    def new_parts() -> list[Path]:
        found = []
        try:
            for part in (out / "dataset").rglob("part-*.parquet"):
                try:
                    if old_parts.get(part) != part.stat().st_mtime_ns:
                        found.append(part)
                except FileNotFoundError:  # an old part, being removed
                    continue
        except FileNotFoundError:  # a split's folder removed mid-walk by the rebuild: look again
            return []
        return found

    while not new_parts():
        # "the old manifest is deleted before anything else": never beside a new part
        assert job.poll() is None and time.monotonic() < deadline, "preprocess ended before writing a part"
        time.sleep(0.02)
    assert not manifest.exists()
    os.killpg(job.pid, signal.SIGKILL)  # the driver, its JVM and the Python workers
    job.wait(timeout=60)
    assert not manifest.exists()

    refused = cli("train", *args, "train.launcher=local", "train.num_proc=1", env=env)
    assert refused.returncode == 2 and "no complete dataset" in refused.stderr.strip().splitlines()[-1]
    assert not (out / "checkpoints").exists()

    redone = cli("preprocess", *args, env=env)
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert "skipping" not in redone.stderr
    assert manifest.exists()

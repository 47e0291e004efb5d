import dataclasses
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from horovod_llm import checkpoint, storage
from horovod_llm.config import load_config
from horovod_llm.errors import UserError
from horovod_llm.model import GPT, GPTConfig


def small_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8))


def save(out, step, model=None):
    model = model or small_model()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    return checkpoint.save_checkpoint(out, step, model, optimizer, load_config(None), b"tokenizer-bytes", {"metrics": {"val_loss": 1.0}})


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_round_trip(tmp_path, scheme):
    out = str(tmp_path) if scheme == "local" else f"memory://ckpt-{os.getpid()}"
    model = small_model()
    url = save(out, 7, model)
    assert url.endswith("checkpoints/step-00000007")
    loaded = checkpoint.load_checkpoint(out)  # a run's output_url resolves to its latest
    assert loaded.step == 7 and loaded.tokenizer_bytes == b"tokenizer-bytes"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    state = checkpoint.load_training_state(url, dataclasses.asdict(model.config))
    assert state.meta["step"] == 7 and state.optimizer["state"] and state.rng_states is None


def test_folders_without_marker_are_ignored_and_pruned(tmp_path):
    out = str(tmp_path)
    save(out, 1)
    save(out, 2)
    partial = save(out, 3)
    os.remove(os.path.join(partial, checkpoint.MARKER))  # a writer that died mid-way
    assert [s for s, _ in checkpoint.complete_checkpoints(out)] == [1, 2]
    assert checkpoint.load_checkpoint(out).step == 2
    with pytest.raises(UserError, match="incomplete"):
        checkpoint.load_checkpoint(partial)
    save(out, 4)
    checkpoint.prune_checkpoints(out, keep_last=2)
    assert storage.list_dir(os.path.join(out, "checkpoints")) == ["step-00000002", "step-00000004"]


def test_other_model_settings_are_refused(tmp_path):
    url = save(str(tmp_path), 1)
    other = dataclasses.asdict(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(UserError, match="n_embd 8 vs 16"):
        checkpoint.load_training_state(url, other)


def test_resume_false_beside_old_checkpoints_is_refused(tmp_path):
    save(str(tmp_path), 5)
    with pytest.raises(UserError, match="train.resume=false"):
        checkpoint.checkpoint_to_resume(str(tmp_path), resume=False)
    assert checkpoint.checkpoint_to_resume(str(tmp_path), resume=True)[0] == 5


def written_before_safetensors(url: str) -> str:
    """The checkpoint at url as versions before safetensors wrote it: the same files, less
    model.safetensors (their model.pt was torch.save(model.state_dict()), as it is now)."""
    os.remove(os.path.join(url, checkpoint.WEIGHTS))
    return url


@pytest.mark.parametrize("weights", [checkpoint.WEIGHTS, checkpoint.PICKLED_WEIGHTS])
def test_truncated_weights_file_is_a_clear_error(tmp_path, weights):
    url = save(str(tmp_path), 1)
    if weights == checkpoint.PICKLED_WEIGHTS:
        written_before_safetensors(url)
    path = Path(url) / weights
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=f"{weights} is corrupt"):
        checkpoint.load_checkpoint(url)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/horovod-llm-pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    url = written_before_safetensors(save(str(tmp_path), 1))  # else model.pt is never read
    with open(os.path.join(url, "model.pt"), "wb") as handle:
        torch.save({"x": RunsCode()}, handle, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    if os.path.exists("/tmp/horovod-llm-pwned"):
        os.remove("/tmp/horovod-llm-pwned")
    with pytest.raises(UserError, match="corrupt or not a weights file"):
        checkpoint.load_checkpoint(url)
    assert not os.path.exists("/tmp/horovod-llm-pwned")


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_model_zip_round_trip(tmp_path, scheme):
    out = str(tmp_path) if scheme == "local" else f"memory://zip-{os.getpid()}"
    model = small_model()
    url = save(out, 3, model)
    zip_url = storage.join(out, checkpoint.MODEL_ZIP)
    assert checkpoint.export_model_zip(out, zip_url) == url  # a run's output_url: its latest checkpoint
    with zipfile.ZipFile(storage.bytes_io(zip_url)) as archive:
        assert sorted(archive.namelist()) == sorted(checkpoint.ZIP_MEMBERS)
    loaded = checkpoint.load_checkpoint(zip_url)
    assert loaded.url == zip_url and loaded.step == 3 and loaded.tokenizer_bytes == b"tokenizer-bytes"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_an_output_url_with_only_a_model_zip_loads_it(tmp_path):
    checkpoint.export_model_zip(save(str(tmp_path / "run"), 2), str(tmp_path / "shipped" / "model.zip"))
    loaded = checkpoint.load_checkpoint(str(tmp_path / "shipped"))
    assert loaded.url.endswith("shipped/model.zip") and loaded.step == 2


def test_a_bad_model_zip_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no model archive"):
        checkpoint.load_checkpoint(str(tmp_path / "missing.zip"))
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match="not a readable zip"):
        checkpoint.load_checkpoint(str(tmp_path / "junk.zip"))
    with zipfile.ZipFile(tmp_path / "partial.zip", "w") as archive:
        archive.writestr("meta.json", "{}")
    with pytest.raises(UserError, match=r"lacks model.safetensors \(or model.pt\), tokenizer.model"):
        checkpoint.load_checkpoint(str(tmp_path / "partial.zip"))


def test_a_checkpoint_of_another_tokenizer_is_refused(tmp_path):
    model = small_model()
    url = save(str(tmp_path), 1, model)  # its tokenizer.model holds b"tokenizer-bytes"
    import hashlib

    same = hashlib.sha256(b"tokenizer-bytes").hexdigest()
    assert checkpoint.check_compatible(url, dataclasses.asdict(model.config), same)["step"] == 1
    with pytest.raises(UserError, match="another tokenizer"):
        checkpoint.check_compatible(url, dataclasses.asdict(model.config), hashlib.sha256(b"other").hexdigest())


def test_weights_load_from_safetensors_without_unpickling(tmp_path, monkeypatch):
    out = str(tmp_path)
    model = small_model()
    url = save(out, 1, model)
    zip_url = str(tmp_path / "model.zip")
    checkpoint.export_model_zip(url, zip_url)
    stored = safetensors.torch.load_file(os.path.join(url, checkpoint.WEIGHTS))
    # The tied head is stored once, as wte.weight (safetensors refuses shared tensors).
    assert "lm_head.weight" not in stored and torch.equal(stored["wte.weight"], model.wte.weight)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called: the weights were unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    for source in (url, zip_url):
        loaded = checkpoint.load_checkpoint(source)
        assert loaded.model.lm_head.weight is loaded.model.wte.weight  # tied again
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[name], tensor), name
    # Resuming unpickles optimizer.pt (nested state) but takes the weights from safetensors too.
    monkeypatch.undo()
    Path(url, checkpoint.PICKLED_WEIGHTS).write_bytes(b"never read")
    weights = checkpoint.load_training_state(url, dataclasses.asdict(model.config)).model
    assert weights["lm_head.weight"] is weights["wte.weight"] and torch.equal(weights["wte.weight"], model.wte.weight)


def test_untied_weights_keep_their_own_head(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_weights=False))
    url = save(str(tmp_path), 1, model)
    assert "lm_head.weight" in safetensors.torch.load_file(os.path.join(url, checkpoint.WEIGHTS))
    loaded = checkpoint.load_checkpoint(url).model
    assert loaded.lm_head.weight is not loaded.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight) and not torch.equal(loaded.lm_head.weight, loaded.wte.weight)


def test_a_checkpoint_written_before_safetensors_still_loads(tmp_path):
    model = small_model()
    url = written_before_safetensors(save(str(tmp_path / "run"), 4, model))
    for loaded in (checkpoint.load_checkpoint(url).model.state_dict(), checkpoint.load_training_state(url, dataclasses.asdict(model.config)).model):
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded[name], tensor), name
    # Its model.zip gains model.safetensors, made from model.pt.
    zip_url = str(tmp_path / "model.zip")
    checkpoint.export_model_zip(url, zip_url)
    with zipfile.ZipFile(zip_url) as archive:
        assert sorted(archive.namelist()) == sorted(checkpoint.ZIP_MEMBERS)
        stored = safetensors.torch.load(archive.read(checkpoint.WEIGHTS))
    assert "lm_head.weight" not in stored and torch.equal(stored["wte.weight"], model.wte.weight)
    loaded = checkpoint.load_checkpoint(zip_url).model
    assert loaded.lm_head.weight is loaded.wte.weight and torch.equal(loaded.wte.weight, model.wte.weight)


def test_an_old_model_zip_without_safetensors_still_loads(tmp_path):
    model = small_model()
    url = save(str(tmp_path / "run"), 2, model)
    with zipfile.ZipFile(tmp_path / "old.zip", "w") as archive:  # what export_model_zip wrote before safetensors
        for name in ("model.pt", "meta.json", "tokenizer.model"):
            archive.write(os.path.join(url, name), name)
    loaded = checkpoint.load_checkpoint(str(tmp_path / "old.zip"))
    assert loaded.step == 2 and torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)


# Hostile checkpoints (issue 25): what a model.zip or a checkpoint from an untrusted URL
# may make a reader allocate is bounded, and refused in one line past the bound.


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint.MAX_FILE_BYTES_ENV, "16")  # MB: the limit is settable
    good = save(str(tmp_path / "run"), 1)
    files = checkpoint.read_checkpoint_files(good)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.json", files["meta.json"])
        archive.writestr("tokenizer.model", files["tokenizer.model"])
        archive.writestr(checkpoint.WEIGHTS, bytes(200 * 2**20))  # 200 MB of zeros
    assert bomb.stat().st_size < 2**20  # in a few hundred KB
    with pytest.raises(
        UserError, match=rf"^model.safetensors in checkpoint {bomb} holds 200 MB, over the 16 MB a checkpoint file may: .*{checkpoint.MAX_FILE_BYTES_ENV}$"
    ):
        checkpoint.load_checkpoint(str(bomb))
    # a folder's files too
    monkeypatch.setenv(checkpoint.MAX_FILE_BYTES_ENV, "0.001")
    with pytest.raises(UserError, match="holds 0 MB, over the 0 MB"):
        checkpoint.load_checkpoint(good)


def test_a_checkpoint_may_not_ask_for_an_absurd_model(tmp_path, monkeypatch):
    url = save(str(tmp_path / "run"), 1)
    meta_path = Path(url) / "meta.json"
    meta = json.loads(meta_path.read_text())
    built = []
    monkeypatch.setattr(checkpoint, "GPT", lambda *a: built.append(a))  # would allocate it
    meta["model_args"]["n_embd"] = 10**9
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"asks for a model of 1.2e\+19 parameters, over the 4e\+09 a checkpoint may: .*HOROVOD_LLM_MAX_MODEL_PARAMETERS$"):
        checkpoint.load_checkpoint(url)
    for bad in ("many", -8, 0, True, None):
        meta["model_args"]["n_embd"] = bad
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(UserError, match="no valid model arguments in meta.json"):
            checkpoint.load_checkpoint(url)
    meta["model_args"]["n_embd"] = 9  # n_head 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="inconsistent"):
        checkpoint.load_checkpoint(url)
    assert not built


def test_the_parameter_count_is_the_models(tmp_path):
    for args in (
        dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16),
        dict(vocab_size=300, block_size=32, n_layer=3, n_head=4, n_embd=32, bias=True, tie_weights=False, positional="learned"),
    ):
        assert checkpoint.parameter_count(args) == sum(p.numel() for p in GPT(GPTConfig(**args)).parameters())

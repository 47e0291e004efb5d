import os

from horovod_llm import storage


def test_normalize():
    assert storage.normalize("s3a://bucket/key/") == "s3://bucket/key"
    assert storage.normalize("file:///tmp/x") == "/tmp/x"
    assert storage.normalize("relative/path") == os.path.abspath("relative/path")


def test_memory_filesystem_round_trip():
    root = f"memory://storage-test-{os.getpid()}"
    storage.write_json(storage.join(root, "a", "x.json"), {"k": 1})
    storage.write_bytes(storage.join(root, "a", "y.bin"), b"\x00\x01")
    assert storage.read_json(storage.join(root, "a", "x.json")) == {"k": 1}
    assert storage.list_dir(storage.join(root, "a")) == ["x.json", "y.bin"]
    storage.remove(storage.join(root, "a"))
    assert storage.list_dir(storage.join(root, "a")) == []
    storage.remove(storage.join(root, "missing"))  # not an error


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    storage.write_text(str(target), "first")
    storage.write_text(str(target), "second")
    assert target.read_text() == "second"
    assert os.listdir(target.parent) == ["file.txt"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)

import contextlib
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
    umask = os.umask(0)
    os.umask(umask)
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~umask)  # what open() gives, not mkstemp's 0600


def test_a_silent_endpoint_fails_a_write_within_its_timeouts(monkeypatch):
    """An S3 endpoint that accepts connections and never answers (a cut link, a host
    gone without a word) fails a checkpoint-sized PUT with a StorageError, instead of
    hanging on a "100 Continue" that never comes (it hung a training run for good)."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept_and_stay_silent() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    saved = storage.settings()
    storage.use(storage.S3Settings(endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}", max_attempts=1, read_timeout=1))
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            storage.write_bytes(f"s3://silent-{os.getpid()}/checkpoint.bin", b"x" * 200_000)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever it was
            outcome.append(exc)

    try:
        writer = threading.Thread(target=write, daemon=True)
        started = time.monotonic()
        writer.start()
        writer.join(90)
        assert outcome, f"the write still hangs after {time.monotonic() - started:.0f} s"
        assert isinstance(outcome[0], storage.StorageError), outcome
        assert "ReadTimeoutError" in str(outcome[0]) and "check the network" in str(outcome[0])
        assert accepted, "the request never reached the endpoint"
    finally:
        storage.use(saved)
        listener.close()
        for connection in accepted:
            connection.close()

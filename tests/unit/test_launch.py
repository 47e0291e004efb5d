"""The launcher's handling of Horovod's Spark thread (no JVM needed)."""

import threading

from horovod_llm.launchers.horovod_spark import horovod_job_cancellation_logged


def _raise_in_thread(message: str) -> None:
    def fail():
        raise RuntimeError(message)

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()


def test_only_horovods_cancelled_job_is_kept_off_stderr(monkeypatch):
    seen = []

    def previous(args):
        seen.append(str(args.exc_value))

    monkeypatch.setattr(threading, "excepthook", previous)
    with horovod_job_cancellation_logged():
        _raise_in_thread("Job 177 cancelled part of cancelled job group horovod.spark.run.8")
        _raise_in_thread("something else went wrong")
    assert seen == ["something else went wrong"]
    assert threading.excepthook is previous

"""`horovod-llm doctor`'s rows can fail: each check, fed a broken part, says so with the fix."""

import pytest

from horovod_llm import doctor


def test_every_row_passes_on_this_set_up():
    for check in (doctor.check_torch, doctor.check_horovod, doctor.check_petastorm, doctor.check_tokenizer_and_corpus):
        result = check()
        assert result.ok, result


def test_a_torch_outside_the_supported_range_fails(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "__version__", "2.14.1+cpu")
    result = doctor.check_torch()
    assert not result.ok and "needs torch" in result.note and "make setup" in result.note


def test_a_torch_that_computes_wrong_fails(monkeypatch):
    import torch

    monkeypatch.setattr(torch.linalg, "inv", lambda a: a)
    assert not doctor.check_torch().ok


def test_an_empty_or_textless_corpus_fails(monkeypatch):
    from horovod_llm.data import corpus

    monkeypatch.setattr(corpus, "embedded_corpus", lambda: [])
    result = doctor.check_tokenizer_and_corpus()
    assert not result.ok and "no plays" in result.note


def test_a_horovod_without_the_bind_address_patch_fails(monkeypatch):
    from horovod_llm.launchers import horovod_env

    monkeypatch.setattr(horovod_env, "horovod_honours_bind_address", lambda: False)
    result = doctor.check_horovod()
    assert not result.ok and "bind-address patch" in result.note


def test_an_inactive_pyarrow_hotfix_fails(monkeypatch):
    monkeypatch.setattr(doctor, "unsafe_arrow_types_refused", lambda: False)
    result = doctor.check_petastorm()
    assert not result.ok and "CVE-2023-47248" in result.note


@pytest.mark.parametrize("check", doctor.CHECKS, ids=lambda check: check.__name__)
def test_a_crashing_check_is_a_failed_row(check, monkeypatch):
    # This check crashes where the others run as they are: its row fails, named after
    # it, with the error and the fix, and every other row is still there.
    def crash():
        raise RuntimeError("boom")

    def fine(name):  # the other checks, without their side effects (check_spark starts a session)
        def ok():
            return doctor.Check(name, "1.0", True, "OK")

        ok.__name__ = f"check_{name}"
        return ok

    crash.__name__ = check.__name__
    index = doctor.CHECKS.index(check)
    others = [crash if c is check else fine(c.__name__.removeprefix("check_")) for c in doctor.CHECKS]
    monkeypatch.setattr(doctor, "CHECKS", others)
    rows = doctor.run_checks()
    assert len(rows) == len(doctor.CHECKS) and sum(r.ok for r in rows) == len(rows) - 1
    row = rows[index]
    assert row.part == check.__name__.removeprefix("check_")
    assert not row.ok and row.note == f"boom: {doctor.SETUP_FIX}"

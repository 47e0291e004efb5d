"""`horovod-llm emr` argument handling: help for every subcommand, mistakes as one line."""

import pytest

from horovod_llm.cli import main

SUBCOMMANDS = ["up", "submit", "status", "logs", "down"]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_for_every_emr_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as info:
        main(["emr", sub, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: horovod-llm emr {sub}") and "--config" in out


def test_unknown_stage_is_one_line(capsys):
    assert main(["emr", "submit", "--dry-run", "--cluster-id", "j-1", "--steps", "train,evaluate", "emr.s3_url=s3://bkt/p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --steps 'train,evaluate' must list stages from preprocess,train,generate, e.g. --steps train,generate"


def test_the_placeholder_bucket_is_refused_before_anything_is_sent(capsys):
    assert main(["emr", "up", "--dry-run"]) == 2
    assert "emr.s3_url (s3://CHANGE-ME/horovod-llm) names no valid S3 bucket" in capsys.readouterr().err


def test_submit_needs_a_cluster_id(capsys):
    with pytest.raises(SystemExit) as info:
        main(["emr", "submit", "emr.s3_url=s3://bkt/p"])
    assert info.value.code == 2 and "--cluster-id" in capsys.readouterr().err

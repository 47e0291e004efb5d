"""bench/quality.py and bench/sweep.py (issue 28): the rule is tuned on text the quality
bench never scores, and the quality bench's seeds are none a sweep used."""

import sys

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))  # bench scripts import each other as top-level modules
import quality  # noqa: E402
import sweep  # noqa: E402


@pytest.mark.parametrize("name", sorted(quality.CORPORA))
def test_tuning_and_scoring_slices_are_disjoint_and_cover_the_corpus(name):
    text = quality.CORPORA[name]()[: quality.CORPUS_CHARS]
    slices = quality.split_by_position(text)
    assert "".join(slices[part] for part in quality.SLICES) == text  # consecutive, nothing lost
    train, dev, test = (slices[part] for part in quality.SLICES)
    assert dev and test and len(test) >= 0.09 * len(text) and len(dev) >= 0.09 * len(text)
    # the slices are cut at line breaks, so no line of the test slice is also in another
    assert train.endswith("\n") and dev.endswith("\n")
    assert text.index(test) == len(train) + len(dev)


def test_a_third_corpus_the_rule_never_saw():
    assert {"shakespeare", "code", "python_docs"} <= set(quality.CORPORA)
    docs = quality.CORPORA["python_docs"]()
    assert len(docs) > 300_000 and "statement" in docs


def test_sweeps_score_the_dev_slice_and_the_quality_bench_the_test_slice(monkeypatch, tmp_path):
    scored = []

    def fake_run_arm(corpus_dir, arm, budget_s, seed, overrides, out, score_on="test"):
        scored.append((score_on, seed))
        return {"nats_per_character": 1.0, "steps": 1, "tokens_per_s": 1.0, "epochs": 1.0, "parameters": 1, "run_wall_s": 1.0}

    monkeypatch.setattr(sweep, "run_arm", fake_run_arm)
    monkeypatch.setattr(sweep, "prepare_corpus", lambda name: tmp_path)
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--variants", "recipe"])
    sweep.main()
    assert scored == [("dev", 1)]
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--variants", "recipe", "--seed", str(quality.QUALITY_SEEDS_FROM)])
    with pytest.raises(SystemExit):
        sweep.main()  # a quality seed is refused
    # run_arm scores only a slice the rule was not tuned on unless asked for dev
    with pytest.raises(ValueError):
        quality.run_arm(tmp_path, "recipe", 1.0, 1, [], tmp_path / "out", score_on="train")

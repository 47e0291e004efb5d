"""The README's benchmark headlines and bench/results.md's measured section hold exactly
what bench/render.py makes of bench/results.json: no figure typed by hand (issue 12)."""

import json
import sys

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))  # bench scripts import each other as top-level modules
import render  # noqa: E402

RESULTS = json.loads((REPO_ROOT / "bench" / "results.json").read_text())


def test_results_md_holds_the_rendering_of_results_json():
    text = (REPO_ROOT / "bench" / "results.md").read_text()
    assert render.between(text, render.MEASURED) == render.render(RESULTS)


def test_the_readme_headlines_are_the_rendering_of_results_json():
    text = (REPO_ROOT / "README.md").read_text()
    assert render.between(text, render.HEADLINES) == render.headlines(RESULTS)


def test_every_measured_figure_says_how_many_runs_it_is_the_median_of():
    for row in render.summary_rows(RESULTS):
        assert row[2] == "1 run" or row[2].startswith("median of ") or row[2] == "1 run per size", row
    for line in render.headlines(RESULTS).splitlines()[2:]:
        assert "run" in line, line


def test_figures_from_elsewhere_stay_out_of_the_measured_table():
    """nanoGPT's own reported figures are cited under "Figures from elsewhere", never among
    the measurements; the measured part may name the configuration the quality bench's
    reference arm trains (bench/reference_trainer.py), which this code measures."""
    measured = render.render(RESULTS)
    assert "karpathy" not in measured and "issue 14" not in measured.lower()
    assert "1.557" not in measured and "1.880" not in measured


def test_the_readme_quality_table_and_recipe_rule_are_generated():
    text = (REPO_ROOT / "README.md").read_text()
    assert render.between(text, render.QUALITY) == render.quality_table(RESULTS)
    assert render.between(text, render.RECIPE) == render.recipe_table()


def test_a_partial_run_claims_only_what_it_measured():
    """`run_all.py --only X` reruns X alone: the header names it, and every benchmark
    line carries the date of its own results, not the last run's."""
    partial = {**RESULTS, "settings": {**RESULTS.get("settings", {}), "only": ["generate_throughput"]}}
    header = render.render(partial).splitlines()[0]
    assert "`bench/run_all.py --only generate_throughput` took" in header and "`make bench` took" not in header
    full = {**RESULTS, "settings": {**RESULTS.get("settings", {}), "only": None}}
    assert "`make bench` took" in render.render(full).splitlines()[0]
    for name, entry in RESULTS["benchmarks"].items():
        if "gathered_from" not in entry:
            date = ((entry.get("result") or {}).get("machine") or {}).get("date") or entry.get("date")
            assert f"- `{name}`: {entry['seconds']:.0f} s, measured {date}," in render.render(RESULTS), name

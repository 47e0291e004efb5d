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
    assert not any("nanoGPT" in cell for row in render.summary_rows(RESULTS) for cell in row)
    assert "nanoGPT" not in render.render(RESULTS)


def test_the_readme_quality_table_and_recipe_rule_are_generated():
    text = (REPO_ROOT / "README.md").read_text()
    assert render.between(text, render.QUALITY) == render.quality_table(RESULTS)
    assert render.between(text, render.RECIPE) == render.recipe_table()

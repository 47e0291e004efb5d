"""tests/cluster skips where network namespaces cannot be made (a developer's machine
without root), but fails where CI is set: a CI run that skipped them would look green."""

import pytest
from _pytest.outcomes import Failed, Skipped

from tests.cluster import conftest as cluster


@pytest.mark.parametrize("ci, outcome", [("true", Failed), (None, Skipped)])
def test_missing_namespaces_fail_under_ci_and_skip_elsewhere(monkeypatch, tmp_path, ci, outcome):
    monkeypatch.setattr(cluster, "unavailable", lambda: "network namespaces need root")
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
    with pytest.raises(outcome, match="network namespaces need root"):
        cluster.start_cluster(tmp_path, {"node2": 1, "node3": 1})

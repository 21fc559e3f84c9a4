"""Load: 20 clients polling job status while 50 jobs (a no-op command) are submitted to a live
server; every job ends Done and runs exactly once. The latency is measured by
bench/service_load.py, whose load driver this test runs."""

from __future__ import annotations

import sys
from pathlib import Path

from service_helpers import live_server, make_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from service_load import NOOP, make_dataset, run_load, runs_per_job  # noqa: E402  (bench/service_load.py)


def test_fifty_jobs_under_twenty_pollers_all_end_done_and_run_once(tmp_path):
    data = tmp_path / "data"
    make_dataset(data / "one")
    settings = make_settings(
        data, max_jobs=4, poll_interval=0.2, command=lambda action, spec: [*NOOP, action]
    )
    with live_server(settings) as url:
        result = run_load(url, settings.token, jobs=50, pollers=20, timeout=120, pause=0.1)
    assert len(result["submitted"]) == len(set(result["submitted"])) == 50
    assert sorted(result["jobs"]) == sorted(result["submitted"])  # no job lost, none added
    assert set(result["jobs"].values()) == {"Done"}
    assert set(runs_per_job(data, result["submitted"]).values()) == {1}  # none ran twice
    assert result["errors"] == [] and result["polls"] > 50

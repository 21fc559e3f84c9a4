"""The AutoML search over a stand-in trial (tests/automl/fake_trial.py: val_mAP50 follows from the
learning rate alone): the same seed samples the same trials, ASHA and Hyperband prune the clearly
worse ones, a killed search resumes without repeating a trial, and the outputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from test_space import base_spec  # tests/automl/test_space.py

from rtdetr.automl.search import STUDY_DB
from rtdetr.common.status import StatusLogger, read_status
from rtdetr.config import load_spec
from rtdetr.errors import UserError
from rtdetr.tasks.automl import search

FAKE = Path(__file__).with_name("fake_trial.py")


def fake(pause: float = 0.02):
    return lambda spec_file: [sys.executable, str(FAKE), str(spec_file), str(pause)]


def spec(**automl) -> dict:
    out = base_spec()
    out["automl"].update({"parameters": ["train.optim.lr", "dataset.augmentation.distortion_prob"],
                          "max_epochs": 3, "seed": 7, **automl})  # fmt: skip
    return out


def run(folder: Path, command=None, **automl) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return search(spec(**automl), folder, StatusLogger(folder), command=command or fake(), poll=0.02)


def trials(folder: Path) -> list[dict]:
    with open(folder / "trials.csv") as fh:
        return list(csv.DictReader(fh))


def test_the_same_seed_samples_the_same_trials_and_the_outputs_are_written(tmp_path):
    first = run(tmp_path / "a", algorithm="bohb", max_trials=4)
    second = run(tmp_path / "b", algorithm="bohb", max_trials=4)
    rows_a, rows_b = trials(tmp_path / "a"), trials(tmp_path / "b")
    lrs = [row["train.optim.lr"] for row in rows_a]
    assert lrs == [row["train.optim.lr"] for row in rows_b] and len(set(lrs)) == 4
    assert first["best_params"] == second["best_params"] and first["trials"] == 4
    other = run(tmp_path / "c", algorithm="bohb", max_trials=4, seed=8)
    assert [row["train.optim.lr"] for row in trials(tmp_path / "c")] != lrs and other["trials"] == 4

    row = rows_a[0]
    assert list(row)[:4] == ["number", "state", "val_mAP50", "duration_s"]
    assert len(json.loads(row["val_mAP50_per_epoch"])) in (1, 2, 3) and row["folder"] == "trial_000"
    best = yaml.safe_load((tmp_path / "a" / "best_spec.yaml").read_text())
    assert best["train"]["optim"]["lr"] == pytest.approx(first["best_params"]["train.optim.lr"])
    assert best["results_dir"] == str(tmp_path / "a" / "best") and "automl" not in best
    load_spec(best, action="train")
    assert {p.name for p in (tmp_path / "a" / "plots").iterdir()} == {
        "metric_by_trial.png", "importances.png", "parallel_coordinate.png",
    }  # fmt: skip
    lines = [line for line in read_status(tmp_path / "a") if line.get("trial") is not None]
    assert [line["trial"] for line in lines] == [0, 1, 2, 3]


@pytest.mark.parametrize("algorithm", ["asha", "hyperband"])
def test_asha_and_hyperband_prune_clearly_worse_trials(tmp_path, algorithm):
    summary = run(tmp_path, algorithm=algorithm, max_trials=6, max_epochs=9, parameters=["train.optim.lr"])
    rows = trials(tmp_path)
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert summary["pruned"] == len(pruned) >= 1 and len(rows) == 6
    for row in pruned:  # stopped early, and worse than the best complete trial so far
        assert len(json.loads(row["val_mAP50_per_epoch"])) < 9
        assert (tmp_path / row["folder"] / "PRUNED").is_file()
    assert max(float(r["val_mAP50"]) for r in complete) > max(float(r["val_mAP50"]) for r in pruned)


KILLED_SEARCH = """
import sys
from pathlib import Path
sys.path.insert(0, {here!r})
from test_search import run, fake
run(Path(sys.argv[1]), command=fake(0.15), algorithm="bohb", max_trials=6)
"""


def test_a_killed_search_resumes_without_repeating_a_trial(tmp_path):
    folder = tmp_path / "search"
    code = KILLED_SEARCH.format(here=str(Path(__file__).parent))
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            done = [line for line in read_status(folder) if line.get("trial_state") == "COMPLETE"] if (
                folder / "status.json").is_file() else []  # fmt: skip
            if len(done) >= 3:
                break
            assert process.poll() is None and time.monotonic() < deadline, (
                "the search did not get to 3 trials"
            )
            time.sleep(0.05)
        time.sleep(0.2)  # into the fourth trial
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    study = optuna.load_study(study_name="rtdetr_automl", storage=f"sqlite:///{folder / STUDY_DB}")
    before = {t.number: t.params for t in study.get_trials() if t.state.is_finished()}
    assert len(before) >= 3
    summary = run(folder, algorithm="bohb", max_trials=6)
    rows = trials(folder)
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and summary["complete"] + summary["pruned"] == 6
    kept = {int(r["number"]): r for r in rows}
    for number, params in before.items():  # the first search's trials stand as they were
        assert float(kept[number]["train.optim.lr"]) == pytest.approx(params["train.optim.lr"])
    for row in finished:  # each ran once, in its own folder
        starts = [
            line for line in read_status(folder / row["folder"] / "train") if line["status"] == "STARTED"
        ]
        assert len(starts) == 1, row
    interrupted = [r for r in rows if r["state"] == "FAIL"]
    assert len(interrupted) <= 1  # the trial the kill cut short, run again under a new number
    if interrupted:
        lr = interrupted[0]["train.optim.lr"]
        assert any(r["train.optim.lr"] == lr for r in finished)


def test_trials_that_cannot_run_stop_the_search_with_the_reason(tmp_path):
    failing = lambda spec_file: [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(1)"]  # noqa: E731
    with pytest.raises(UserError, match=r"automl: \d+ trials failed; the last \(trial_\d+\): no GPU here"):
        run(tmp_path, command=failing, algorithm="asha", max_trials=2)


def test_pbt_copies_the_best_members_settings_to_the_worst_and_perturbs_them(tmp_path):
    summary = run(tmp_path, algorithm="pbt", population_size=4, max_epochs=4, eval_interval=2,
                  parameters=["train.optim.lr", "dataset.augmentation.distortion_prob"])  # fmt: skip
    rows = trials(tmp_path)
    assert len(rows) == 8 and summary["complete"] == 8
    by = {(int(r["member"]), int(r["round"])): r for r in rows}
    first = {m: float(by[m, 0]["val_mAP50"]) for m in range(4)}
    worst, best = min(first, key=first.get), max(first, key=first.get)
    lr_best, lr_next = float(by[best, 0]["train.optim.lr"]), float(by[worst, 1]["train.optim.lr"])
    assert (
        lr_next / lr_best == pytest.approx(1.2)
        or lr_next / lr_best == pytest.approx(1 / 1.2)
        or (
            lr_next in (1e-5, 1e-3)  # clipped at the range's end
        )
    )
    assert by[best, 1]["train.optim.lr"] == by[best, 0]["train.optim.lr"]  # the best goes on unchanged
    spec_file = yaml.safe_load((tmp_path / f"member_{worst:02d}" / "spec.yaml").read_text())
    assert spec_file["train"]["num_epochs"] == 4 and spec_file["train"]["checkpoint_interval"] == 2


def test_concurrent_trials_share_the_cpus_threads(monkeypatch):
    from rtdetr.automl.trials import thread_share

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert (
        thread_share(1) == {}
        and thread_share(2) == {"OMP_NUM_THREADS": "4"}
        and thread_share(16) == {"OMP_NUM_THREADS": "1"}
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_share(2) == {}  # the user's setting stands

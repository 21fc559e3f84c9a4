"""Load on the job server: clients polling job status while jobs are submitted.

A server (`rtdetr serve`'s app under uvicorn, in a process of its own, SQLite in WAL mode, the local
executor) runs jobs whose command is a no-op shell line (`echo`), so that what is measured is the
service: the API, the database and the scheduler, not a task. While --jobs jobs are submitted one
after another, --pollers client threads each ask for the status of a random submitted job in a loop
(a fresh request each time, no pause) until every job has ended. Reports the status latency
(median, p90, p99, max over all polls), the polls per second, the time until every job ended, and
checks that every job ended Done and ran exactly once (one line in its log).

    python bench/service_load.py [--jobs 50] [--pollers 20] [--max-jobs 4] [--poll-interval 1.0]
                                 [--out bench/results/service_load.json]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "service_load.json"
ORG = "load"
NOOP = ["/bin/sh", "-c", "echo ran $0"]  # + the action: one line in job.log per run

SERVER = """
import sys
from rtdetr.service.app import serve
from rtdetr.service.settings import Settings
data, port, max_jobs, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
noop = {noop!r}
settings = Settings(data_dir=data, gpus=[], max_jobs=max_jobs, poll_interval=interval,
                    command=lambda action, spec: [*noop, action])
serve(settings, host="127.0.0.1", port=port)
"""


def make_dataset(root: Path) -> None:
    """A one-image COCO folder (the jobs never read it; an experiment needs a dataset)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (90, 120, 150)).save(root / "images" / "a.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10], "area": 100, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "box"}],
    }
    (root / "train.json").write_text(json.dumps(coco))


def run_load(
    url: str, token: str, jobs: int, pollers: int, timeout: float = 300.0, pause: float = 0.0
) -> dict:
    """Submit ``jobs`` no-op jobs while ``pollers`` threads poll their status, ``pause`` seconds
    between two polls of a thread; returns the numbers and the final state of every job (``jobs``:
    id -> status)."""
    headers = {"Authorization": f"Bearer {token}"}
    api = httpx.Client(base_url=f"{url}/api/v1/orgs/{ORG}", headers=headers, timeout=60)
    dataset = api.post("/datasets", json={"name": "one", "path": "one", "json_file": "train.json"})
    dataset.raise_for_status()
    ident = dataset.json()["id"]
    experiment = api.post(
        "/experiments", json={"name": "load", "train_datasets": [ident], "eval_dataset": ident}
    )
    experiment.raise_for_status()
    base = f"/experiments/{experiment.json()['id']}/jobs"
    submitted: list[str] = []
    finished = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(pollers)]
    errors: list[str] = []

    def poll(mine: list[float], seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=api.base_url, headers=headers, timeout=60) as own:
            while not finished.is_set():
                if not submitted:
                    time.sleep(0.01)
                    continue
                job = rng.choice(submitted)
                start = time.perf_counter()
                r = own.get(f"{base}/{job}")
                mine.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(f"GET {job}: {r.status_code}")
                if pause:
                    time.sleep(pause)

    threads = [threading.Thread(target=poll, args=(latencies[i], i), daemon=True) for i in range(pollers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for _ in range(jobs):
        r = api.post(base, json={"action": "evaluate", "specs": {"evaluate": {"checkpoint": "one/none.pth"}}})
        r.raise_for_status()
        submitted.append(r.json()["id"])
    state: dict[str, str] = {}
    while time.monotonic() - start < timeout:
        state = {j["id"]: j["status"] for j in api.get(base).json()}
        if len(state) >= jobs and all(s in ("Done", "Error", "Canceled") for s in state.values()):
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    finished.set()
    for t in threads:
        t.join(timeout=60)
    every = sorted(x for mine in latencies for x in mine)

    def q(p: float) -> float:
        return every[min(len(every) - 1, int(p * len(every)))] * 1000 if every else float("nan")

    return {
        "jobs": state, "submitted": submitted, "errors": errors, "polls": len(every),
        "polls_per_s": len(every) / elapsed, "seconds_until_all_ended": elapsed,
        "latency_ms": {"median": statistics.median(every) * 1000 if every else float("nan"),
                       "p90": q(0.90), "p99": q(0.99), "max": every[-1] * 1000 if every else float("nan")},
    }  # fmt: skip


def runs_per_job(data: Path, ids: list[str]) -> dict[str, int]:
    """How many times each job's command ran (its 'ran' lines in job.log)."""
    out = {}
    for ident in ids:
        log = data / "jobs" / ident / "job.log"
        out[ident] = log.read_text().count("ran evaluate") if log.is_file() else 0
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("fastapi", "uvicorn", "sqlalchemy", "httpx")}


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine, write_report

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--max-jobs", type=int, default=4, help="jobs the server runs at once")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the scheduler's round, seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rtdetr_load_") as tmp:
        data = Path(tmp) / "data"
        make_dataset(data / "one")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        code = SERVER.format(noop=NOOP)
        server = subprocess.Popen(
            [sys.executable, "-c", code, str(data), str(port), str(args.max_jobs), str(args.poll_interval)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{url}/api/v1/health", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            token = (data / ".service" / "token").read_text().strip()
            result = run_load(url, token, args.jobs, args.pollers)
            runs = runs_per_job(data, result["submitted"])
        finally:
            server.terminate()
            server.wait(timeout=30)

    done = sum(1 for s in result["jobs"].values() if s == "Done")
    once = sum(1 for n in runs.values() if n == 1)
    lat = result["latency_ms"]
    print(
        "| jobs | pollers | Done | ran once | polls | polls/s | p50 ms | p90 ms | p99 ms | max ms | all ended after |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.jobs} | {args.pollers} | {done} | {once} | {result['polls']} | {result['polls_per_s']:.0f} | "
        f"{lat['median']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} | "
        f"{result['seconds_until_all_ended']:.1f} s |"
    )
    report = {"machine": machine("n/a", **versions()), "args": {k: str(v) for k, v in vars(args).items()}, "done": done,
              "ran_once": once, "errors": result["errors"][:20], **{k: result[k] for k in
              ("polls", "polls_per_s", "seconds_until_all_ended", "latency_ms")}}  # fmt: skip
    write_report(args.out, report)
    return 0 if done == args.jobs and once == args.jobs and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())

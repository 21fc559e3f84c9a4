"""A stand-in for `rtdetr <action> -e spec.yaml` in the service tests: writes status.json (and, per
mode, checkpoints or an ONNX file) where the real task would, in a fraction of a second.

usage: fake_job.py MODE ACTION SPEC
  ok        STARTED, SUCCESS
  train     three epochs with val_mAP50 0.5, 0.7, 0.6 and a checkpoint each, then SUCCESS
  export    writes export.onnx_file, then SUCCESS
  epochs    five epochs of 0.4 s after the ones checkpointed before (a resume); on SIGTERM it stops
            at the next epoch boundary with exit status 143, as the train task does
  automl    two trial lines (one complete, one pruned), as `rtdetr automl` writes them, then SUCCESS
  fail      STARTED, FAILURE "boom", exit status 1
  sleep     STARTED, starts a child that sleeps too (its pid in child.pid), sleeps 60 s
  stubborn  as sleep, and ignores SIGTERM
  short     STARTED, sleeps 1.5 s, SUCCESS
  gpu       writes CUDA_VISIBLE_DEVICES to gpu.txt and OMP_NUM_THREADS to threads.txt, sleeps 0.5 s, SUCCESS
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    mode, action, spec_file = sys.argv[1:4]
    spec = yaml.safe_load(Path(spec_file).read_text())
    results = Path(spec["results_dir"]) / action
    results.mkdir(parents=True, exist_ok=True)

    def status(state, message="", **extra):
        with open(results / "status.json", "a") as fh:
            fh.write(json.dumps({"status": state, "message": message, **extra}) + "\n")

    status("STARTED", f"Starting {action}.")
    print(f"fake {action} ({mode}) started", flush=True)
    if mode == "train":
        for epoch, score in enumerate((0.5, 0.7, 0.6)):
            (results / f"model_epoch_{epoch:03d}.pth").write_bytes(b"weights")
            status("RUNNING", f"Train epoch {epoch} finished.", epoch=epoch, max_epoch=3, eta="0:00:01",
                   kpi={"train_loss": 1.0 - score, "val_mAP50": score})  # fmt: skip
        os.symlink("model_epoch_002.pth", results / "rtdetr_model_latest.pth")
    elif mode == "epochs":
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        for epoch in range(len(list(results.glob("model_epoch_*.pth"))), 5):
            time.sleep(0.4)
            if stop:
                status("FAILURE", f"SIGTERM received during epoch {epoch}")
                return 143
            (results / f"model_epoch_{epoch:03d}.pth").write_bytes(b"weights")
            status("RUNNING", f"Train epoch {epoch} finished.", epoch=epoch, max_epoch=5,
                   kpi={"train_loss": 1.0 / (epoch + 1), "val_mAP50": 0.1 * epoch})  # fmt: skip
            print(f"epoch {epoch}", flush=True)
    elif mode == "automl":
        status("RUNNING", "Trial 0 complete: val_mAP50 0.4", kpi={"val_mAP50": 0.4}, trial=0,
               trial_state="COMPLETE", params={"train.optim.lr": 0.001})  # fmt: skip
        status("RUNNING", "Trial 1 pruned: val_mAP50 0.1", kpi={"val_mAP50": 0.1}, trial=1,
               trial_state="PRUNED", params={"train.optim.lr": 1e-05})  # fmt: skip
    elif mode == "export":
        Path(spec["export"]["onnx_file"]).parent.mkdir(parents=True, exist_ok=True)
        Path(spec["export"]["onnx_file"]).write_bytes(b"onnx")
    elif mode == "fail":
        status("FAILURE", "boom")
        print("Traceback: boom", flush=True)
        return 1
    elif mode in ("sleep", "stubborn"):
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        (results / "child.pid").write_text(str(child.pid))
        time.sleep(60)
    elif mode == "short":
        time.sleep(1.5)
    elif mode == "gpu":
        (results / "gpu.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        (results / "threads.txt").write_text(os.environ.get("OMP_NUM_THREADS", "unset"))
        time.sleep(0.5)
    status("SUCCESS", f"{action} finished successfully.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

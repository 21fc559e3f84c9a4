"""A stand-in for `rtdetr train -e spec.yaml` in the AutoML tests: one status.json epoch line per
epoch whose val_mAP50 follows from the spec's learning rate alone (1e-3 is best, 1e-5 worst), so a
search over it is deterministic; SIGTERM ends it (exit status 143), as it ends the train task.

usage: fake_trial.py SPEC [SECONDS_PER_EPOCH]
"""

import json
import math
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    spec = yaml.safe_load(Path(sys.argv[1]).read_text())
    pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.02
    results = Path(spec["results_dir"]) / "train"
    results.mkdir(parents=True, exist_ok=True)
    epochs = spec["train"]["num_epochs"]
    score = max(0.0, 1.0 - abs(math.log10(spec["train"]["optim"]["lr"]) + 3.0) / 2.0)

    def status(state, message="", **extra):
        with open(results / "status.json", "a") as fh:
            fh.write(json.dumps({"status": state, "message": message, **extra}) + "\n")

    status("STARTED", "Starting train.")
    print(f"fake trial: lr {spec['train']['optim']['lr']:.3g}, {epochs} epochs", flush=True)
    for epoch in range(epochs):
        time.sleep(pause)
        value = score * (0.5 + 0.5 * (epoch + 1) / epochs)
        status("RUNNING", f"Train epoch {epoch} finished.", epoch=epoch, max_epoch=epochs,
               kpi={"train_loss": 1.0 - value, "val_mAP50": value, "val_mAP": value / 2})  # fmt: skip
    status("SUCCESS", "Train finished successfully.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The real toolkit behind the service: an evaluate child of a train job runs `rtdetr evaluate` on
the parent's best checkpoint and reports test mAP."""

from __future__ import annotations

import pytest
from service_helpers import fake_command

from rtdetr.service.settings import default_command

TINY_MODEL = {
    "backbone": "resnet_18vd", "hidden_dim": 32, "feat_channels": [32, 32, 32], "nheads": 2,
    "dim_feedforward": 64, "dec_dim_feedforward": 64, "dec_layers": 1, "num_queries": 10,
    "dn_number": 4, "expansion": 0.5, "num_select": 10,
}  # fmt: skip


BASE_SPEC = {
        "model": TINY_MODEL,
        "dataset": {
            "batch_size": 4, "workers": 0, "pin_memory": False,
            "augmentation": {"train_spatial_size": [64, 64], "eval_spatial_size": [64, 64], "multi_scales": [],
                             "distortion_prob": 0.0, "iou_crop_prob": 0.0},
        },
        "train": {"num_epochs": 1, "activation_checkpoint": False, "seed": 1},
    }  # fmt: skip


@pytest.mark.slow
def test_an_evaluate_child_runs_the_toolkit_on_its_parents_best_checkpoint(server):
    import torch

    from rtdetr.config import load_spec, spec_to_dict
    from rtdetr.model.checkpoint import ModelMetadata, build_from_metadata, save_checkpoint

    experiment = server.experiment(base_spec=BASE_SPEC, test_dataset=server.dataset("test"))
    server.settings.command = fake_command("train")  # checkpoints of epochs 0-2, the best is epoch 1
    train = server.submit(experiment, "train")
    spec = server.wait(experiment, train, "Done")["specs"]
    meta = ModelMetadata(
        model=spec_to_dict(load_spec(spec).model), num_classes=3, class_names=["class_0", "red", "green"],
        category_ids=[-1, 1, 2], input_size=[64, 64],
    )  # fmt: skip
    torch.manual_seed(0)
    best = server.settings.jobs_dir / train / "train" / "model_epoch_001.pth"
    save_checkpoint(best, build_from_metadata(meta), meta)

    server.settings.command = default_command
    evaluate = server.submit(experiment, "evaluate", parent=train)
    info = server.wait(experiment, evaluate, ("Done", "Error"), timeout=60)
    assert info["status"] == "Done", server.get(f"/experiments/{experiment}/jobs/{evaluate}/logs").text
    assert info["specs"]["evaluate"]["checkpoint"] == str(best)
    assert info["specs"]["dataset"]["test_data_sources"]["json_file"].endswith("test.json")
    assert 0.0 <= info["kpi"]["test_mAP"] <= 1.0 and info["exit_code"] == 0
    files = {f["path"] for f in server.get(f"/experiments/{experiment}/jobs/{evaluate}:list_files").json()}
    assert {"evaluate/results.json", "evaluate/experiment.yaml", "evaluate/status.json"} <= files

"""Datasets, experiments and spec schemas through the API, and the token every route asks for."""

from __future__ import annotations

import re
import stat

from fastapi.testclient import TestClient
from service_helpers import ORG

from rtdetr.config import reference


def test_every_route_but_health_needs_the_token(server):
    anonymous = TestClient(server.client.app)
    wrong = TestClient(server.client.app, headers={"Authorization": "Bearer not-the-token"})
    assert anonymous.get("/api/v1/health").status_code == 200
    routes = [
        (path, method.upper())
        for path, methods in server.client.app.openapi()["paths"].items()
        for method in methods
        if path != "/api/v1/health"
    ]
    assert len(routes) >= 18 and all(path.startswith("/api/v1/orgs/{org}/") for path, _ in routes)
    for route, method in routes:
        path = re.sub(r"\{[^}]+\}", "x", route)
        for client in (anonymous, wrong):
            response = client.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    token_file = server.settings.token_file
    assert token_file.read_text().strip() == server.settings.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_a_dataset_from_a_folder_is_read_and_summarized(server):
    r = server.post("/datasets", json={"name": "t", "path": "squares", "json_file": "train.json"})
    assert r.status_code == 201, r.text
    dataset = r.json()
    summary = dataset["summary"]
    assert summary["images"] == 8 and summary["num_classes"] == 3
    assert set(summary["boxes_per_class"]) <= {"red", "green"} and summary["boxes"] > 0
    assert sum(summary["boxes_per_class"].values()) == summary["boxes"]
    assert dataset["json_file"] == str(server.settings.data_dir / "squares" / "train.json")
    assert [d["id"] for d in server.get("/datasets").json()] == [dataset["id"]]
    assert server.get(f"/datasets/{dataset['id']}").json()["summary"] == summary
    assert server.client.get(f"/api/v1/orgs/other/datasets/{dataset['id']}").status_code == 404
    assert server.client.delete(f"{ORG}/datasets/{dataset['id']}").status_code == 200
    assert server.get("/datasets").json() == []
    assert (server.settings.data_dir / "squares" / "train.json").is_file()  # a folder dataset stays


def test_a_dataset_reports_what_the_reader_skipped(server, data_dir):
    import json

    data = json.loads((data_dir / "squares" / "train.json").read_text())
    data["images"][0]["file_name"] = "missing.png"
    data["annotations"].append({"id": 999, "image_id": 2, "category_id": 1, "bbox": [0, 0, -3, 5]})
    (data_dir / "squares" / "bad.json").write_text(json.dumps(data))
    r = server.post("/datasets", json={"name": "bad", "path": "squares", "json_file": "bad.json"})
    assert r.status_code == 201, r.text
    summary = r.json()["summary"]
    assert summary["images"] == 7
    assert any("image file not found" in reason for reason in summary["skipped"])
    assert any("zero or negative" in reason for reason in summary["skipped"])


def test_dataset_folders_outside_the_data_folder_or_without_coco_are_refused(server, tmp_path):
    for path in ("/etc", "../", "squares/../..", str(tmp_path), ".service"):
        r = server.post("/datasets", json={"name": "x", "path": path})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0].startswith("path:")
    r = server.post("/datasets", json={"name": "x", "path": "squares"})  # three JSON files: which one?
    assert r.status_code == 422 and "several annotation files" in r.json()["detail"][0]
    r = server.post("/datasets", json={"name": "x", "path": "squares", "json_file": "../../x.json"})
    assert r.status_code == 422 and r.json()["detail"][0].startswith("json_file:")
    assert server.get("/datasets").json() == []


def test_experiments_are_created_listed_updated_and_deleted(server):
    train, val = server.dataset("train"), server.dataset("val")
    body = {
        "name": "e1",
        "train_datasets": [train],
        "eval_dataset": val,
        "base_spec": {"train": {"num_epochs": 2}},
    }
    r = server.post("/experiments", json=body)
    assert r.status_code == 201, r.text
    experiment = r.json()
    assert experiment["network_arch"] == "rtdetr" and experiment["train_datasets"] == [train]
    r = server.client.patch(f"{ORG}/experiments/{experiment['id']}", json={"name": "e2", "test_dataset": val})
    assert r.status_code == 200 and r.json()["name"] == "e2" and r.json()["test_dataset"] == val
    assert [e["name"] for e in server.get("/experiments").json()] == ["e2"]
    assert server.client.delete(f"{ORG}/datasets/{val}").status_code == 409  # in use
    assert server.client.delete(f"{ORG}/experiments/{experiment['id']}").status_code == 200
    assert server.get(f"/experiments/{experiment['id']}").status_code == 404
    assert server.client.delete(f"{ORG}/datasets/{val}").status_code == 200


def test_an_experiment_with_unknown_datasets_or_a_bad_base_spec_is_refused(server):
    r = server.post("/experiments", json={"name": "e", "train_datasets": ["nope"]})
    assert r.status_code == 422 and "no dataset nope" in r.json()["detail"][0]
    r = server.post("/experiments", json={"name": "e", "base_spec": {"train": {"num_epoch": 3}}})
    assert r.status_code == 422
    assert any(p.startswith("base_spec: train.num_epoch") for p in r.json()["detail"]), r.json()
    r = server.post("/experiments", json={"name": "e", "network_arch": "yolo"})
    assert r.status_code == 422
    assert server.get("/experiments").json() == []


def test_the_spec_schema_of_an_action_is_the_default_spec_and_the_json_schema(server):
    experiment = server.experiment()
    r = server.get(f"/experiments/{experiment}/specs/train/schema")
    assert r.status_code == 200
    body = r.json()
    default = reference.default_spec()
    assert body["default"]["dataset"].pop("num_classes") is None  # from the experiment's datasets
    assert default["dataset"].pop("num_classes") == 80 and body["default"] == default
    assert body["properties"] == reference.json_schema()["properties"]
    assert body["automl_default_parameters"] == reference.automl_fields()
    assert "train.num_epochs" in body["automl_default_parameters"]
    assert server.get(f"/experiments/{experiment}/specs/fly/schema").status_code == 404

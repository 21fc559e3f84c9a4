"""What the server refuses: unsafe archives, spec paths outside the data folder, downloads outside a
job's folder; each refusal writes nothing."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _dataset_members(folder: Path, prefix: str = "") -> list:
    members = [_file(f"{prefix}annotations.json", (folder / "train.json").read_bytes())]
    for image in sorted((folder / "images").glob("train_*.png")):
        members.append(_file(f"{prefix}images/{image.name}", image.read_bytes()))
    return members


def _upload(server, content: bytes, name: str = "up"):
    files = {"file": ("data.tar.gz", content, "application/gzip")}
    return server.post("/datasets:upload", files=files, data={"name": name})


def test_an_uploaded_archive_becomes_a_dataset(server, data_dir):
    r = _upload(server, _tar_gz(_dataset_members(data_dir / "squares", prefix="mydata/")))
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["uploaded"] and dataset["summary"]["images"] == 8
    root = server.settings.datasets_dir / dataset["id"]
    assert dataset["json_file"] == str(root / "mydata" / "annotations.json")
    assert not list(server.settings.tmp_dir.iterdir())  # the upload itself is gone
    assert server.client.delete(f"/api/v1/orgs/test/datasets/{dataset['id']}").status_code == 200
    assert not root.exists()


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


@pytest.mark.parametrize(
    "bad, why",
    [
        (_file("../evil.txt", b"x"), "'..' path"),
        (_file("images/../../evil.txt", b"x"), "'..' path"),
        (_file("/tmp/evil.txt", b"x"), "absolute path"),
        (_link("images/evil.txt", "/etc/passwd"), "a link"),
        (_link("evil.txt", "annotations.json", hard=True), "a link"),
        (_device("evil.txt"), "a device"),
    ],
)
def test_unsafe_archives_are_refused_and_nothing_is_written(server, data_dir, bad, why):
    """Each kind of member that could write outside the dataset's folder refuses the whole archive."""
    members = _dataset_members(data_dir / "squares")
    members.insert(1, bad)  # after a good file: the check comes before any extraction
    r = _upload(server, _tar_gz(members))
    assert r.status_code == 422, r.text
    assert why in r.json()["detail"][0] and "refused" in r.json()["detail"][0]
    assert not (data_dir.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert not list(server.settings.datasets_dir.iterdir())
    assert not list(server.settings.tmp_dir.iterdir())
    assert server.get("/datasets").json() == []


def test_an_upload_over_the_size_limit_or_not_a_tar_is_refused(server, data_dir):
    anonymous = server.client.post(
        "/api/v1/orgs/test/datasets:upload", files={"file": ("x.tar", b"x")}, data={"name": "x"},
        headers={"Authorization": "Bearer wrong"},
    )  # fmt: skip
    assert anonymous.status_code == 401
    members = _dataset_members(data_dir / "squares")
    content = _tar_gz(members)
    server.settings.max_upload_bytes = 1000  # refused by the declared size, before the body is read
    r = _upload(server, content)
    assert r.status_code == 413, r.text
    server.settings.max_upload_bytes = len(content) - 1  # refused by the bytes received
    r = _upload(server, content)
    assert r.status_code == 413, r.text
    extracted = sum(len(data) for _, data in members)
    assert extracted > len(content) + 100
    server.settings.max_upload_bytes = len(content) + 100  # refused by the size of what it holds
    r = _upload(server, content)
    assert r.status_code == 422 and "holds more than" in r.json()["detail"][0]
    server.settings.max_upload_bytes = 10**9
    r = _upload(server, b"not a tar archive at all")
    assert r.status_code == 422 and "tar archive" in r.json()["detail"][0]
    assert not list(server.settings.datasets_dir.iterdir()) and not list(server.settings.tmp_dir.iterdir())


def test_a_spec_path_outside_the_data_folder_is_a_422_naming_the_field(server):
    experiment = server.experiment()
    token_file = str(server.settings.token_file)
    cases = {
        "train.pretrained_model_path": {"train": {"pretrained_model_path": "/etc/passwd"}},
        "dataset.val_data_sources.json_file": {
            "dataset": {"val_data_sources": {"json_file": "../../x.json"}}
        },
        "model.pretrained_backbone_path": {"model": {"pretrained_backbone_path": token_file}},
        "dataset.train_data_sources[0].image_dir": {
            "dataset": {"train_data_sources": [{"image_dir": "/tmp", "json_file": "squares/train.json"}]}
        },
    }
    for field, specs in cases.items():
        r = server.post(f"/experiments/{experiment}/jobs", json={"action": "train", "specs": specs})
        assert r.status_code == 422, (field, r.text)
        assert any(p.startswith(f"{field}:") for p in r.json()["detail"]), (field, r.json())
    # an output of the action must be in the job's own folder, even inside the data folder
    onnx_file = str(server.settings.data_dir / "squares" / "model.onnx")
    specs = {"export": {"checkpoint": "squares/train.json", "onnx_file": onnx_file}}
    r = server.post(f"/experiments/{experiment}/jobs", json={"action": "export", "specs": specs})
    assert r.status_code == 422 and any(p.startswith("export.onnx_file:") for p in r.json()["detail"])
    assert server.get(f"/experiments/{experiment}/jobs").json() == []
    assert not list(server.settings.jobs_dir.iterdir())


def test_downloads_never_leave_the_job_folder(server, tmp_path):
    experiment = server.experiment()
    job = server.submit(experiment, "train")
    server.wait(experiment, job, "Done")
    url = f"/experiments/{experiment}/jobs/{job}:download"
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, server.settings.jobs_dir / job / "link.txt")
    for name in ("../../etc/passwd", "/etc/passwd", "link.txt", "train/../../../data/.service/token"):
        r = server.get(url, params={"file": name})
        assert r.status_code == 403, (name, r.status_code, r.text)
        assert "secret" not in r.text and server.settings.token not in r.text
    r = server.get(url)  # the whole folder: the link is stored as a link, the secret is not read
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        link = tar.getmember(f"{job}/link.txt")
        assert link.issym()
        assert all(b"secret" not in tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())

"""The web page at ``/``: served without a token, and, in headless Chromium against a live server, the
jobs of an experiment with their status, a finished job's loss and mAP curves and its log tail."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pytest
from fastapi.testclient import TestClient
from service_helpers import (  # tests/service/service_helpers.py
    ORG,
    Server,
    fake_command,
    live_server,
    make_settings,
)

from rtdetr.service.app import create_app

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium); CI installs it"
)


# ------------------------------------------------------------------------------------ helpers
class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]):
        self.tag, self.attrs, self.children, self.text = tag, attrs, [], []

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str | None = None, **attrs: str) -> list[Node]:
        """The nodes below (and including) this one with ``tag`` and these attribute values
        (``data_series`` stands for ``data-series``)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag) and all(n.attrs.get(k) == v for k, v in wanted.items())
        ]

    def one(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}> in the page"
        return found[0]

    def all_text(self) -> str:
        return "".join("".join(n.text) for n in self.walk())


class DomReader(HTMLParser):
    """The dumped DOM as a tree of Nodes (Chromium's serialisation closes every element it opens)."""

    VOID = {"meta", "link", "input", "br", "img", "hr", "source", "col", "area", "base", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):  # <polyline ... /> in SVG
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        self.stack[-1].text.append(data)


def parse(html: str) -> Node:
    reader = DomReader()
    reader.feed(html)
    reader.close()
    return reader.root


def dump_dom(url: str, profile) -> Node:
    """The page's DOM once its script has run, from headless Chromium."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
        "--virtual-time-budget=10000", "--dump-dom", url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "<body" in result.stdout, result.stderr[-3000:]
    return parse(result.stdout)


def points(polyline: Node) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in polyline.attrs["points"].split()]


# -------------------------------------------------------------------------------------- tests
def test_the_page_and_its_files_need_no_token_and_the_api_still_does(data_dir):
    with TestClient(create_app(make_settings(data_dir))) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="web/app.js"></script>' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        script = client.get("/web/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert client.get("/web/style.css").status_code == 200
        assert client.get("/web/missing.js").status_code == 404
        assert client.get(f"{ORG}/experiments").status_code == 401


@needs_chromium
def test_the_page_draws_a_finished_jobs_curves_and_log(data_dir, tmp_path):
    settings = make_settings(data_dir, command=fake_command("train"))
    with live_server(settings) as url:
        auth = {"Authorization": f"Bearer {settings.token}"}
        with httpx.Client(base_url=url, headers=auth, timeout=10) as client:
            api = Server(client, settings)  # the tests' API helpers, over HTTP
            experiment = api.experiment(name="<img src=x> squares")
            job = api.submit(experiment, "train")
            api.wait(experiment, job, "Done")
        address = f"{url}/?org=test&experiment={experiment}&job={job}#token={settings.token}"
        page = dump_dom(address, tmp_path / "profile")

    assert page.one(id="message").attrs.get("hidden") is not None, page.one(id="message").all_text()
    assert page.one("button", data_experiment=experiment).all_text() == "<img src=x> squares"
    assert not page.find("img"), "a name from the server was parsed as HTML"
    row = page.one("tr", data_job=job)
    assert row.one("td", **{"class": "status"}).all_text() == "Done"
    assert row.one("td", **{"class": "epoch"}).all_text() == "3/3"

    for chart, series in (("loss-chart", "train_loss"), ("map-chart", "val_mAP50")):
        svg = page.one("svg", id=chart)
        assert [p.attrs["data-series"] for p in svg.find("polyline")] == [series]
        xy = points(svg.one("polyline", data_series=series))
        assert len(xy) == 3, xy
        assert len({x for x, _ in xy}) == 3 and len({y for _, y in xy}) == 3, xy
        assert "epoch" in svg.all_text()
    # val_mAP50 0.5, 0.7, 0.6 in epochs 1, 2, 3: left to right, and SVG's y grows downwards
    xy = points(page.one("polyline", data_series="val_mAP50"))
    assert xy[0][0] < xy[1][0] < xy[2][0] and xy[1][1] < xy[2][1] < xy[0][1], xy
    assert "fake train (train) started" in page.one(id="log-tail").all_text()


@needs_chromium
def test_the_page_without_a_token_says_401(data_dir, tmp_path):
    with live_server(make_settings(data_dir)) as url:
        page = dump_dom(f"{url}/?org=test", tmp_path / "profile")
    message = page.one(id="message")
    assert message.attrs.get("hidden") is None
    assert "401" in message.all_text() and "token" in message.all_text()
    assert not page.one("table", id="job-table").one("tbody").children

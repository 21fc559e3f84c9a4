"""`rtdetr quickstart` needs no user data: it trains on the shipped BCCD sample (its run as the docs
show it: tests/test_docs_commands.py)."""

from rtdetr.tasks.quickstart import sample_dir


def test_sample_ships_with_its_license():
    folder = sample_dir()
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert len(list((folder / "images").glob("*.jpg"))) == 64

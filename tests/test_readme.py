"""The README's AdaShare API snippets run as written."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_adashare_snippet_runs_as_written():
    block = next(b for b in _python_blocks() if "AdaShareNet" in b)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert set(scope["out"]) == {"seg", "depth"}
    assert scope["out"]["seg"].shape[:2] == (2, 6)
    assert scope["out"]["depth"].shape[:2] == (2, 1)


def test_adashare_custom_task_snippet_runs_as_written(tmp_path, monkeypatch):
    """The custom-task snippet trains its two toy tasks end to end and writes the results."""
    block = next((b for b in _python_blocks() if "Task(" in b and "AdaShareRun" in b), None)
    assert block is not None, "README.md has no AdaShare custom-task snippet"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    runs = scope["results"]["runs"]
    assert set(runs) == {"adashare", "single_task", "multi_task"}
    for row in runs.values():
        assert {"mae", "loss"} <= set(row["test"]["brightness"])
        assert {"acc", "loss"} <= set(row["test"]["quadrant"])
    table = (tmp_path / "runs" / "my_tasks" / "results.md").read_text()
    assert "brightness mae ↓" in table and "quadrant acc ↑" in table

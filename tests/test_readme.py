"""The README's AdaShare API snippet runs as written."""

import re
from pathlib import Path

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

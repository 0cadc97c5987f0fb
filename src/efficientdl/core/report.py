"""Combine the Markdown reports of several run folders into one (the demo's report)."""

from __future__ import annotations

import os
import re
from pathlib import Path

_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def combine_reports(run_dirs, out: str | Path, *, title: str = "efficientdl demo report") -> Path:
    """Write `out` holding each run folder's report.md in turn, links rewritten to stay valid."""
    out = Path(out)
    sections = [f"# {title}\n"]
    for run_dir in map(Path, run_dirs):
        report = run_dir / "report.md"
        if not report.is_file():
            raise FileNotFoundError(f"{report} does not exist (did that part of the run finish?)")
        prefix = os.path.relpath(run_dir, out.parent)

        def relink(match, prefix=prefix):
            target = match.group(2)
            if "://" in target or target.startswith(("/", "#")):
                return match.group(0)
            return f"{match.group(1)}{prefix}/{target}{match.group(3)}"

        sections.append(_demote(_LINK.sub(relink, report.read_text())))
    out.write_text("\n".join(sections))
    return out


def _demote(text: str) -> str:
    """Shift every Markdown heading one level down."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)

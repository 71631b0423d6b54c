"""Every citation of a docs/protocol.md section names a heading that the file has.

Code and docs cite the protocol by section, as ``docs/protocol.md "Allocation"``
(a docstring may break the line between the two, a comment may put its
marker before the section name). A renamed or removed heading must take its
citations along.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "docs" / "protocol.md"
CITING = ("relay", "relay_operator", "tests", "bench", "docs", "scripts", "charts", "crds")
CITATION = re.compile(r'docs/protocol\.md\s+(?:(?:#|//)\s*)?"([^"\n]+)"')


def headings() -> list[str]:
    return re.findall(r"^#+ +(.+?) *$", PROTOCOL.read_text(), flags=re.MULTILINE)


def citing_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in CITING:
        files += (
            path
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        )
    return files


def citations() -> dict[str, set[str]]:
    """Each cited section, with the files that cite it."""
    cited: dict[str, set[str]] = {}
    for path in citing_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for section in CITATION.findall(text):
            cited.setdefault(section, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_every_cited_section_is_a_heading():
    cited = citations()
    assert len(cited) >= 3, cited
    missing = {section: sorted(files) for section, files in cited.items()}
    for heading in headings():
        missing.pop(heading, None)
    assert missing == {}


def test_headings_are_unique_so_that_a_citation_names_one_section():
    names = headings()
    assert len(names) > 10
    assert sorted(name for name in set(names) if names.count(name) > 1) == []

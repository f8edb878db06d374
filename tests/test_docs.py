"""docs/ matches the code: the scheme table is recomputed, and nothing cites a file outside the repo."""

import re
from pathlib import Path

from krony.__main__ import schemes_table

ROOT = Path(__file__).resolve().parents[1]


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 8]


def test_scheme_table_in_the_docs_is_what_the_code_computes():
    documented = table_rows((ROOT / "docs" / "method.md").read_text())
    computed = table_rows(schemes_table())
    assert len(computed) == 26  # header, rule, 24 schemes
    assert documented == computed


def test_docs_cross_references_exist():
    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([\w.-]+\.md)\)", doc.read_text()):
            assert (ROOT / "docs" / target).exists(), f"{doc.name} links to a missing {target}"


def test_code_and_docs_cite_only_files_in_the_repo():
    texts = [p for p in ROOT.glob("krony/**/*.py")] + list(ROOT.glob("docs/*.md")) + [ROOT / "README.md"]
    for path in texts:
        text = path.read_text()
        assert "DESIGN" not in text and "../shared/DESIGN" not in text, path
        for cited in re.findall(r"docs/([\w.-]+\.md)", text):
            assert (ROOT / "docs" / cited).exists(), f"{path} cites docs/{cited}, which does not exist"

"""The repository stands on its own: every rule the code cites is documented in it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_cited_rule_section_exists():
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs/rules.md").read_text(encoding="utf-8"), re.M))
    cited = {}
    for path in [*ROOT.glob("charfw/**/*.py"), *ROOT.glob("tests/**/*.py"), ROOT / "README.md"]:
        for number in re.findall(r"docs/rules\.md §(\d+)", path.read_text(encoding="utf-8")):
            cited.setdefault(number, path)
    assert cited, "nothing cites docs/rules.md"
    missing = {n: str(p.relative_to(ROOT)) for n, p in cited.items() if n not in sections}
    assert not missing, f"cited sections not in docs/rules.md: {missing}"


def test_no_citation_of_files_outside_the_repository():
    outside = re.compile("SPEC" + r" §|SPEC\.md")   # spelled so that this file does not match itself
    for path in [*ROOT.glob("charfw/**/*.py"), *ROOT.glob("tests/**/*.py")]:
        assert not outside.search(path.read_text(encoding="utf-8")), path

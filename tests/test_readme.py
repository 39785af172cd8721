"""The README and docs/ as a new trader follows them: every link leads somewhere, and the tour's
commands print what the README shows (run here, paths aside)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli

from riskd.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "rules" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_heading_that_exist(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def _shown(after: str) -> str:
    """The console lines the README shows after the line `after`, up to the end of that block."""
    readme = (ROOT / "README.md").read_text()
    return readme.split(after + "\n", 1)[1].split("```", 1)[0].split("\n$ ", 1)[0]


def _same(printed: str, shown: str, home: Path) -> None:
    def squeeze(text: str) -> list[str]:
        return [" ".join(line.split()) for line in text.replace(str(home), "/home/you").strip().splitlines()]

    assert squeeze(printed) == squeeze(shown)


def test_the_tour_prints_what_the_readme_shows(tmp_path, capsys):
    config = str(tmp_path / "mydesk" / "riskd.yaml")
    assert cli_main(["init", str(tmp_path / "mydesk")]) == 0
    _same(capsys.readouterr().out, _shown("$ riskd init ~/mydesk"), tmp_path)
    policy = tmp_path / "mydesk" / "rules" / "my-policy.yaml"
    good = policy.read_text()
    policy.write_text(good.replace("{below: -500}", "{belw: -500}"))  # the typo step 2 makes on purpose
    assert cli_main(["check", "-c", config]) == 78
    readme = (ROOT / "README.md").read_text()
    block = readme.split("$ riskd check -c ~/mydesk/riskd.yaml\n", 1)[1].split("```", 1)[0]
    shown_typo, shown_fixed = block.split("$ riskd check -c ~/mydesk/riskd.yaml\n")
    _same(capsys.readouterr().err, shown_typo, tmp_path)
    policy.write_text(good)
    assert cli_main(["check", "-c", config]) == 0
    _same(capsys.readouterr().out, shown_fixed, tmp_path)
    once = run_cli("once", "-c", config, "--dry-run")  # the real command: no token, the embedded simulator
    assert once.returncode == 0, once.stderr
    _same(once.stdout, _shown("$ riskd once -c ~/mydesk/riskd.yaml --dry-run"), tmp_path)


def test_the_readme_commands_table_names_every_verb():
    import argparse

    from riskd.cli import _parser

    verbs = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    table = (ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"`riskd (\w+)", table)) | set(re.findall(r"/ `(\w+) ", table))
    assert set(verbs) <= named, f"verbs missing from the README's Commands table: {sorted(set(verbs) - named)}"

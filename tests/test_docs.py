"""Every document the project cites is in the repository: the links of its Markdown files, and the paths of
documents and committed results named in code, scripts and documents."""

import pathlib
import re
import subprocess

import pytest
from helpers import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CITED_PATH = re.compile(r"(?<![\w./-])((?:docs|benchmarks/results|tests/data)/[\w./-]*\w\.(?:md|json|png))")
TEXT_SUFFIXES = {".md", ".py", ".sh", ".cpp", ".h", ".cu", ".cuh", ".toml", ".yaml", ".txt"}


def tracked_text_files() -> list[pathlib.Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in names.splitlines()]
    return [path for path in files if path.suffix in TEXT_SUFFIXES and path.is_file()]


def test_markdown_links_resolve():
    missing = []
    for path in tracked_text_files():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)}: {target}")
    assert not missing, "links to files that are not in the repository:\n" + "\n".join(missing)


def test_cited_documents_and_results_exist():
    missing = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITED_PATH.finditer(text):
            written_by_the_command = text[: match.start()].endswith("--output ")  # a usage line's output file
            if not written_by_the_command and not (ROOT / match.group(1)).exists():
                missing.append(f"{path.relative_to(ROOT)}: {match.group(1)}")
    assert not missing, "cited files that are not in the repository:\n" + "\n".join(missing)

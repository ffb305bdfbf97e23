"""The repository stands on its own: what its text points at exists in it.

- Every citation ``allen-warehouse.md §n.m`` / ``allen-nwb.md §n`` / ``conventions.md §n`` /
  ``architecture.md §n`` names a section heading of that file in ``docs/``, and no citation
  points at notes outside the repository.
- Every relative Markdown link resolves to a file, and its ``#anchor`` to one of its headings
  (GitHub's heading ids).
- Every rule runs in a conda environment file that exists (relative to the rule file, as
  Snakemake resolves it; ``snakemake --lint`` does not check it) and pins what constraints.txt
  pins.
- LICENSE and CITATION.cff say what pyproject.toml says.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".smk", ".sh", ".toml", ".cff", ".txt"}
SKIP_DIRS = {".git", ".snakemake", "resources", "results", "logs", "__pycache__", "node_modules"}
# Old-style citations (W§ = allen-warehouse.md, N§ = allen-nwb.md) are rewritten by
# docs/citations.sed in files other branches were editing; once the rewrite is applied and the sed
# script deleted, none may remain anywhere.
PENDING_REWRITE = (
    {
        "src/ecephys_pipeline/download.py",
        "src/ecephys_pipeline/extract.py",
        "docs/CITATIONS-TODO.md",  # describes the rewrite; deleted with the sed script
    }
    if (DOCS / "citations.sed").exists()
    else set()
)

CITED = ("allen-warehouse", "allen-nwb", "conventions", "architecture", "dandi")
DOC_NAME = re.compile(rf"({'|'.join(CITED)})(?:\.md)?`*")
SECTION = re.compile(r"(?<![\w§])([WN])?§(\d+(?:\.\d+)*)")
# What may stand between a document's name and a section number that belongs to it:
# "allen-warehouse.md §1.6, §3.2", "allen-nwb.md §0/§9", "§2 / §5", a comment's line break.
LIST_GAP = re.compile(r"[\s,/#*`§\d.]*")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
MD_LINK = re.compile(r"\]\((?!https?://|mailto:)([^)\s#]*)(#[^)\s]*)?\)")


def text_files() -> list[Path]:
    """The repository's text files, without this one (its examples are not citations)."""
    out = []
    for root, dirs, files in os.walk(REPO):  # does not follow workflow/scripts' package symlink
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv")]
        for name in files:
            path = Path(root) / name
            if path == Path(__file__).resolve():
                continue
            if path.suffix in TEXT_SUFFIXES or name in {"Snakefile", "Makefile"}:
                out.append(path)
    return sorted(out)


def headings(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [m.group(2) for m in HEADING.finditer(text)]


def section_numbers(path: Path) -> set[str]:
    """``{"1", "1.4", ...}`` from headings such as ``## 1. The RMA API`` or ``### 1.4 Query``."""
    found = set()
    for h in headings(path):
        m = re.match(r"(\d+(?:\.\d+)*)\.?\s", h)
        if m:
            found.add(m.group(1))
    return found


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def citations(path: Path) -> list[tuple[int, str, str]]:
    """``(line, document, section)`` for every ``§`` number in ``path``. A number belongs to the
    nearest document name before it when only a list of section numbers stands between them;
    inside one of the cited documents, a bare ``§n`` is a reference to the document itself."""
    text = path.read_text()
    own = path.stem if path.parent == DOCS else None
    out = []
    for m in SECTION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        legacy, number = m.group(1), m.group(2)
        if legacy:
            out.append((line, {"W": "allen-warehouse", "N": "allen-nwb"}[legacy] + "§", number))
            continue
        before = text[max(0, m.start() - 300) : m.start()]
        doc = None
        for d in DOC_NAME.finditer(before):
            gap = before[d.end() :].replace(" and ", " ")
            if LIST_GAP.fullmatch(gap):
                doc = d.group(1)
                break
        out.append((line, doc or own or "?", number))
    return out


def test_every_citation_names_an_existing_section():
    sections = {name: section_numbers(DOCS / f"{name}.md") for name in CITED}
    bad = []
    for path in text_files():
        rel = path.relative_to(REPO).as_posix()
        for line, doc, number in citations(path):
            where = f"{rel}:{line}: §{number}"
            if doc.endswith("§"):  # old style
                if rel not in PENDING_REWRITE:
                    bad.append(f"{where}: old-style citation (W§/N§): name the file in docs/")
                doc = doc[:-1]
            if doc == "?":
                bad.append(f"{where}: which document? Write e.g. 'allen-nwb.md §{number}'")
            elif doc in sections and number not in sections[doc]:
                bad.append(f"{where}: docs/{doc}.md has no section {number}")
    assert not bad, "\n".join(bad)


def test_no_reference_leaves_the_repository():
    bad = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in text_files()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"shared/docs|peers-and-conventions", line)
    ]
    assert not bad, "\n".join(bad)


def test_markdown_links_resolve():
    bad = []
    for path in text_files():
        if path.suffix != ".md":
            continue
        for m in MD_LINK.finditer(path.read_text()):
            target_text, anchor = m.group(1), m.group(2)
            target = (path.parent / target_text).resolve() if target_text else path
            where = f"{path.relative_to(REPO)}: ({target_text}{anchor or ''})"
            if not target.exists():
                bad.append(f"{where}: no such file")
            elif anchor and target.suffix == ".md":
                if anchor[1:] not in {github_anchor(h) for h in headings(target)}:
                    bad.append(f"{where}: no heading with that id in {target.name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see allen-warehouse.md §1.6, §3.2 and allen-nwb.md §0/§9.", [
            "allen-warehouse 1.6", "allen-warehouse 3.2", "allen-nwb 0", "allen-nwb 9"]),
        ("(``allen-warehouse.md`` §2 / §5 and allen-nwb.md §7)", [
            "allen-warehouse 2", "allen-warehouse 5", "allen-nwb 7"]),
        ("listed in allen-warehouse.md\n# §5). Also docs/architecture.md §1", [
            "allen-warehouse 5", "architecture 1"]),
        ("as W§2.1 says", ["allen-warehouse§ 2.1"]),
        ("allen-nwb.md says so in §3", ["? 3"]),
    ],
)  # fmt: skip
def test_citations_are_attributed_to_the_right_document(tmp_path, text, expected):
    path = tmp_path / "x.py"
    path.write_text(text)
    assert [f"{doc} {number}" for _, doc, number in citations(path)] == expected


def test_github_anchor():
    assert github_anchor("3.1 manifest.json and the cache layout") == (
        "31-manifestjson-and-the-cache-layout"
    )
    assert github_anchor("4. Gen-1 session file: differences") == (
        "4-gen-1-session-file-differences"
    )


# ------------------------------------------------------------------------------ environments


def rule_conda_envs() -> list[tuple[Path, str, Path]]:
    """``(rule file, rule name, environment path)`` for every rule and checkpoint in
    workflow/rules; a rule without a ``conda:`` directive gets ``Path()``."""
    out = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", smk.read_text(), flags=re.MULTILINE)
        for block in blocks:
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if not head:
                continue
            conda = re.search(r"^    conda:\s*\n\s+\"([^\"]+)\"", block, re.MULTILINE)
            env = (smk.parent / conda.group(1)).resolve() if conda else Path()
            out.append((smk, head.group(1), env))
    return out


def test_every_rule_has_an_existing_conda_environment():
    envs = rule_conda_envs()
    assert len(envs) >= 5
    for smk, rule, env in envs:
        assert env != Path(), f"{smk.name}: rule {rule} has no conda: directive"
        assert env.is_file(), f"{smk.name}: rule {rule}: {env} does not exist"
        assert env.parent == REPO / "workflow" / "envs", f"{rule}: {env} is not in workflow/envs/"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_conda_environments_pin_the_constraints_versions():
    constraints = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            constraints[normalise(name)] = version.strip()
    for env in sorted({env for _, _, env in rule_conda_envs()}):
        spec = yaml.safe_load(env.read_text())
        assert "nodefaults" in spec["channels"] and "conda-forge" in spec["channels"]
        for dep in spec["dependencies"]:
            name, _, version = (part.strip() for part in dep.partition("="))
            assert version, f"{env.name}: {name} is not pinned"
            if name == "python":
                continue
            assert constraints.get(normalise(name)) == version.lstrip("="), (
                f"{env.name}: {name} ={version}, constraints.txt has "
                f"{constraints.get(normalise(name))}"
            )


# ------------------------------------------------------------------------ licence and citation


def test_license_and_citation_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    licence = (REPO / "LICENSE").read_text()
    assert project["license"]["text"] == "MIT"
    assert licence.startswith("MIT License\n")
    assert "Copyright (c) 2026 the ecephys-pipeline authors" in licence
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["version"] == project["version"]
    assert cff["license"] == "MIT"
    assert cff["type"] == "software"
    assert [a["name"] for a in cff["authors"]] == ["the ecephys-pipeline authors"]
    paper = cff["references"][0]
    assert paper["doi"] == "10.1038/s41586-020-03171-x"

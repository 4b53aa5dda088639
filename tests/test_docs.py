"""The README is a front door and docs/ holds the reference: the README stays short, its quick start is the
two commands CI and a newcomer run, every CLI command appears in it, and no link in README.md or docs/*.md
points to a file or heading that does not exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: the main job of the quick start
EXPORT_COMMAND = "deploykit export cvt --fp16"
MAX_README_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
#: an inline link or image: [text](target) or [text](target "title")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code spans blanked (links in code are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line))
    return lines


def code_blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: the rendered text (code spans and links reduced to their text), lower case,
    every character that is not a letter, digit, underscore, hyphen or space dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2, ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(path: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(path.read_text(encoding="utf-8")) for m in LINK.finditer(line)]


def ci_test_command() -> str:
    """The last pytest command that .ci/run runs."""
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if "pytest" in line and not line.lstrip().startswith("#")
    ]
    assert commands, ".ci/run runs no pytest command"
    return commands[-1]


def quick_start_block() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)
    assert len(section) == 2, "README.md has no '## Quick start' section"
    blocks = code_blocks(section[1])
    assert blocks, "the quick start has no code block"
    return [line.strip() for line in blocks[0] if line.strip()]


def test_slugs_follow_github():
    assert github_slug("When parity fails: where") == "when-parity-fails-where"
    assert github_slug("manifest.json and report.html") == "manifestjson-and-reporthtml"
    assert github_slug("The device runtime, without torch") == "the-device-runtime-without-torch"
    assert github_slug("`deploykit serve`: a real server") == "deploykit-serve-a-real-server"
    assert github_slug("TensorRT engines: 10.3+ and 11.x") == "tensorrt-engines-103-and-11x"


def test_link_parser_skips_code():
    page = 'see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n[d](d.md#x "t")'
    found = [m.group(1) for line in prose_lines(page) for m in LINK.finditer(line)]
    assert found == ["a.md", "d.md#x"]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines (at most {MAX_README_LINES}); move reference to docs/"
    )


def test_docs_exist():
    assert DOCS, "docs/*.md is missing"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(
                f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
            )
            continue
        if anchor:
            if dest.suffix != ".md" or dest.is_dir():
                broken.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_every_doc_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README) if t.partition("#")[0]}
    missing = [str(d.relative_to(ROOT)) for d in DOCS if d.resolve() not in linked]
    assert not missing, f"docs not linked from README.md: {missing}"


def test_quick_start_is_the_two_commands_ci_and_a_newcomer_run():
    block = quick_start_block()
    assert len(block) == 2, f"the quick start must be exactly two commands, got {block}"
    install_and_export, tests = block
    assert EXPORT_COMMAND in install_and_export, install_and_export
    assert tests == ci_test_command(), f"README runs {tests!r}, .ci/run runs {ci_test_command()!r}"
    assert ci_test_command() in README.read_text(encoding="utf-8")


def test_ci_installs_what_the_quick_start_names():
    # the quick start says CI adds the [serve] and [plot] extras; .ci/run must really install them
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    installs = [shlex.split(line) for line in ci.splitlines() if "pip install" in line and "-e" in line]
    extras = {e for cmd in installs for arg in cmd if arg.startswith(".[") for e in arg[2:-1].split(",")}
    assert {"export", "test", "peers", "serve", "plot"} <= extras, extras
    # ... and at least what the quick start installs (the base install is the torch-free device runtime)
    quick = {
        e for arg in shlex.split(quick_start_block()[0]) if arg.startswith(".[") for e in arg[2:-1].split(",")
    }
    assert {"export", "test"} <= quick <= extras, (quick, extras)


def test_one_torch_version_in_the_readme_ci_and_pyproject():
    """The quick start and .ci/run install the same torch first, the one pyproject.toml's comment names."""
    pinned = re.compile(r"torch==(\d+\.\d+\.\d+)")
    readme = set(pinned.findall(quick_start_block()[0]))
    ci = set(pinned.findall((ROOT / ".ci" / "run").read_text(encoding="utf-8")))
    named = set(re.findall(r"torch: (\d+\.\d+\.\d+)", (ROOT / "pyproject.toml").read_text(encoding="utf-8")))
    assert len(readme) == 1 and readme == ci == named, (readme, ci, named)


def test_every_cli_command_is_in_the_readme():
    from deploykit.cli import cli

    text = README.read_text(encoding="utf-8")
    missing = [
        name for name in sorted(cli.commands) if not re.search(rf"\bdeploykit {re.escape(name)}\b", text)
    ]
    assert not missing, f"commands not shown in README.md: {missing}"

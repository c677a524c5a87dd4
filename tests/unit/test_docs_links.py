"""The documentation's links: every relative link resolves, nothing links outside the repository, and the README
stays a page a newcomer reads (at most 15,000 characters, linking every page of docs/).

Checked: README.md and every Markdown file under docs/, slurm/ and tune/, plus every other tracked ``*.md``.
A link is ``[text](target)`` (images too) or a reference definition ``[label]: target``, outside code blocks
and code spans. A relative target must name an existing file or folder inside the repository; ``#anchor``
(alone, or after a Markdown file) must match a heading of that file by GitHub's slug rules. No link target and
no bare URL anywhere (code included) may start with a URL scheme such as ``http://`` or ``https://``.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
README_LIMIT = 15_000
#: The folders whose Markdown is the documentation (besides README.md and any other tracked ``*.md``).
DOC_DIRS = ("docs", "slurm", "tune")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(<[^>]*>|[^\s)]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
BARE_URL = re.compile(r"(?i)\b(?:https?|ftp)://\S*")
URL_TAIL = ").,;:>'\"`"  # punctuation after a URL in prose, not part of it


def markdown_files() -> list[Path]:
    """README.md, the Markdown under DOC_DIRS (tracked or not yet) and every other tracked ``*.md``."""
    found = {ROOT / "README.md"}
    for folder in DOC_DIRS:
        found.update((ROOT / folder).rglob("*.md"))
    try:
        tracked = subprocess.run(["git", "ls-files", "-z", "--", "*.md"], cwd=ROOT, capture_output=True,
                                 text=True, check=True, timeout=30).stdout.split("\0")
        found.update(ROOT / name for name in tracked if name)
    except (OSError, subprocess.SubprocessError):  # not a git checkout: fall back to the folders above
        pass
    return sorted(path for path in found if path.is_file())


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def prose_lines(text: str, blank_code_spans: bool = True) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, by default with code spans blanked out."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            continue
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) \
                    and not line.strip()[len(opened.group(1)):].strip():
                fence = None
            continue
        lines.append((number, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line) if blank_code_spans else line))
    return lines


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link and reference definition outside code."""
    found = []
    for number, line in prose_lines(text):
        for match in INLINE_LINK.finditer(line):
            found.append((number, match.group(2).strip("<>")))
        definition = REFERENCE_DEF.match(line)
        if definition:
            found.append((number, definition.group(1).strip("<>")))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)                                          # HTML tags
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor GitHub gives the headings of a Markdown file (repeats get -1, -2, ...), and HTML anchors."""
    text = path.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    found = set(HTML_ANCHOR.findall(text))
    for _, line in prose_lines(text, blank_code_spans=False):  # a code span's text counts in a heading
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def link_problem(source: Path, target: str) -> str | None:
    """Why a link target of ``source`` is broken, or None. External targets are another test's business."""
    if SCHEME.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part)
    resolved = source if not path_part else Path(os.path.normpath(source.parent / path_part))
    if resolved != ROOT and ROOT not in resolved.parents:
        return f"{target!r} leads outside the repository"
    if not resolved.exists():
        return f"{target!r}: {rel(resolved) if ROOT in resolved.parents else resolved} does not exist"
    if anchor and resolved.suffix.lower() == ".md" and resolved.is_file():
        if unquote(anchor).lower() not in anchors(resolved):
            return f"{target!r}: no heading of {rel(resolved)} has the anchor #{anchor}"
    return None


def external(text: str) -> list[tuple[int, str]]:
    """(line number, what) for every link target with a URL scheme and every bare URL, code included."""
    found = [(number, f"link to {target}") for number, target in links(text)
             if SCHEME.match(target) and not BARE_URL.match(target)]  # mailto:, //host ...; URLs come next
    for number, line in enumerate(text.splitlines(), 1):
        found.extend((number, "URL " + url.rstrip(URL_TAIL)) for url in BARE_URL.findall(line))
    return sorted(set(found))


def report(problems: list[str], what: str) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(problems)


def test_every_relative_link_resolves():
    problems = []
    for path in markdown_files():
        for number, target in links(path.read_text(encoding="utf-8")):
            problem = link_problem(path, target)
            if problem:
                problems.append(f"{rel(path)}:{number}: {problem}")
    assert not problems, report(problems, "broken links")


def test_nothing_links_outside_the_repository():
    problems = [f"{rel(path)}:{number}: {what}" for path in markdown_files()
                for number, what in external(path.read_text(encoding="utf-8"))]
    assert not problems, report(problems, "links out of the repository (name the source in plain text instead)")


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, (f"README.md is {size:,} bytes, over {README_LIMIT:,}: move detail to a page of "
                                  "docs/ and link it")


def test_every_docs_page_has_a_title_and_is_linked_from_the_readme():
    readme_targets = {Path(os.path.normpath(ROOT / unquote(target.partition("#")[0])))
                      for _, target in links((ROOT / "README.md").read_text(encoding="utf-8"))
                      if not SCHEME.match(target)}
    problems = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        first = page.read_text(encoding="utf-8").splitlines()[:1]
        if not first or not first[0].startswith("# "):
            problems.append(f"{rel(page)}:1: does not start with a '# ' title")
        if page not in readme_targets:
            problems.append(f"README.md: does not link {rel(page)} (add it to the Documentation list)")
    assert not problems, report(problems, "problems")


def test_the_checker_itself(tmp_path):
    assert slug("FID and KID (`distst/metrics/`)") == "fid-and-kid-diststmetrics"
    assert slug("Channel pruning: results, measured") == "channel-pruning-results-measured"
    assert slug("int8 (post-training)") == "int8-post-training"
    text = ("See [a](docs/x.md#y), ![img](pic.png 'title') and [ref]: <other.md>.\n"
            "`[not a link](nowhere.md)`\n```\n[nor this](nowhere.md) https://in.code\n```\n"
            "[web](https://example.org) and a bare http://example.org/x. [mail](mailto:a@b.c)\n")
    assert links(text) == [(1, "docs/x.md#y"), (1, "pic.png"), (6, "https://example.org"), (6, "mailto:a@b.c")]
    assert external(text) == [(4, "URL https://in.code"), (6, "URL http://example.org/x"),
                              (6, "URL https://example.org"), (6, "link to mailto:a@b.c")]
    assert link_problem(ROOT / "README.md", "docs/none.md") is not None
    assert link_problem(ROOT / "README.md", "../outside.md") is not None
    assert link_problem(ROOT / "README.md", "#no-such-heading-here") is not None
    assert link_problem(ROOT / "README.md", "README.md") is None

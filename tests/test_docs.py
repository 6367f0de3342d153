"""README and docs/ speak to users: a short front page, no tracker talk, commands that parse and
links that resolve.

Every ``bayescale ...`` command line in a fenced code block or an inline code span (also as
``python -m bayescale`` or under ``torchrun ... -m bayescale``) is checked against the real
parser: its subcommand must exist and each ``--option`` must be one of that subcommand's.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bayescale.cli import build_parser, subparsers

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
TRACKER = re.compile(r"\(issues?\s*#?\d+|\bissues?\s*#\s*\d+|\bissue\s+\d+\b|spec\s*§|"
                     r"\bspec\s+\d+\.\d+|foundation issue|\btracker\b", re.I)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`((?:python -m |torchrun [^`]*?-m )?bayescale [^`]+)`(?!`)")
ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def command_lines(text: str) -> list[str]:
    """The shell lines of ``text`` (fenced blocks, continuations joined, and inline spans)."""
    lines: list[str] = []
    for block in FENCE.findall(text):
        lines += [ln.strip() for ln in block.replace("\\\n", " ").splitlines()]
    lines += INLINE.findall(text)
    return lines


def bayescale_args(line: str) -> list[str] | None:
    """The arguments after ``bayescale`` in one shell line, or None if it runs no bayescale."""
    line = line.removeprefix("$ ").strip()
    if "bayescale" not in line or line.startswith(("#", ">>>", "...")):
        return None
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        tokens = list(lex)
    except ValueError:  # an unbalanced quote: not a shell line
        return None
    for i, tok in enumerate(tokens):
        head = [t for t in tokens[:i] if not ENV_ASSIGN.match(t)]
        if tok == "bayescale" and (not head or (i and tokens[i - 1] == "-m")):
            rest = tokens[i + 1:]
            end = next((j for j, t in enumerate(rest) if set(t) <= set("();<>|&")), len(rest))
            return rest[:end]
    return None


def check_args(args: list[str]) -> list[str]:
    """Problems of one ``bayescale`` argument list (empty when it parses)."""
    parser = build_parser()
    subs = subparsers(parser)
    if not args:
        return []
    if args[0].startswith("-"):
        return [] if args[0] in parser._option_string_actions else [f"no option {args[0]}"]
    if re.fullmatch(r"[A-Z_]+|<[^>]*>", args[0]):  # a placeholder such as CMD
        return []
    if args[0] not in subs:
        return [f"no subcommand {args[0]!r}"]
    known = subs[args[0]]._option_string_actions
    return [f"bayescale {args[0]} has no option {a.split('=')[0]}" for a in args[1:]
            if a.startswith("--") and a.split("=")[0] not in known]


def test_the_checker_catches_unknown_subcommands_and_options():
    text = ("```bash\nbayescale train mnist_bnn_fc_flip --resum auto\n"
            "torchrun --nproc-per-node=2 -m bayescale prune RUN \\\n  --sweep --bogus 1\n```\n"
            "and `bayescale evalute RUN` or `bayescale evaluate RUN --samples 10`.\n")
    found = [bayescale_args(ln) for ln in command_lines(text)]
    problems = [p for a in found if a is not None for p in check_args(a)]
    assert problems == ["bayescale train has no option --resum",
                        "bayescale prune has no option --bogus", "no subcommand 'evalute'"]
    assert bayescale_args("pip install -e . && pytest") is None
    assert bayescale_args("OMP_NUM_THREADS=1 bayescale --version") == ["--version"]
    assert bayescale_args("python -m bayescale report RUN > log.txt") == ["report", "RUN"]


def test_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 15_000, len(readme.encode())
    heads = [h.lower() for h in re.findall(r"^## (.+)$", readme, re.M)]
    order = ["set", "tour", "cli", "result", "next"]
    at = [next(i for i, h in enumerate(heads) if key in h) for key in order]
    assert at == sorted(at), heads


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_pages_say_nothing_of_the_tracker_or_the_spec(page):
    hits = [m.group(0) for m in TRACKER.finditer(page.read_text())]
    assert not hits, hits


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_command_line_parses(page):
    lines = command_lines(page.read_text())
    problems = [f"{ln!r}: {p}" for ln in lines if (a := bayescale_args(ln)) is not None
                for p in check_args(a)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_local_links_resolve(page):
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    missing = [link for link in links if not re.match(r"[a-z]+:|#", link)
               and not (page.parent / link.split("#")[0]).exists()]
    assert not missing, missing


def test_the_docs_cover_each_topic_and_the_readme_links_them():
    readme = (REPO / "README.md").read_text()
    for page in ["training", "uncertainty", "mc-cost", "pruning", "kefan", "scaling", "peers",
                 "reliability"]:
        assert (REPO / "docs" / f"{page}.md").is_file(), page
        assert f"docs/{page}.md" in readme, page

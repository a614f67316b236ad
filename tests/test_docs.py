"""The README and docs/ say what runs: every Python block executes (a page's blocks in order, in
one namespace), every shell command names a script of the project and only options that script
takes, every relative link resolves, and the README's tour of contgpt.py points at the lines it
names."""

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "tutorials" / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
KINDS = {"python": "runs", "bash": "commands checked", "text": "output shown, not run"}


def blocks(page, kind: str) -> list[str]:
    return [code for lang, code in FENCE.findall(page.read_text()) if lang == kind]


def pages_with(kind: str):
    return [pytest.param(page, id=page.name) for page in PAGES if blocks(page, kind)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_says_what_it_is(page):
    kinds = [lang for lang, _ in FENCE.findall(page.read_text())]
    assert all(k in KINDS for k in kinds), f"{page.name}: a code block of kind {set(kinds) - set(KINDS)}; use one of {KINDS}"


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with("python"))
def test_python_blocks_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    namespace = {"__name__": "__docs__"}
    for i, code in enumerate(blocks(page, "python"), start=1):
        exec(compile(code, f"{page.name}, python block {i}", "exec"), namespace)  # our own docs


def shell_commands(page) -> list[str]:
    """Each command of a page's bash blocks: continuation lines joined, comments dropped, && split."""
    commands = []
    for code in blocks(page, "bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#\s.*$", "", line).strip()
            commands += [c.strip() for c in line.split("&&") if c.strip()]
    return commands


def invoked_scripts(command: str) -> list[tuple[str, list[str]]]:
    """(script, its --options) for every project script a command runs, also inside bash -c '...'."""
    found = []
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word == "-c" and i + 1 < len(words):
            found += invoked_scripts(words[i + 1])
        elif word.endswith(".py"):
            tail = words[i + 1 :]
            found.append((word, [w.split("=")[0] for w in tail if w.startswith("--")]))
            break
    return found


HELP: dict[str, subprocess.CompletedProcess] = {}


def help_text(script: str) -> str:
    """script --help, run for every script the pages name at the first call, two at a time (each
    starts Python and imports torch: seconds)."""
    if not HELP:
        scripts = sorted({s for page in PAGES for c in shell_commands(page) for s, _ in invoked_scripts(c) if (ROOT / s).is_file()})
        with ThreadPoolExecutor(2) as pool:
            HELP.update(zip(scripts, pool.map(run_help, scripts)))
    if script not in HELP:
        HELP[script] = run_help(script)
    run = HELP[script]
    assert run.returncode == 0, f"{script} --help failed: {run.stderr[-2000:]}"
    return run.stdout


def run_help(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("page", pages_with("bash"))
def test_shell_commands_name_real_scripts_and_options(page):
    for command in shell_commands(page):
        words = shlex.split(command)
        for flag, path in zip(words, words[1:]):
            if flag == "-r":  # pip install -r FILE
                assert (ROOT / path).is_file(), f"{page.name}: {command!r} names {path}, which is not in the project"
        for script, options in invoked_scripts(command):
            assert (ROOT / script).is_file(), f"{page.name}: {command!r} runs {script}, which is not in the project"
            text = help_text(script)
            unknown = [o for o in options if not re.search(rf"{re.escape(o)}\b", text)]
            assert not unknown, f"{page.name}: {command!r} passes {unknown}, which {script} --help does not list"


def test_there_are_commands_to_check():
    scripts = {s for page in PAGES for c in shell_commands(page) for s, _ in invoked_scripts(c)}
    assert {"demos/apples.py", "demos/reproduce.py", "demos/explore.py", "bench.py"} <= scripts


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for match in LINK.finditer(page.read_text()):
        target = match.group(1) or match.group(2)
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_tour_points_at_the_lines_it_names():
    source = (ROOT / "contgpt.py").read_text().splitlines()
    tour = re.findall(r"\[`([\w.]+)`\]\(contgpt\.py#L(\d+)\)", (ROOT / "README.md").read_text())
    assert len(tour) >= 8
    for name, line in tour:
        assert int(line) == definition_line(source, name), f"README: {name} is at contgpt.py#L{definition_line(source, name)}, not #L{line}"


def definition_line(source: list[str], name: str) -> int | None:
    """The line defining a top-level name, or Class.method."""
    *owner, leaf = name.split(".")
    pattern = rf"\s+def {leaf}\b" if owner else rf"(def|class) {leaf}\b|{leaf} = "  # a method, or top level
    cls = None
    for number, text in enumerate(source, start=1):
        cls = text.split()[1].split("(")[0].rstrip(":") if text.startswith("class ") else cls
        if re.match(pattern, text) and (not owner or cls == owner[0]):
            return number
    return None

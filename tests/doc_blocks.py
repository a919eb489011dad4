"""The code blocks and command lines of README.md and the guides in docs/, as the tests see them.

Commands are read the way a shell would run them: backslash continuations joined,
comments dropped, `NAME="..."` assignments expanded where `$NAME` is used, `a && b` split
into two commands. Optional flags written `[--flag]` in the text are included, so they are
checked too.
"""

from __future__ import annotations

import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GUIDES = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *GUIDES]

_OPTIONAL = re.compile(r"(?<=\s)\[(--[^\]\s]*)\]")  # " [--spot]", " [--format=npz]"
_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def code_blocks(page: pathlib.Path, language: str) -> list[str]:
    """The fenced blocks of `language` in `page`, in order."""
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The commands of one bash block, each as the argv the shell would run."""
    variables: dict[str, str] = {}
    result = []
    for line in block.replace("\\\n", " ").splitlines():
        line = _OPTIONAL.sub(r"\1", line)
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) == 1 and (match := _ASSIGNMENT.match(words[0])):
            variables[match[1]] = match[2]
            continue
        expanded = []
        for word in words:
            if word.startswith("$") and word[1:] in variables:
                expanded += shlex.split(variables[word[1:]])
            else:
                expanded.append(word)
        command: list[str] = []
        for word in expanded + ["&&"]:
            if word == "&&":
                result.append(command)
                command = []
            else:
                command.append(word)
    return result


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every command of every bash block of the README and the guides, with its page."""
    return [
        (page.relative_to(REPO).as_posix(), argv)
        for page in PAGES
        for block in code_blocks(page, "bash")
        for argv in commands(block)
    ]

"""A small Dockerfile reader: instructions with continuation lines joined, comments dropped."""

from __future__ import annotations

import fnmatch
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOCKERFILES = {
    "cpu": ROOT / "deploy" / "docker" / "Dockerfile.cpu",
    "gpu": ROOT / "deploy" / "docker" / "Dockerfile.gpu",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, ...
    arguments: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of ENTRYPOINT/CMD/RUN in exec form; fails for the shell form."""
        parsed = json.loads(self.arguments)
        assert isinstance(parsed, list), f"line {self.line}: not exec form: {self.arguments}"
        return [str(item) for item in parsed]

    def words(self) -> list[str]:
        return shlex.split(self.arguments)


def read(path: Path) -> list[Instruction]:
    instructions = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, arguments = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, f"{path}: the last instruction ends in a continuation"
    return instructions


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: str
    from_stage: str | None
    line: int


def copies(instructions: list[Instruction]) -> list[Copy]:
    found = []
    for instruction in instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = instruction.words()
        flags = {w.split("=", 1)[0]: w.partition("=")[2] for w in words if w.startswith("--")}
        paths = [w for w in words if not w.startswith("--")]
        found.append(Copy(paths[:-1], paths[-1], flags.get("--from"), instruction.line))
    return found


def stages(instructions: list[Instruction]) -> dict[str, str]:
    """Stage name -> the image or stage it starts from."""
    named = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.words()
            if len(words) == 3 and words[1].upper() == "AS":
                named[words[2]] = words[0]
    return named


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (the ones FROM lines may use)."""
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            defaults[name] = default
    return defaults


def environment(instructions: list[Instruction], stage: str) -> dict[str, str]:
    """ENV of one stage (KEY=VALUE form)."""
    values: dict[str, str] = {}
    current = None
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.words()
            current = words[2] if len(words) == 3 else None
        elif instruction.keyword == "ENV" and current == stage:
            for word in instruction.words():
                key, _, value = word.partition("=")
                values[key] = value
    return values


def last(instructions: list[Instruction], keyword: str) -> Instruction:
    matching = [i for i in instructions if i.keyword == keyword]
    assert matching, f"no {keyword}"
    return matching[-1]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (relative, '/'-separated) out of the build context:
    the last matching pattern wins, '!' re-includes, a pattern matching a folder covers what is
    inside it, '**/' matches at any depth. Enough for the patterns .dockerignore uses."""
    parts = path.split("/")
    leading = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    spans = [
        "/".join(parts[start:end])
        for start in range(len(parts))
        for end in range(start + 1, len(parts) + 1)
    ]
    result = False
    for pattern in patterns:
        body = pattern.removeprefix("!").rstrip("/")
        if body.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(span, body.removeprefix("**/")) for span in spans)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, body) for prefix in leading)
        if hit:
            result = not pattern.startswith("!")
    return result


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]

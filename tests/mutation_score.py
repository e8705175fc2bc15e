"""The score of a `make mutate` run: run in its staging folder after `mutmut run`, it reads every
mutant's status from `mutmut results --all true`, keeps those matching the patterns given (those
the run checked), and prints killed / checked per module, the survivors, and the total.

A mutant is detected when a test failed on it (killed) or it never finished (timeout: a mutant
that loops forever is caught too); survivors and mutants no selected test reaches are not.
Exits 1 when the total is under --min percent."""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
from collections import Counter, defaultdict

DETECTED = {"killed", "timeout"}


def statuses() -> dict[str, str]:
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in listing.splitlines():
        name, colon, status = line.strip().rpartition(": ")
        if colon and "__mutmut_" in name:
            found[name] = status
    return found


def module_of(mutant: str) -> str:
    """`lamina.server.prompt.xǁPromptEncoderǁencode__mutmut_3` -> `lamina.server.prompt`."""
    parts = mutant.split(".")
    while parts and not parts[-1].startswith(("x_", "xǁ")):
        parts.pop()
    return ".".join(parts[:-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="+", help="mutant name patterns (fnmatch), as run")
    parser.add_argument("--min", type=float, default=90.0, help="lowest passing score, percent")
    args = parser.parse_args(argv)
    chosen = {
        name: status
        for name, status in statuses().items()
        if any(fnmatch.fnmatch(name, pattern) for pattern in args.patterns)
    }
    unchecked = sorted(name for name, status in chosen.items() if status == "not checked")
    if not chosen or unchecked:
        print(f"{len(unchecked)} of {len(chosen)} mutants not checked: run `mutmut run` first")
        return 1
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in chosen.items():
        by_module[module_of(name)][status] += 1
    print(f"{'module':40} {'mutants':>8} {'detected':>9} {'score':>7}  not detected")
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        detected = sum(counts[s] for s in DETECTED)
        missed = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in DETECTED)
        print(f"{module:40} {total:8} {detected:9} {100 * detected / total:6.1f}%  {missed}")
    total = len(chosen)
    detected = sum(status in DETECTED for status in chosen.values())
    score = 100 * detected / total
    print(f"{'total':40} {total:8} {detected:9} {score:6.1f}%")
    survivors = sorted(name for name, status in chosen.items() if status not in DETECTED)
    if survivors:
        print("\nnot detected (`mutmut show NAME` in the staging folder shows each):")
        for name in survivors:
            print(f"  {name}: {chosen[name]}")
    if score < args.min:
        print(f"\nmutation score {score:.1f}% is under {args.min:g}%")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

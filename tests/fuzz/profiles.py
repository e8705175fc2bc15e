"""How long the fuzz runs: hypothesis settings profiles, chosen by environment variables.

- `LAMINA_FUZZ_PROFILE`: `ci` (default; what `make test` runs: a fixed, derandomized set of
  examples, no example database, the whole suite in well under a minute on two cores) or `long`
  (what `make fuzz` runs: random examples, a database under $LAMINA_HOME/fuzz so failures replay).
- `LAMINA_FUZZ_EXAMPLES`: examples per test (a test's `share` scales it), overriding the profile.
- `LAMINA_FUZZ_LOG`: a JSON-lines file; when set, a failed property is written there and the run
  goes on (to find every failure class in one long run) instead of stopping at the first.

The profiles are applied per test (`fuzz_settings`), never loaded globally, so other suites'
hypothesis tests (tests/gateway's schemathesis run) keep their own settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from lamina.server.config import default_home

_SLOW_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "lamina-fuzz-ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_CHECKS,
    # Shrinking a failure of a server round trip costs many calls: keep CI bounded.
    phases=[Phase.explicit, Phase.generate, Phase.shrink, Phase.explain],
)
settings.register_profile(
    "lamina-fuzz-long",
    max_examples=10_000,
    deadline=None,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(default_home() / "fuzz" / "examples")),
    print_blob=True,
    suppress_health_check=_SLOW_CHECKS,
)

PROFILE = os.environ.get("LAMINA_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"LAMINA_FUZZ_PROFILE={PROFILE!r}: expected ci or long")
_BASE = settings.get_profile(f"lamina-fuzz-{PROFILE}")
_EXAMPLES = int(os.environ.get("LAMINA_FUZZ_EXAMPLES", "0")) or _BASE.max_examples
KEEP_GOING_LOG = os.environ.get("LAMINA_FUZZ_LOG") or None


def fuzz_settings(share: float = 1.0) -> settings:
    """The selected profile with `share` x its examples per test (at least 10): costlier request
    spaces (a real inference per example) get fewer at CI size."""
    return settings(_BASE, max_examples=max(10, round(_EXAMPLES * share)))

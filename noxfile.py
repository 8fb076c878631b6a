"""Development sessions: `nox` runs lint, typecheck and tests, as CI does."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "examples", "bench_smoke"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite with branch coverage of aiotlink/ (at least 95%, enforced)."""
    session.install("-e", ".[test]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and likely bugs with ruff, and that the code is formatted."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package, and a usage file as users write it, with mypy --strict."""
    session.install("-e", ".[typecheck]")
    session.run("mypy", "--strict", "aiotlink")
    session.run("mypy", "--strict", "tests/typed_usage.py")


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every example in examples/ against the fake server, so that none can rot."""
    session.install("-e", ".[examples]")
    session.run("python", "examples/run_against_fake.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run every benchmark and write benchmarks/RESULTS.md (on purpose: about 25 minutes)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/report.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_smoke(session: nox.Session) -> None:
    """Run every benchmark with tiny counts, so that none can rot (RESULTS.md untouched)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/report.py", "--smoke")
    for path, count in (("decode", "100"), ("calls", "200"), ("waiters", "50"), ("download", "4")):
        session.run("python", "benchmarks/profile.py", path, "--count", count, silent=True)
    page_cache = ("--mib", "8", "--rounds", "1", "--pause", "0")
    session.run("python", "benchmarks/page_cache.py", *page_cache, silent=True)

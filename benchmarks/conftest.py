"""pytest-benchmark suite; not part of the default test run (``./dev bench-suite``)."""

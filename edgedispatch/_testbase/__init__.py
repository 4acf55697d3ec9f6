"""Helpers shipped for tests and benchmarks (asyncpg's ``_testbase`` idea)."""

"""Benchmarks behind ``edgedispatch bench``."""

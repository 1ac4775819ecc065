"""Benchmarks: speed (``bench.speed``) and the method's acceptance suites (``bench.acceptance``)."""

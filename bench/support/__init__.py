"""Harness shared by the tests and the benchmarks: real servers on loopback, images, metrics, a browser.

Not product code (the bento ships ``service/`` only) and not test code: ``tests`` and ``bench`` both import it,
and nothing here imports ``tests``.
"""

"""pytest fixtures for mailhost.testing (loaded through the ``pytest11`` entry point).

This module must always import cleanly: pytest loads it for every test run.
"""

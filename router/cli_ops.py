"""Operator commands over the admin API (DESIGN §8): ``providers``, ``drain``, …

Each command reads the service's address and key from ``SWITCHMAN_URL`` and
``SWITCHMAN_API_KEY`` and prints a table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator subcommands to the ``switchman`` parser."""

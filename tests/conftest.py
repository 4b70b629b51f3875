"""Shared fixtures: provider stand-ins, and the helpers that run a real gateway process."""

from tests.standins.fixtures import *  # noqa: F401,F403

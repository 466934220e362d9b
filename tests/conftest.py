"""Shared fixtures: the service tests' fixtures live in tests/service_fixtures.py."""

from __future__ import annotations

from tests.service_fixtures import *  # noqa: F403

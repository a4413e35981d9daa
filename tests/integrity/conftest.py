"""Fixtures of the integrity tests: the tiny installed model of the embed tests."""

from __future__ import annotations

from tests.fixtures.embed_workspace import tiny_model, tiny_model_builds  # noqa: F401

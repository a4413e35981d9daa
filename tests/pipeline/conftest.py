"""Fixtures of the pipeline area: a fetched workspace on the loopback tile server and tiny models."""

from __future__ import annotations

from tests.fixtures.embed_workspace import (fetched_workspace, other_tiny_model, tiny_model,  # noqa: F401
                                            tiny_model_builds)

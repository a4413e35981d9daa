"""Queries: plan (queries × metadata settings × outputs), stream (fuse once per setting, score all
queries per chunk), normalise, and write COGs and previews.

``make_plan`` + ``run_query`` are the pieces for library users with their own store; what
``soundmap query`` and ``soundmap map`` run (``query_workspace``, ``map_region``) is in
:mod:`soundmap.pipeline.query`.
"""

from __future__ import annotations

from .engine import QueryResult, encode_queries, run_query
from .plan import MetadataSetting, QueryOptions, QueryPlan, QuerySpec, make_plan

__all__ = ["MetadataSetting", "QueryOptions", "QueryPlan", "QueryResult", "QuerySpec", "encode_queries",
           "make_plan", "run_query"]

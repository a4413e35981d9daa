"""Queries: plan (queries × metadata settings × outputs), stream (fuse once per setting, score all
queries per chunk), normalise, and write COGs and previews.

``query_workspace`` and ``map_region`` are what ``soundmap query`` and ``soundmap map`` run;
``make_plan`` + ``run_query`` are the lower-level pieces for library users with their own store.
"""

from __future__ import annotations

from .engine import QueryResult, encode_queries, run_query
from .plan import MetadataSetting, QueryOptions, QueryPlan, QuerySpec, make_plan
from .workflow import choose_zoom, map_region, query_workspace

__all__ = ["MetadataSetting", "QueryOptions", "QueryPlan", "QueryResult", "QuerySpec", "choose_zoom",
           "encode_queries", "make_plan", "map_region", "query_workspace", "run_query"]

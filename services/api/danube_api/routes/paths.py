"""The URL layout: the API lives under `/api/v1`; the health checks at the root.

Each router carries the prefix itself rather than receiving it from `include_router`,
so that a route's own `path` is its full template, as the request log names it.
"""

API_PREFIX = "/api/v1"

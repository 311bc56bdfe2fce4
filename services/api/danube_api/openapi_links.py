"""The OpenAPI links of the document: from each operation that creates an object to the
operations that take it, so a client (and schemathesis's stateful phase) can follow the
API from a new team to its pipelines, jobs and secrets instead of guessing ids.

Two kinds of operation create, and both are derived from the document's paths:

- a producer (`PRODUCERS`) answers a new object whose id fills one path parameter (the
  id of `POST /api/v1/teams` is the `team_id` of `GET /api/v1/teams/{team_id}`): it links
  to every operation whose path has that parameter;
- an upsert (a `PUT` that can answer 201) names its object by its own path: it links to
  the other operations of that path and of the collection that holds it
  (`PUT .../secrets/{name}` to `DELETE` the same path and `GET .../secrets`).

Every path parameter the source's own request had is passed on (`$request.path.X`), and a
step is named by `position` 0, which every job has (a pipeline has at least one step).
Parameters no link can supply (the `user_id` of a membership made from a new team) are
left to the client.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

_PATH_PARAMETER: Final = re.compile(r"{([^}]+)}")
_METHODS: Final = frozenset({"get", "put", "post", "delete", "patch"})
# Steps are named by their position; a pipeline has at least one, so 0 always exists.
_CONSTANTS: Final[Mapping[str, int]] = {"position": 0}


@dataclass(frozen=True)
class Producer:
    """An operation that answers a new object: which answer, which path parameter its
    id fills, and where in the answer's body the id is (a JSON pointer)."""

    status: str
    parameter: str
    pointer: str = "/id"


PRODUCERS: Final[Mapping[str, Producer]] = {
    "create_team": Producer("201", "team_id"),
    "create_user": Producer("201", "user_id"),
    "create_pipeline": Producer("201", "pipeline_id"),
    "create_job": Producer("201", "job_id"),
    "claim": Producer("200", "job_id", "/job/id"),
    "create_token": Producer("201", "token_id"),
    "create_worker": Producer("201", "worker_id"),
}


@dataclass(frozen=True)
class _Operation:
    path: str
    method: str
    body: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.body.get("operationId", f"{self.method} {self.path}"))

    @property
    def parameters(self) -> list[str]:
        return _PATH_PARAMETER.findall(self.path)


def _operations(schema: Mapping[str, Any]) -> Iterator[_Operation]:
    for path, item in schema.get("paths", {}).items():
        for method, body in item.items():
            if method in _METHODS:
                yield _Operation(path, method, body)


def _is_at_or_above(target: str, source: str) -> bool:
    """`target` is `source`'s path or the collection that holds it."""
    return target in (source, source.rsplit("/", 1)[0])


def _links_from(source: _Operation, targets: list[_Operation]) -> tuple[str, dict[str, Any]]:
    """The answer status that carries `source`'s links, and the links."""
    known: dict[str, Any] = {name: f"$request.path.{name}" for name in source.parameters}
    producer = PRODUCERS.get(source.id)
    if producer is not None:
        known[producer.parameter] = f"$response.body#{producer.pointer}"
        wanted = [target for target in targets if producer.parameter in target.parameters]
        status = producer.status
    else:
        wanted = [target for target in targets if _is_at_or_above(target.path, source.path)]
        status = "201"
    links: dict[str, Any] = {}
    for target in wanted:
        parameters = {
            name: known.get(name, _CONSTANTS.get(name))
            for name in target.parameters
            if name in known or name in _CONSTANTS
        }
        links[target.id] = {"operationId": target.id, "parameters": parameters}
    return status, links


def _creates(operation: _Operation) -> bool:
    if operation.id in PRODUCERS:
        return True
    return operation.method == "put" and "201" in operation.body.get("responses", {})


def describe_links(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the links of every creating operation to `schema`, in place."""
    operations = list(_operations(schema))
    for source in operations:
        if not _creates(source):
            continue
        targets = [target for target in operations if target is not source]
        status, links = _links_from(source, targets)
        response = source.body.get("responses", {}).get(status)
        if response is not None and links:
            response["links"] = links
    return schema

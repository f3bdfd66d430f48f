"""A hand-written OpenAPI 3.1 response checker: every answer is matched to its path
template, method and status in the description, its media type must be one the
description declares, and a JSON body must validate against the declared schema
(``jsonschema``, draft 2020-12, ``$ref``s resolved in the document's components)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from tests.web.helpers import Response


class OpenAPIChecker:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.seen: set[tuple[str, str, str]] = set()
        self._templates = [(t, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", t) + "$"))
                           for t in doc["paths"]]
        for schema in doc["components"]["schemas"].values():
            jsonschema.Draft202012Validator.check_schema(schema)

    def template(self, url: str) -> str:
        path = urlsplit(url).path
        found = [t for t, rx in self._templates if rx.match(path)]
        assert found, f"{path} is not described in the OpenAPI document"
        # The most specific: fewest placeholders.
        return min(found, key=lambda t: t.count("{"))

    def check(self, method: str, url: str, response: Response) -> Response:
        template = self.template(url)
        operation = self.doc["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not described"
        status = str(response.status)
        described = operation["responses"].get(status)
        assert described is not None, (
            f"{method} {template} answered {status}, not described: {response.body[:200]!r}")
        content = described.get("content", {})
        assert response.content_type in content, (
            f"{method} {template} {status}: {response.content_type} not in {list(content)}")
        if response.content_type == "application/json":
            schema = dict(content["application/json"]["schema"])
            schema["components"] = self.doc["components"]
            jsonschema.validate(response.json(), schema,
                                cls=jsonschema.Draft202012Validator)
        self.seen.add((template, method.lower(), status))
        return response

    def missing(self) -> list[str]:
        """Operations never answered with a 2xx, and described statuses never seen."""
        out = []
        for template, item in self.doc["paths"].items():
            for method, operation in item.items():
                if method == "parameters":
                    continue
                for status in operation["responses"]:
                    if (template, method, status) not in self.seen:
                        out.append(f"{method.upper()} {template} {status}")
        return out

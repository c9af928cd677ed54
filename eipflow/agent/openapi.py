"""The OpenAPI 3.0 description of the agent's HTTP API (served at ``GET /openapi.json``).

Kept by hand next to the handlers in :mod:`eipflow.agent.app`; ``tests/netns/test_agent_fuzz.py``
fuzzes a live agent against it with schemathesis (every answer must be one described here, none a
5xx, and no rejected request may change a rule).
"""

from __future__ import annotations

from typing import Any

from .._version import __version__
from ..backends.batch import MAX_BATCH, STATUSES

__all__ = ["openapi"]

_ADDRESS = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}], "maxLength": 64,
            "description": "IPv4 or IPv6 address, no zone ID (canonicalised by the agent)"}
_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$"}


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi(host_uuid: str) -> dict[str, Any]:
    """The description of the agent serving ``host_uuid``."""
    from .app import MAX_BATCH_BODY_BYTES  # app imports this module: read its constant at call time

    refusals = {
        "401": _error("missing or invalid bearer token"),
        "403": _error("an address this host will not program (outside its vip_ranges, its own, its gateway's)"),
        "413": _error("body larger than 4096 bytes"),
        "409": {"description": "stale generation: the host has seen a newer generation of this EIP; nothing changed",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Stale"}}}},
        "421": _error(f"the spec names another host than {host_uuid}"),
        "422": _error("the body is not a valid spec (not JSON, duplicate or missing keys, a bad field)"),
        "502": _error("the host's dataplane failed (retryable says whether a retry may help)"),
        "504": _error("the host's dataplane did not finish in time: outcome unknown"),
    }
    spec_body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Spec"}}}}
    done = {"description": "done", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Done"}}}}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": f"eipflow agent for host {host_uuid}", "version": __version__},
        "paths": {
            "/healthz": {"get": {"operationId": "healthz", "security": [], "responses": {
                "200": {"description": "alive", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok"]}}}}}}}}},
            "/v1/rules": {"get": {"operationId": "rules", "security": secured, "responses": {
                "200": {"description": "the rules realized on this host", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["host_uuid", "rules"],
                    "properties": {"host_uuid": {"type": "string"},
                                   "rules": {"type": "array", "items": {"$ref": "#/components/schemas/Spec"}}}}}}},
                "401": refusals["401"], "502": refusals["502"], "504": refusals["504"]}}},
            "/v1/apply": {"post": {"operationId": "apply", "security": secured, "requestBody": spec_body,
                                   "responses": {"200": done, **refusals}}},
            "/v1/revoke": {"post": {"operationId": "revoke", "security": secured, "requestBody": spec_body,
                                    "responses": {"200": done, **refusals}}},
            "/v1/batch": {"post": {
                "operationId": "batch", "security": secured,
                "description": "Many changes for this host in one call; each is judged on its own. A malformed "
                               "entry refuses the whole batch (nothing applied).",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Batch"}}}},
                "responses": {
                    "200": {"description": "one result per change, in order", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/BatchResults"}}}},
                    "401": refusals["401"],
                    "413": _error(f"more than {MAX_BATCH} changes, or a body larger than {MAX_BATCH_BODY_BYTES} "
                                  "bytes; nothing applied"),
                    "421": _error(f"the batch or one of its specs names another host than {host_uuid}; "
                                  "nothing applied"),
                    "422": _error("the body is not a valid batch (index and field name the bad entry; "
                                  "two changes of one EIP); nothing applied"),
                }}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Spec": {
                    "type": "object", "additionalProperties": False,
                    "required": ["eip_uuid", "vip", "vm_nic_uuid", "guest_ip", "host_uuid", "generation"],
                    "example": {"eip_uuid": "6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d", "vip": "203.0.113.10",
                                "vm_nic_uuid": "nic-1", "guest_ip": "192.0.2.10", "host_uuid": host_uuid,
                                "generation": 3},
                    "properties": {"eip_uuid": {"type": "string", "format": "uuid"}, "vip": _ADDRESS,
                                   "vm_nic_uuid": _ID, "guest_ip": _ADDRESS,
                                   "host_uuid": {"type": "string", "enum": [host_uuid]},
                                   "generation": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                                                  "description": "the fencing token (the EIP's generation)"}},
                },
                "Stale": {"type": "object", "required": ["error", "reason", "eip_uuid", "requested_generation",
                                                         "current_generation"], "properties": {
                    "error": {"type": "string"}, "reason": {"enum": ["older", "revoked", "changed", "newer_rule"]},
                    "eip_uuid": {"type": "string"}, "requested_generation": {"type": "integer"},
                    "current_generation": {"type": "integer"}}},
                "Done": {"type": "object", "required": ["ok", "action", "eip_uuid"], "properties": {
                    "ok": {"enum": [True]}, "action": {"enum": ["apply", "revoke"]}, "eip_uuid": {"type": "string"}}},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Change": {"type": "object", "additionalProperties": False, "required": ["action", "spec"],
                           "properties": {"action": {"enum": ["apply", "revoke"]},
                                          "spec": {"$ref": "#/components/schemas/Spec"}}},
                "Batch": {"type": "object", "additionalProperties": False, "required": ["changes"], "properties": {
                    "host_uuid": {"type": "string", "enum": [host_uuid]},
                    "changes": {"type": "array", "maxItems": MAX_BATCH, "description": "at most one change per EIP",
                                "items": {"$ref": "#/components/schemas/Change"}}}},
                "Result": {
                    "type": "object", "required": ["status", "action", "eip_uuid"],
                    "description": "refused: reason, requested_generation and current_generation as the 409 body; "
                                   "an address this host will not program: field, reason, address_not_allowed; "
                                   "unknown: outcome_unknown",
                    "properties": {
                        "status": {"enum": list(STATUSES)}, "action": {"enum": ["apply", "revoke"]},
                        "eip_uuid": {"type": "string"}, "error": {"type": "string"}, "retryable": {"type": "boolean"},
                        "reason": {"type": "string"}, "requested_generation": {"type": "integer"},
                        "current_generation": {"type": "integer"}, "field": {"type": "string"},
                        "address_not_allowed": {"enum": [True]}, "outcome_unknown": {"enum": [True]}}},
                "BatchResults": {"type": "object", "required": ["host_uuid", "results"], "properties": {
                    "host_uuid": {"type": "string"},
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}}}},
            },
        },
    }

"""The admin API's rules that JSON Schema cannot state, for schemathesis.

crates/keygate-server/tests/it/openapi.rs runs schemathesis against a real
server with these hooks. The OpenAPI document states every rule below in the
description of the field it is about, and the server refuses a request that
breaks one with 422 `VALIDATION_ERROR` naming the field. A request generated
to fit the schema (positive) is brought within these rules here, so that the
run checks everything else; a request generated to break the schema
(negative) is left exactly as generated.
"""

import json
import re
from datetime import datetime, timedelta, timezone

import schemathesis
from schemathesis import GenerationMode

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_METADATA_BYTES = 4096
# Usage ranges: 31 days per minute or hour, 366 days per day.
MAX_RANGE_DAYS = {"minute": 31, "hour": 31, "day": 366}


def window_seconds(per):
    found = re.fullmatch(r"([0-9]+)([smhd])", per) if isinstance(per, str) else None
    return int(found.group(1)) * UNITS[found.group(2)] if found else per


def one_limit_per_counter(limits):
    """No two limits on one counter: one resource, window, scope and mode."""
    seen, kept = set(), []
    for limit in limits:
        counter = (
            limit.get("resource", "default"),
            window_seconds(limit.get("per")),
            limit.get("scope", "key"),
            limit.get("mode", "enforce"),
        )
        if counter not in seen:
            seen.add(counter)
            kept.append(limit)
    return kept


def without_nul(value):
    """Text anywhere in metadata is free of NUL (U+0000), as all text is."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    return value


def instant(text):
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None


def in_the_future(body, now):
    """`expires_at` is in the future; with `expires_in`, one of the two."""
    if body.get("expires_at") is not None and body.get("expires_in") is not None:
        body.pop("expires_in")
    at = instant(body.get("expires_at"))
    if at is not None and at <= now + timedelta(minutes=1):
        body["expires_at"] = iso(now + timedelta(days=1))


def admin_keys_apart(workspace, body):
    """Keys of the admin workspace are of environment `admin`, and no other's are."""
    admin = workspace == "ws_admin"
    if admin and body.get("environment") not in (None, "admin"):
        body["environment"] = "admin"
    elif not admin and body.get("environment") == "admin":
        body["environment"] = None


def within_rules(path, method, body, now, parameters):
    if isinstance(body.get("limits"), list):
        body["limits"] = one_limit_per_counter(body["limits"])
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        metadata = body["metadata"] = without_nul(metadata)
    if isinstance(metadata, dict) and len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        body["metadata"] = {}
    if (path, method) == ("/v1/workspaces/{id}/keys/import", "POST") and isinstance(body.get("keys"), list):
        # A row's own rules are the server's per-row refusals (200), but
        # NUL is refused for the whole body, as everywhere.
        body["keys"] = [
            dict(row, metadata=without_nul(row["metadata"])) if isinstance(row, dict) and isinstance(row.get("metadata"), dict) else row
            for row in body["keys"]
        ]
    if (path, method) == ("/v1/workspaces/{id}/keys", "POST"):
        in_the_future(body, now)
        admin_keys_apart(parameters.get("id"), body)
    # `resource` or `resources`, not both.
    if path == "/v1/keys/verify" and body.get("resource") is not None and body.get("resources") is not None:
        body.pop("resources")
    return body


def iso(at):
    return at.isoformat().replace("+00:00", "Z")


def shifted(at, delta):
    """`at + delta`, or None past the calendar (years 1 to 9999)."""
    try:
        return at + delta
    except OverflowError:
        return None


def usage_range(query):
    """`from` before `to`, and the range at most as long as its granularity allows."""
    since = instant(query.get("from"))
    if since is None:
        return query
    hour = timedelta(hours=1)
    to = instant(query.get("to"))
    if to is None:
        # `to` defaults to the server's now, which a test node's clock sets.
        to = shifted(since, hour)
        if to is None:
            since, to = since - hour, since
    days = MAX_RANGE_DAYS.get(query.get("granularity", "minute"), 31)
    earliest = shifted(to, -timedelta(days=days))
    if not since < to or (earliest is not None and since < earliest):
        since = shifted(to, -hour)
        if since is None:
            since, to = to, to + hour
    query["from"], query["to"] = iso(since), iso(to)
    return query


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is not None and meta.generation.mode == GenerationMode.NEGATIVE:
        return case
    now = datetime.now(timezone.utc)
    path, method = case.operation.path, case.operation.method.upper()
    if isinstance(case.body, dict):
        parameters = case.path_parameters if isinstance(case.path_parameters, dict) else {}
        case.body = within_rules(path, method, dict(case.body), now, parameters)
    if isinstance(case.query, dict) and path.endswith("/usage"):
        case.query = usage_range(dict(case.query))
    return case

"""Campaign ids go into SQL and object keys, so they are validated as UUIDs first."""

from __future__ import annotations

import uuid

from exports_pipeline.core.errors import InvalidInputError


def parse_campaign_id(raw: str) -> str:
    """Return the canonical lowercase form of a campaign UUID, or fail naming the bad id."""
    text = str(raw).strip()
    try:
        parsed = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise InvalidInputError(f"campaign id {raw!r} is not a UUID") from None
    canonical = str(parsed)
    # uuid.UUID also accepts braces, "urn:uuid:" and missing hyphens; only the plain forms are ids.
    if text.lower() not in (canonical, parsed.hex):
        raise InvalidInputError(f"campaign id {raw!r} is not a UUID")
    return canonical

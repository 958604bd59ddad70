"""Download links to a campaign's latest snapshot (SPEC section 4).

Links are made on demand, never stored: an S3 destination gives a presigned GET URL that downloads
under the name campaign-<id>-<snapshot>.<format>; a local destination gives the file's path.
"""

from __future__ import annotations

from exports_pipeline.core.destinations import Destination
from exports_pipeline.core.errors import ConfigurationError, ExportError
from exports_pipeline.core.ids import parse_campaign_id
from exports_pipeline.core.publish import campaign_prefix, read_manifest, snapshot_folder

LINK_EXPIRY_ENV = "EXPORTS_LINK_EXPIRY_SECONDS"
DEFAULT_LINK_EXPIRY_SECONDS = 3600
MAX_LINK_EXPIRY_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot last longer


def link_expiry_seconds(value: int) -> int:
    """The lifetime given, refused outside 1 s to 7 days."""
    if not 1 <= value <= MAX_LINK_EXPIRY_SECONDS:
        raise ConfigurationError(f"link expiry {value} s: use 1 to {MAX_LINK_EXPIRY_SECONDS} seconds")
    return value


def whole_seconds(text: str, name: str) -> int:
    """A setting's text as a whole number of seconds, the error naming the setting."""
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(f"{name}={text!r} is not a whole number of seconds") from None


def file_link(destination: Destination, campaign_id: str, snapshot: str, record: dict, expires_in: int) -> str:
    """The link to one file of a snapshot, given its manifest record."""
    key = f"{snapshot_folder(campaign_id, snapshot)}/{record['name']}"
    return destination.link(key, f"campaign-{campaign_id}-{snapshot}.{record['format']}", expires_in)


def latest_link(
    destination: Destination, campaign_id: str, fmt: str = "csv", expires_in: int = DEFAULT_LINK_EXPIRY_SECONDS
) -> str:
    """The link to the file of this format in the snapshot latest.json names."""
    cid = parse_campaign_id(campaign_id)
    manifest = read_manifest(destination, cid)
    if manifest is None:
        raise ExportError(
            f"campaign {cid} has no export yet: no latest.json under {destination.location(campaign_prefix(cid))}"
        )
    record = next((f for f in manifest["files"] if f["format"] == fmt), None)
    if record is None:
        raise ExportError(f"campaign {cid}: the latest snapshot {manifest['snapshot']} has no {fmt} file")
    return file_link(destination, cid, manifest["snapshot"], record, link_expiry_seconds(expires_in))

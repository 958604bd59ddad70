"""Publication of a snapshot (SPEC section 4): files, then manifest.json, then latest.json.

Readers only ever follow latest.json to a manifest and a manifest to its files, so a run that fails
at any step leaves nothing reachable. latest.json moves only forward (compare-and-swap).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from exports_pipeline.core.destinations import Destination
from exports_pipeline.core.errors import PublicationError

SCHEMA_VERSION = 1
# The layout (SPEC section 4): campaign_id=<id>/<snapshot>/<file>, and campaign_id=<id>/latest.json.
CAMPAIGN_FOLDER = "campaign_id="
SNAPSHOT_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
RUN_ID_CHARS = 8
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest.json"
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "csv.gz": "application/gzip",
    "pdf": "application/pdf",
}


@dataclass(frozen=True)
class StagedFile:
    """A file written to local staging, with what the manifest says about it."""

    name: str
    format: str
    path: Path
    rows: int | None

    def describe(self) -> dict:
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {
            "name": self.name,
            "format": self.format,
            "bytes": self.path.stat().st_size,
            "sha256": digest.hexdigest(),
            "rows": self.rows,
        }


def snapshot_name(snapshot_time: datetime, run_id: str) -> str:
    """UTC time of the source snapshot to the microsecond, then the run id's first RUN_ID_CHARS characters."""
    return snapshot_time.strftime(SNAPSHOT_TIME_FORMAT) + _run_suffix(run_id)


def _run_suffix(run_id: str) -> str:
    return "-" + run_id[:RUN_ID_CHARS]


def is_run_snapshot(snapshot: str, run_id: str) -> bool:
    """Whether snapshot_name gave this name to a snapshot of this run."""
    return snapshot.endswith(_run_suffix(run_id))


def snapshot_time(name: str) -> datetime | None:
    """The source snapshot time a snapshot folder is named after; None for other names."""
    try:
        return datetime.strptime(name.split("-", 1)[0], SNAPSHOT_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def campaign_prefix(campaign_id: str) -> str:
    return f"{CAMPAIGN_FOLDER}{campaign_id}"


def campaign_of(folder: str) -> str | None:
    """The campaign id a top-level folder is named after (campaign_prefix's inverse); None for other folders."""
    return folder.removeprefix(CAMPAIGN_FOLDER) if folder.startswith(CAMPAIGN_FOLDER) else None


def snapshot_folder(campaign_id: str, snapshot: str) -> str:
    return f"{campaign_prefix(campaign_id)}/{snapshot}"


def snapshot_manifest_key(campaign_id: str, snapshot: str) -> str:
    return f"{snapshot_folder(campaign_id, snapshot)}/{MANIFEST_FILE}"


def is_manifest(key: str) -> bool:
    return key.endswith("/" + MANIFEST_FILE)


def latest_key(campaign_id: str) -> str:
    return f"{campaign_prefix(campaign_id)}/{LATEST_FILE}"


def read_latest(destination: Destination, campaign_id: str) -> dict | None:
    data, _ = destination.read_versioned(latest_key(campaign_id))
    return json.loads(data) if data else None


def read_manifest(destination: Destination, campaign_id: str) -> dict | None:
    """The manifest latest.json names, or None when the campaign has no default export yet."""
    latest = read_latest(destination, campaign_id)
    if latest is None:
        return None
    data, _ = destination.read_versioned(latest["manifest"])
    return json.loads(data) if data else None


def upload_snapshot(
    destination: Destination,
    campaign_id: str,
    snapshot: str,
    files: list[StagedFile],
    file_records: list[dict],
    manifest: dict,
) -> str:
    """Files first (sizes checked against what was written), then the manifest. Returns its key."""
    folder = snapshot_folder(campaign_id, snapshot)
    for staged, record in zip(files, file_records, strict=True):
        stored = destination.upload_file(f"{folder}/{staged.name}", staged.path, CONTENT_TYPES[staged.format])
        if stored != record["bytes"]:
            raise PublicationError(f"{staged.name}: stored {stored} bytes, wrote {record['bytes']}")
    key = snapshot_manifest_key(campaign_id, snapshot)
    destination.put_bytes(key, json.dumps(manifest, indent=2, ensure_ascii=False).encode(), CONTENT_TYPES["json"])
    return key


def remove_snapshot(destination: Destination, campaign_id: str, snapshot: str) -> None:
    """Delete what a snapshot folder holds, its manifest first, so that nothing of it is reachable."""
    keys = [o.key for o in destination.list(snapshot_folder(campaign_id, snapshot) + "/")]
    destination.delete(sorted(keys, key=lambda key: not is_manifest(key)))


def move_latest(destination: Destination, campaign_id: str, snapshot: str, manifest_key: str) -> bool:
    """Point latest.json at this snapshot unless it already names a newer one. True if it names this one.

    latest.json naming this very snapshot already means our write landed though its answer was lost
    (a retried conditional write then fails its condition): snapshot names are unique per run.
    """
    payload = json.dumps({"snapshot": snapshot, "manifest": manifest_key}, indent=2).encode()
    key = latest_key(campaign_id)
    for _ in range(20):
        data, version = destination.read_versioned(key)
        named = json.loads(data)["snapshot"] if data is not None else None
        if named is not None and named >= snapshot:
            return named == snapshot
        if destination.write_if_version(key, data=payload, version=version, content_type=CONTENT_TYPES["json"]):
            return True
    raise PublicationError(f"latest.json of campaign {campaign_id} kept changing; gave up moving it")

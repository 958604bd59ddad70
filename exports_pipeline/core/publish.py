"""Publication of a snapshot (SPEC section 4): files, then manifest.json, then latest.json.

Readers only ever follow latest.json to a manifest and a manifest to its files, so a run that fails
at any step leaves nothing reachable. latest.json moves only forward (compare-and-swap).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from exports_pipeline.core.destinations import Destination
from exports_pipeline.core.errors import PublicationError

SCHEMA_VERSION = 1
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
        return {"name": self.name, "format": self.format, "bytes": self.path.stat().st_size,
                "sha256": digest.hexdigest(), "rows": self.rows}


def snapshot_name(snapshot_time: datetime, run_id: str) -> str:
    """UTC time of the source snapshot to the microsecond, then the run id's first 8 characters."""
    return snapshot_time.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + run_id[:8]


def campaign_prefix(campaign_id: str) -> str:
    return f"campaign_id={campaign_id}"


def latest_key(campaign_id: str) -> str:
    return f"{campaign_prefix(campaign_id)}/latest.json"


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


def upload_snapshot(destination: Destination, campaign_id: str, snapshot: str, files: list[StagedFile],
                    file_records: list[dict], manifest: dict) -> str:
    """Files first (sizes checked against what was written), then the manifest. Returns its key."""
    folder = snapshot_folder(campaign_id, snapshot)
    for staged, record in zip(files, file_records):
        stored = destination.upload_file(f"{folder}/{staged.name}", staged.path, CONTENT_TYPES[staged.format])
        if stored != record["bytes"]:
            raise PublicationError(f"{staged.name}: stored {stored} bytes, wrote {record['bytes']}")
    manifest_key = f"{folder}/manifest.json"
    destination.put_bytes(manifest_key, json.dumps(manifest, indent=2, ensure_ascii=False).encode(), "application/json")
    return manifest_key


def snapshot_folder(campaign_id: str, snapshot: str) -> str:
    return f"{campaign_prefix(campaign_id)}/{snapshot}"


def remove_snapshot(destination: Destination, campaign_id: str, snapshot: str) -> None:
    """Delete what a snapshot folder holds, its manifest first, so that nothing of it is reachable."""
    keys = [o.key for o in destination.list(snapshot_folder(campaign_id, snapshot) + "/")]
    destination.delete(sorted(keys, key=lambda key: not key.endswith("/manifest.json")))


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
        if destination.write_if_version(key, data=payload, version=version, content_type="application/json"):
            return True
    raise PublicationError(f"latest.json of campaign {campaign_id} kept changing; gave up moving it")

"""Retention (SPEC section 4): delete old snapshots and the leftovers of failed runs, never what
latest.json names.

- expired: a complete snapshot (it has manifest.json) taken more than retention_days ago;
- incomplete: a snapshot folder without manifest.json whose newest object is older than the grace
  period (a younger one may belong to an export that is uploading right now); on a local destination
  also an empty snapshot folder (an export killed before its first file) unchanged for the grace;
- partial: a ".partial-*" file of the local destination (an interrupted write) older than the grace;
- staging: the local staging folder of an export whose process was killed (an export that ends, even
  by an error, removes its own), in this host's temporary folder, untouched for the grace period.

Only keys that follow the layout (campaign_id=<id>/<snapshot>/...) are considered; anything else
under the destination is left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path

from exports_pipeline.core.destinations import Destination, StoredObject
from exports_pipeline.core.errors import ConfigurationError
from exports_pipeline.core.publish import (
    campaign_of,
    is_manifest,
    read_latest,
    snapshot_folder,
    snapshot_manifest_key,
    snapshot_time,
)

STAGING_PREFIX = "exports-pipeline-"  # the prefix of stage_export's temporary folder
REMOVAL_REASONS = ("expired", "incomplete", "partial", "staging")


@dataclass(frozen=True)
class Removal:
    """One thing retention removes: a snapshot folder or a stray file, with every key it holds."""

    path: str
    reason: str  # one of REMOVAL_REASONS
    keys: tuple[str, ...]


def plan_retention(
    destination: Destination,
    retention_days: int,
    *,
    leftover_grace: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> list[Removal]:
    """What apply_retention would remove, campaign by campaign (the listing comes in key order)."""
    if retention_days < 1:
        raise ConfigurationError(f"retention of {retention_days} days: keep snapshots at least 1 day")
    now = now or datetime.now(UTC)
    removals: list[Removal] = []
    for folder, objects in groupby(destination.list(""), key=lambda o: o.key.split("/", 1)[0]):
        campaign_id = campaign_of(folder)
        if campaign_id is not None:
            removals += _campaign_removals(
                destination, campaign_id, list(objects), now - timedelta(days=retention_days), now - leftover_grace
            )
    return removals + _empty_snapshot_removals(destination, now - leftover_grace)


def _campaign_removals(
    destination: Destination,
    campaign_id: str,
    objects: list[StoredObject],
    expired_before: datetime,
    leftover_before: datetime,
) -> list[Removal]:
    latest = read_latest(destination, campaign_id)
    named = latest["snapshot"] if latest else None
    removals = []
    snapshots: dict[str, list[StoredObject]] = defaultdict(list)
    for obj in objects:
        parts = obj.key.split("/")
        if parts[-1].startswith(".partial-"):
            if obj.modified < leftover_before:
                removals.append(Removal(obj.key, "partial", (obj.key,)))
        elif len(parts) >= 3:
            snapshots[parts[1]].append(obj)
    for snapshot, files in snapshots.items():
        taken = snapshot_time(snapshot)
        if snapshot == named or taken is None:
            continue
        keys, folder = tuple(o.key for o in files), snapshot_folder(campaign_id, snapshot)
        if snapshot_manifest_key(campaign_id, snapshot) not in keys:
            if max(o.modified for o in files) < leftover_before:
                removals.append(Removal(folder, "incomplete", keys))
        elif taken < expired_before:
            removals.append(Removal(folder, "expired", keys))
    return removals


def _empty_snapshot_removals(destination: Destination, leftover_before: datetime) -> list[Removal]:
    """Empty snapshot folders unchanged since leftover_before: no listing of objects shows them."""
    removals = []
    for folder in destination.empty_folders():
        campaign, _, snapshot = folder.key.partition("/")
        campaign_id = campaign_of(campaign)
        if (
            campaign_id is None
            or "/" in snapshot
            or snapshot_time(snapshot) is None
            or folder.modified >= leftover_before
        ):
            continue
        latest = read_latest(destination, campaign_id)
        if latest is None or latest["snapshot"] != snapshot:
            removals.append(Removal(folder.key, "incomplete", ()))
    return removals


def apply_retention(
    destination: Destination,
    retention_days: int,
    *,
    dry_run: bool = False,
    leftover_grace: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> list[Removal]:
    """Remove (or, in a dry run, only list) what retention finds; returns it.

    Manifests go first, so that no reader ever finds a manifest whose files are already gone.
    """
    removals = plan_retention(destination, retention_days, leftover_grace=leftover_grace, now=now)
    if not dry_run:
        keys = [key for removal in removals for key in removal.keys]
        destination.delete([key for key in keys if is_manifest(key)])
        destination.delete([key for key in keys if not is_manifest(key)])
        for removal in removals:
            if not removal.keys:
                destination.remove_empty_folder(removal.path)
    return removals


def _newest_change(folder: Path) -> datetime:
    """The latest modification time of the folder or anything in it."""
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return datetime.fromtimestamp(newest, UTC)


def apply_staging_retention(
    temp_dir: str | os.PathLike | None = None,
    *,
    dry_run: bool = False,
    leftover_grace: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> list[Removal]:
    """Remove (or list) staging folders left in temp_dir (default: this host's temporary folder) by killed
    exports. An export writes into its folder while it reads and transforms, and run monitoring stops any
    export after 6 hours: a folder untouched for the grace (24 hours) is abandoned. Other users' are skipped."""
    now = now or datetime.now(UTC)
    removals = []
    for folder in sorted(Path(temp_dir or tempfile.gettempdir()).glob(STAGING_PREFIX + "*")):
        try:
            if (
                not folder.is_dir()
                or folder.stat().st_uid != os.getuid()
                or _newest_change(folder) >= now - leftover_grace
            ):
                continue
            files = tuple(str(path) for path in sorted(folder.rglob("*")) if path.is_file())
            if not dry_run:
                shutil.rmtree(folder)
        except FileNotFoundError:  # removed meanwhile, e.g. by a second retention run
            continue
        removals.append(Removal(str(folder), "staging", files))
    return removals

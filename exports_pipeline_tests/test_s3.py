"""Publication to S3, download links and the Dagster layer against moto's S3 API server over HTTP.

Every client here is the one ExportDestination builds (standard retries, SigV4, the settings for an
S3-compatible endpoint); faults are injected with botocore 'before-send' handlers, no mocking.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
from botocore.awsrequest import AWSResponse

from exports_pipeline.core.destinations import MAX_PARTS, LocalDestination, MiB, S3Destination, part_size
from exports_pipeline.core.errors import ConfigurationError, ExportError, PublicationError
from exports_pipeline.core.export import publish_export, stage_export
from exports_pipeline.core.links import latest_link
from exports_pipeline.core.options import ExportOptions
from exports_pipeline.core.publish import move_latest, read_latest
from exports_pipeline.defs.resources import ExportDestination, SourceDatabase, resources_from_env
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, EMPTY
from exports_pipeline_tests.conftest import FAKE_AWS_SECRET, materialize
from exports_pipeline_tests.test_cli import run_cli

PREFIX = "exports"
SNAPSHOT = r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}"


@pytest.fixture
def awkward_pg(pg_url) -> str:
    awkward.load(pg_url)
    return pg_url


def s3_destination(bucket: str, **options) -> S3Destination:
    """An S3Destination on the client ExportDestination builds (each call: a new client)."""
    return S3Destination(ExportDestination(url=f"s3://{bucket}/{PREFIX}").get_client(), bucket, PREFIX, **options)


def publish(url: str, destination, run_id: str, options: ExportOptions = ExportOptions()):
    with stage_export(url, C1, options, run_id) as staged:
        return publish_export(staged, destination)


def get(destination: S3Destination, key: str) -> bytes:
    return destination.client.get_object(Bucket=destination.bucket, Key=f"{PREFIX}/{key}")["Body"].read()


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


def s3_error(status: int, code: str) -> AWSResponse:
    """An error answer as S3 sends it, returned by a before-send handler instead of sending the request."""
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>injected</Message></Error>"
    return AWSResponse("https://injected.invalid", status, {"Content-Type": "application/xml"}, _Body(body.encode()))


# ------------------------------------------------------------------------------------------ publication


def test_layout_key_names_and_manifest_checksums(awkward_pg, s3_bucket):
    destination = s3_destination(s3_bucket)
    published = publish(awkward_pg, destination, run_id="1a2b3c4d-rest-of-run-id")
    folder = f"campaign_id={C1}/{published.snapshot}"
    keys = sorted(o["Key"] for o in destination.client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    manifest = json.loads(get(destination, f"{folder}/manifest.json"))
    assert keys == sorted(
        [f"{PREFIX}/{folder}/{f['name']}" for f in manifest["files"]]
        + [f"{PREFIX}/{folder}/manifest.json", f"{PREFIX}/campaign_id={C1}/latest.json"]
    )
    # ids, snapshot names and fixed file names only: no contact or campaign data in any key
    assert all(re.fullmatch(rf"{PREFIX}/campaign_id={C1}/(latest\.json|{SNAPSHOT}/[a-z_]+\.[a-z.]+)", k) for k in keys)
    assert published.snapshot.endswith("Z-1a2b3c4d")
    for record in manifest["files"]:
        data = get(destination, f"{folder}/{record['name']}")
        assert record["bytes"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    assert get(destination, f"{folder}/campaign_results.csv") == awkward.expected_csv()
    assert json.loads(get(destination, f"campaign_id={C1}/latest.json")) == {
        "snapshot": published.snapshot,
        "manifest": f"{folder}/manifest.json",
    }
    head = destination.client.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/{folder}/campaign_results.csv")
    assert head["ContentType"] == "text/csv; charset=utf-8"


@pytest.mark.parametrize(
    "sse, kms_key_id", [(None, None), ("AES256", None), ("aws:kms", "arn:aws:kms:us-east-1:123456789012:key/exports")]
)
def test_server_side_encryption_is_requested_only_when_configured(s3_bucket, tmp_path, sse, kms_key_id):
    destination = ExportDestination(url=f"s3://{s3_bucket}/{PREFIX}", sse=sse, kms_key_id=kms_key_id).open()
    sent = []
    destination.client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append(
            (
                request.headers.get("x-amz-server-side-encryption"),
                request.headers.get("x-amz-server-side-encryption-aws-kms-key-id"),
            )
        ),
    )
    (tmp_path / "f.csv").write_bytes(b"a\n")
    destination.upload_file("k/f.csv", tmp_path / "f.csv", "text/csv")
    destination.put_bytes("k/manifest.json", b"{}", "application/json")
    assert destination.write_if_version("k/latest.json", b"{}", None, "application/json")
    as_text = [tuple(v.decode() if isinstance(v, bytes) else v for v in pair) for pair in sent]
    assert as_text == [(sse, kms_key_id)] * 3
    if sse:
        head = destination.client.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/k/f.csv")
        assert head["ServerSideEncryption"] == sse and head.get("SSEKMSKeyId") == kms_key_id


def test_encryption_from_the_environment(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPORTS_DESTINATION", f"s3://{s3_bucket}/{PREFIX}")
    monkeypatch.setenv("EXPORTS_S3_SSE", "aws:kms")
    monkeypatch.setenv("EXPORTS_S3_KMS_KEY_ID", "alias/exports")
    with dg.build_resources({"destination": resources_from_env(os.environ)["destination"]}) as resources:
        destination = resources.destination.open()
    destination.put_bytes("k/manifest.json", b"{}", "application/json")
    head = destination.client.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/k/manifest.json")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == "alias/exports"


def test_bad_encryption_settings_are_refused(s3_bucket):
    with pytest.raises(ConfigurationError, match="AES256 or aws:kms"):
        ExportDestination(url=f"s3://{s3_bucket}/{PREFIX}", sse="aes").open()
    with pytest.raises(ConfigurationError, match="needs server-side encryption aws:kms"):
        ExportDestination(url=f"s3://{s3_bucket}/{PREFIX}", sse="AES256", kms_key_id="k").open()


def test_503_and_throttling_answers_are_retried(awkward_pg, s3_bucket):
    destination = s3_destination(s3_bucket)
    faults = {"PutObject": [(503, "ServiceUnavailable"), (503, "SlowDown")], "GetObject": [(503, "SlowDown")]}

    def inject(request, event_name, **_):
        pending = faults.get(event_name.rsplit(".", 1)[1])
        return s3_error(*pending.pop(0)) if pending else None

    destination.client.meta.events.register("before-send.s3", inject)
    published = publish(awkward_pg, destination, run_id="aaaaaaaa")
    assert faults == {"PutObject": [], "GetObject": []}  # every fault was answered, and retried past
    assert published.latest_moved and read_latest(destination, C1)["snapshot"] == published.snapshot
    record = next(f for f in published.manifest["files"] if f["format"] == "csv")
    assert record["sha256"] == hashlib.sha256(get(destination, published.file_keys["csv"])).hexdigest()


def test_failure_mid_multipart_upload_leaves_latest_and_no_open_upload(awkward_pg, s3_bucket):
    destination = s3_destination(s3_bucket, multipart_threshold=5 * MiB, min_part_size=5 * MiB)
    good = publish(awkward_pg, destination, run_id="aaaaaaaa")
    latest_before = get(destination, f"campaign_id={C1}/latest.json")
    operations = []

    def fail_second_part(request, event_name, **_):
        operations.append(event_name.rsplit(".", 1)[1])
        if operations[-1] == "UploadPart" and "partNumber=2" in request.url:
            return s3_error(403, "AccessDenied")  # not retryable: the transfer fails mid-way
        return None

    destination.client.meta.events.register("before-send.s3", fail_second_part)
    with stage_export(awkward_pg, C1, ExportOptions(), "bbbbbbbb") as staged:
        csv_file = next(f.path for f in staged.files if f.format == "csv")
        csv_file.write_bytes(os.urandom(12 * MiB))  # three 5 MiB parts
        with pytest.raises(PublicationError, match="AccessDenied"):
            publish_export(staged, destination)
        failed = staged.snapshot
    assert {"CreateMultipartUpload", "UploadPart", "AbortMultipartUpload"} <= set(operations)
    assert get(destination, f"campaign_id={C1}/latest.json") == latest_before
    left = [o.key for o in destination.list(f"campaign_id={C1}/{failed}")]
    assert f"campaign_id={C1}/{failed}/manifest.json" not in left
    assert f"campaign_id={C1}/{failed}/campaign_results.csv" not in left
    assert destination.client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert read_latest(destination, C1)["snapshot"] == good.snapshot

    destination.client.meta.events.unregister("before-send.s3", fail_second_part)
    with stage_export(awkward_pg, C1, ExportOptions(), "cccccccc") as staged:
        next(f.path for f in staged.files if f.format == "csv").write_bytes(os.urandom(12 * MiB))
        published = publish_export(staged, destination)
    record = next(f for f in published.manifest["files"] if f["format"] == "csv")
    assert record["bytes"] == 12 * MiB
    assert record["sha256"] == hashlib.sha256(get(destination, published.file_keys["csv"])).hexdigest()


def test_part_size_keeps_any_object_within_the_part_limit():
    assert part_size(1, 8 * MiB) == 8 * MiB
    five_tib = 5 << 40
    assert part_size(five_tib, 8 * MiB) * MAX_PARTS >= five_tib and part_size(five_tib, 8 * MiB) % MiB == 0


def test_two_exports_racing_leave_latest_on_the_newer_snapshot(awkward_pg, s3_bucket):
    both_staged = threading.Barrier(2)

    def export(run_id: str):
        with stage_export(awkward_pg, C1, ExportOptions(), run_id) as staged:
            both_staged.wait(timeout=120)  # then both publish at once
            return publish_export(staged, s3_destination(s3_bucket))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(export, ["aaaaaaaa", "bbbbbbbb"]))
    newer = max(results, key=lambda p: p.snapshot)
    assert newer.latest_moved
    assert read_latest(s3_destination(s3_bucket), C1)["snapshot"] == newer.snapshot


@pytest.mark.parametrize("latest_exists", [False, True])
@pytest.mark.parametrize("ours_is_newer", [True, False])
def test_latest_write_is_conditional_when_another_run_moves_it_in_between(s3_bucket, latest_exists, ours_is_newer):
    older, newer = "20261122T000001.000000Z-aaaaaaaa", "20261122T000002.000000Z-bbbbbbbb"
    ours, theirs = (newer, older) if ours_is_newer else (older, newer)
    other = s3_destination(s3_bucket)
    if latest_exists:
        assert move_latest(other, C1, "20261122T000000.000000Z-00000000", "m0")
    destination = s3_destination(s3_bucket)
    interleaved = []

    def other_run_moves_first(request, **_):
        """Between our read of latest.json and our write, the other run moves it."""
        if request.url.endswith("latest.json") and not interleaved:
            interleaved.append(move_latest(other, C1, theirs, "m-theirs"))

    destination.client.meta.events.register("before-send.s3.PutObject", other_run_moves_first)
    assert move_latest(destination, C1, ours, "m-ours") is ours_is_newer
    assert interleaved == [True]
    assert read_latest(other, C1)["snapshot"] == newer


# ------------------------------------------------------------------------------------------ links


def test_link_downloads_the_latest_file_with_its_name_and_expiry(awkward_pg, s3_bucket, tmp_path):
    destination = s3_destination(s3_bucket)
    published = publish(awkward_pg, destination, run_id="aaaaaaaa")
    env = {
        "EXPORTS_SOURCE_URL": awkward_pg,
        "EXPORTS_DESTINATION": f"s3://{s3_bucket}/{PREFIX}",
        "EXPORTS_LINK_EXPIRY_SECONDS": "120",
    }
    for fmt in ("csv", "parquet"):
        result = run_cli(["link", C1, "--format", fmt], tmp_path, **env)
        assert result.returncode == 0, result.stderr
        url = result.stdout.strip()
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["120"] and FAKE_AWS_SECRET not in url
        with urllib.request.urlopen(url) as response:
            assert response.read() == get(destination, published.file_keys[fmt])
            assert (
                response.headers["Content-Disposition"]
                == f'attachment; filename="campaign-{C1}-{published.snapshot}.{fmt}"'
            )


def test_link_expiry_defaults_to_an_hour_and_is_validated(awkward_pg, s3_bucket, tmp_path):
    """The command reads EXPORTS_LINK_EXPIRY_SECONDS; the core function takes the lifetime as an argument."""
    destination = s3_destination(s3_bucket)
    publish(awkward_pg, destination, run_id="aaaaaaaa")
    assert parse_qs(urlsplit(latest_link(destination, C1)).query)["X-Amz-Expires"] == ["3600"]
    env = {"EXPORTS_SOURCE_URL": awkward_pg, "EXPORTS_DESTINATION": f"s3://{s3_bucket}/{PREFIX}"}
    for bad in ("soon", "0", str(8 * 24 * 3600)):
        result = run_cli(["link", C1], tmp_path, **env, EXPORTS_LINK_EXPIRY_SECONDS=bad)
        assert result.returncode == 1 and re.search("EXPORTS_LINK_EXPIRY_SECONDS|link expiry", result.stderr)
    for bad in (0, 8 * 24 * 3600):
        with pytest.raises(ConfigurationError, match="link expiry"):
            latest_link(destination, C1, expires_in=bad)


def test_link_for_a_local_destination_is_the_path_and_no_export_is_a_clear_error(awkward_pg, tmp_path):
    publish(awkward_pg, LocalDestination(tmp_path / "out"), run_id="aaaaaaaa")
    env = {"EXPORTS_SOURCE_URL": awkward_pg, "EXPORTS_DESTINATION": str(tmp_path / "out")}
    result = run_cli(["link", C1], tmp_path, **env)
    assert result.returncode == 0, result.stderr
    with open(result.stdout.strip(), "rb") as handle:
        assert handle.read() == awkward.expected_csv()
    missing = run_cli(["link", EMPTY], tmp_path, **env)
    assert missing.returncode == 1 and f"campaign {EMPTY} has no export yet" in missing.stderr
    with pytest.raises(ExportError, match="has no xlsx file"):
        latest_link(LocalDestination(tmp_path / "out"), C1, "xlsx")


# ------------------------------------------------------------------------------------------ Dagster


def test_export_through_dagster_publishes_to_s3_with_s3_locations(awkward_pg, s3_bucket, monkeypatch):
    base = f"s3://{s3_bucket}/{PREFIX}"
    resources = {"source": SourceDatabase(url=awkward_pg), "destination": ExportDestination(url=base)}
    destination = s3_destination(s3_bucket)
    with dg.instance_for_test() as instance:
        monkeypatch.delenv("EXPORTS_LINK_IN_METADATA", raising=False)
        result = materialize(resources, instance, C1)
        assert result.success
        csv = next(
            m.metadata
            for m in result.asset_materializations_for_node("campaign_export")
            if m.asset_key.to_user_string() == "campaign_results_csv"
        )
        key = f"campaign_id={C1}/{csv['snapshot'].value}/campaign_results.csv"
        assert csv["location"].value == f"{base}/{key}" and "download_link" not in csv
        assert get(destination, key) == awkward.expected_csv()
        assert read_latest(destination, C1)["snapshot"] == csv["snapshot"].value

        monkeypatch.setenv("EXPORTS_DESTINATION", base)
        monkeypatch.setenv("EXPORTS_LINK_IN_METADATA", "true")
        again = materialize(resources | {"destination": resources_from_env(os.environ)["destination"]}, instance, C1)
        csv = next(
            m.metadata
            for m in again.asset_materializations_for_node("campaign_export")
            if m.asset_key.to_user_string() == "campaign_results_csv"
        )
        link = csv["download_link"].value
        assert link.startswith("http") and parse_qs(urlsplit(link).query)["X-Amz-Expires"] == ["3600"]
        with urllib.request.urlopen(link) as response:
            assert response.read() == awkward.expected_csv()
        for run in (result, again):
            assert FAKE_AWS_SECRET not in "".join(repr(e) for e in instance.all_logs(run.run_id))
        assert (
            FAKE_AWS_SECRET not in get(destination, f"campaign_id={C1}/{csv['snapshot'].value}/manifest.json").decode()
        )


def test_s3_failure_fails_the_run_naming_the_bucket_never_the_secret(awkward_pg, s3_endpoint):
    resources = {
        "source": SourceDatabase(url=awkward_pg),
        "destination": ExportDestination(url="s3://no-such-bucket/x"),
    }
    with dg.instance_for_test() as instance:
        result = materialize(resources, instance, C1)
        assert not result.success
        message = result.failure_data_for_node("campaign_export").error.message
        assert "s3://no-such-bucket/x/" in message and "NoSuchBucket" in message
        assert FAKE_AWS_SECRET not in message
        assert FAKE_AWS_SECRET not in "".join(repr(e) for e in instance.all_logs(result.run_id))

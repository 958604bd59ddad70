"""Settings arrive one way: each variable sets its resource field through dg.EnvVar (resources_from_env,
called by definitions.py), unset variables leave the defaults the Launchpad shows, secrets stay
variable names in the run history, and the command line builds its resources without writing to its
environment."""

from __future__ import annotations

import os
import re
import sqlite3
import zlib
from contextlib import closing, suppress
from pathlib import Path

import dagster as dg
import pytest

from exports_pipeline import cli
from exports_pipeline.core.errors import ConfigurationError
from exports_pipeline.core.seed import seed_source
from exports_pipeline.definitions import definitions_from_env
from exports_pipeline.defs.resources import (
    DESTINATION_VARIABLES,
    MAIL_VARIABLES,
    ExportDestination,
    MailDelivery,
    SourceDatabase,
    resources_from_env,
)
from exports_pipeline_tests import awkward

PACKAGE = Path(__file__).resolve().parents[1] / "exports_pipeline"
DB_PASSWORD = "db-secret-never-shown"
SMTP_PASSWORD = "smtp-secret-never-shown"
EVERY_VARIABLE = {
    "EXPORTS_SOURCE_URL": "sqlite:///source.sqlite",
    "EXPORTS_DESTINATION": "s3://bucket/prefix",
    "EXPORTS_S3_SSE": "aws:kms",
    "EXPORTS_S3_KMS_KEY_ID": "alias/exports",
    "EXPORTS_LINK_EXPIRY_SECONDS": "120",
    "EXPORTS_LINK_IN_METADATA": "yes",
    "AWS_ENDPOINT_URL": "http://generic:9000",
    "AWS_ENDPOINT_URL_S3": "http://s3-only:9000",
    "EXPORTS_SMTP_HOST": "smtp.example.org",
    "EXPORTS_SMTP_PORT": "2525",
    "EXPORTS_SMTP_STARTTLS": "no",
    "EXPORTS_SMTP_USERNAME": "exports",
    "EXPORTS_SMTP_PASSWORD": SMTP_PASSWORD,
    "EXPORTS_MAIL_FROM": "exports@example.org",
    "EXPORTS_MAIL_TO": "a@example.org, b@example.org",
    "EXPORTS_MAIL_OPERATORS": "ops@example.org",
    "EXPORTS_MAIL_LINK_EXPIRY_SECONDS": "600",
}


def _config(definitions: dg.Definitions, resource: str):
    """A resource's config field in the export job's run config schema, which the Launchpad shows."""
    job = definitions.resolve_job_def("export_campaign")
    resources = job.run_config_schema.config_type.fields["resources"].config_type.fields
    return resources[resource].config_type.fields["config"]


def _config_fields(definitions: dg.Definitions, resource: str) -> dict:
    return _config(definitions, resource).config_type.fields


def test_each_variable_reaches_its_resource_field(monkeypatch):
    for name, value in EVERY_VARIABLE.items():
        monkeypatch.setenv(name, value)
    with dg.build_resources(resources_from_env(os.environ)) as resources:
        source, destination, mail = resources.source, resources.destination, resources.mail
    assert source.url == "sqlite:///source.sqlite"
    assert (destination.url, destination.sse, destination.kms_key_id) == (
        "s3://bucket/prefix",
        "aws:kms",
        "alias/exports",
    )
    assert (destination.link_expiry_seconds, destination.link_in_metadata) == (120, True)
    assert destination.endpoint_url == "http://s3-only:9000"  # the S3-specific variable first, as the AWS SDK
    smtp = mail.smtp()
    assert (smtp.host, smtp.port, smtp.starttls, smtp.username, smtp.password, smtp.sender) == (
        "smtp.example.org",
        2525,
        False,
        "exports",
        SMTP_PASSWORD,
        "exports@example.org",
    )
    assert (mail.recipient_list(), mail.operator_list(), mail.link_seconds()) == (
        ["a@example.org", "b@example.org"],
        ["ops@example.org"],
        600,
    )


def test_a_set_variable_is_stored_as_its_name_never_its_value():
    definitions = definitions_from_env(EVERY_VARIABLE)
    mail = _config_fields(definitions, "mail")
    configured = _config(definitions, "mail").default_value
    assert configured["password"] == {"env": "EXPORTS_SMTP_PASSWORD"}
    assert configured["port"] == {"env": "EXPORTS_SMTP_PORT"}
    assert configured["starttls"] is False  # a yes/no flag is its value: no secret, and "no" means no
    assert SMTP_PASSWORD not in repr(configured) and SMTP_PASSWORD not in repr(mail)


def test_unset_variables_leave_the_defaults_the_launchpad_shows():
    definitions = definitions_from_env({})
    mail = {
        name: field.default_value
        for name, field in _config_fields(definitions, "mail").items()
        if field.default_provided
    }
    assert mail == {
        "host": None,
        "port": 587,
        "starttls": True,
        "username": None,
        "password": None,
        "sender": "exports-pipeline@localhost",
        "recipients": "",
        "operators": "",
        "link_expiry_seconds": 3 * 24 * 3600,
    }
    destination = _config_fields(definitions, "destination")
    assert {name: destination[name].default_value for name in DESTINATION_VARIABLES if name != "url"} == {
        "sse": None,
        "kms_key_id": None,
        "link_expiry_seconds": 3600,
        "link_in_metadata": False,
    }
    assert _config_fields(definitions, "source")["statement_timeout_ms"].default_value == 600_000
    with dg.build_resources({"mail": resources_from_env({})["mail"]}) as resources:
        assert resources.mail.smtp() is None  # no host: delivery is off
    for resource in (SourceDatabase, ExportDestination, MailDelivery):
        assert all(field.description for field in resource.model_fields.values()), resource
    assert set(MAIL_VARIABLES) == set(MailDelivery.model_fields)


def test_required_locations_are_read_when_the_run_starts_and_named_when_missing(monkeypatch):
    monkeypatch.delenv("EXPORTS_SOURCE_URL", raising=False)
    resources = resources_from_env({})
    with pytest.raises(Exception, match="EXPORTS_SOURCE_URL"), dg.build_resources({"source": resources["source"]}):
        pass


@pytest.mark.parametrize("variable", ["EXPORTS_LINK_IN_METADATA", "EXPORTS_SMTP_STARTTLS"])
def test_a_yes_no_setting_takes_only_yes_or_no_words(variable):
    with pytest.raises(ConfigurationError, match=f"{variable}='maybe': use true or false"):
        resources_from_env({variable: "maybe"})
    field = {
        "EXPORTS_LINK_IN_METADATA": ("destination", "link_in_metadata"),
        "EXPORTS_SMTP_STARTTLS": ("mail", "starttls"),
    }[variable]
    for words, value in ((("no", "false", "0", "OFF"), False), (("yes", "true", "1", " On "), True)):
        for word in words:
            assert getattr(resources_from_env({variable: word})[field[0]], field[1]) is value


def test_the_sensors_interval_is_set_when_the_definitions_are_built():
    assert {s.minimum_interval_seconds for s in definitions_from_env({}).sensors} == {30}
    fast = definitions_from_env({"EXPORTS_SENSOR_INTERVAL_SECONDS": "5"}).sensors
    assert sorted(s.name for s in fast) == [
        "campaign_completed_sensor",
        "campaign_partitions_sensor",
        "export_failed_mail_sensor",
        "export_ready_mail_sensor",
    ]
    assert {s.minimum_interval_seconds for s in fast} == {5}
    for bad in ("soon", "0", "-3"):
        with pytest.raises(ConfigurationError, match="EXPORTS_SENSOR_INTERVAL_SECONDS"):
            definitions_from_env({"EXPORTS_SENSOR_INTERVAL_SECONDS": bad})


def test_no_module_reads_the_environment_but_the_definitions_and_the_command_line():
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text())
    )
    assert readers == ["cli.py", "definitions.py"]


def _stored_text(folder: Path) -> str:
    """Everything an instance keeps in this folder as text: its files, and each value of its SQLite
    databases, zlib-compressed ones (Dagster's snapshots) decompressed."""
    texts = []
    for path in (p for p in folder.rglob("*") if p.is_file()):
        if path.suffix != ".db":
            texts.append(path.read_bytes().decode("utf-8", "replace"))
            continue
        with closing(sqlite3.connect(path)) as db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for row in db.execute(f'SELECT * FROM "{table}"'):
                    texts += [_as_text(value) for value in row]
    return "\n".join(texts)


def _as_text(value) -> str:
    if isinstance(value, bytes):
        with suppress(zlib.error):
            value = zlib.decompress(value)
        return value.decode("utf-8", "replace")
    return str(value)


def test_the_command_line_exports_without_writing_its_environment_or_storing_the_password(
    pg_url, tmp_path, monkeypatch
):
    """Production: the run's resources read the command's own variables back (dg.EnvVar), so the source
    URL's password reaches the database but no file of the run history."""
    awkward.load(pg_url)
    home = tmp_path / ".dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("EXPORTS_SOURCE_URL", pg_url.replace("://postgres@", f"://postgres:{DB_PASSWORD}@", 1))
    monkeypatch.setenv("EXPORTS_DESTINATION", str(tmp_path / "out"))
    monkeypatch.setenv("EXPORTS_SMTP_PASSWORD", SMTP_PASSWORD)
    before = dict(os.environ)
    assert cli.main(["export", awkward.C1]) == 0
    assert dict(os.environ) == before
    assert list((tmp_path / "out").glob(f"campaign_id={awkward.C1}/*/campaign_results.csv"))
    stored = _stored_text(home)
    assert "campaign_export" in stored  # the run and its job snapshot are there, read
    assert DB_PASSWORD not in stored and SMTP_PASSWORD not in stored


def test_the_command_line_runs_the_demo_without_writing_its_environment(tmp_path, monkeypatch):
    demo = tmp_path / "demo"
    demo.mkdir()
    (cid,) = seed_source(f"sqlite:///{demo / 'source.sqlite'}", contacts=20, campaigns=1, seed=3)
    for name in ("EXPORTS_SOURCE_URL", "EXPORTS_DESTINATION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EXPORTS_DEMO_DIR", str(demo))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".dagster_home"))
    before = dict(os.environ)
    assert cli.main(["export", cid]) == 0
    assert dict(os.environ) == before
    assert list((demo / "exports").glob(f"campaign_id={cid}/*/campaign_results.csv"))

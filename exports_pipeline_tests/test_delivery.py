"""Mail delivery against a real SMTP server (aiosmtpd on loopback): STARTTLS and login, the export-ready
mail with a working presigned link, and the operators' mail when an export fails."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import os
import socket
import ssl
import urllib.request
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exports_pipeline.core.mail import ExportFigures, SmtpSettings, export_ready_message, send
from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, campaign_export
from exports_pipeline.defs.delivery import mail_sensors
from exports_pipeline.defs.resources import ExportDestination, MailDelivery, SourceDatabase, resources_from_env
from exports_pipeline.run_tags import export_run_tags
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1
from exports_pipeline_tests.conftest import materialize

SMTP_PASSWORD = "smtp-secret-never-shown"
export_ready_mail_sensor, export_failed_mail_sensor = mail_sensors()


class Inbox:
    """aiosmtpd handler keeping every accepted message with its envelope recipients."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            (list(envelope.rcpt_tos), email.message_from_bytes(envelope.content, policy=email.policy.default))
        )
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 that the client trusts through SSL_CERT_FILE (what a private CA would do)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def smtp_server(tmp_path, monkeypatch):
    """An SMTP server on loopback that requires STARTTLS, then login as exports/SMTP_PASSWORD."""
    cert_file, key_file = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    inbox, port = Inbox(), _free_port()

    def authenticate(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=(auth_data.login, auth_data.password) == (b"exports", SMTP_PASSWORD.encode()))

    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
    )
    controller.start()
    inbox.port = port
    yield inbox
    controller.stop()


@pytest.fixture
def smtp_env(smtp_server, monkeypatch):
    """The server's settings in the environment; tests take the mail resource from it (mail_from_env)."""
    for name, value in {
        "EXPORTS_SMTP_HOST": "127.0.0.1",
        "EXPORTS_SMTP_PORT": str(smtp_server.port),
        "EXPORTS_SMTP_USERNAME": "exports",
        "EXPORTS_SMTP_PASSWORD": SMTP_PASSWORD,
        "EXPORTS_MAIL_FROM": "exports@example.org",
        "EXPORTS_MAIL_TO": "team@example.org",
        "EXPORTS_MAIL_OPERATORS": "ops@example.org,oncall@example.org",
    }.items():
        monkeypatch.setenv(name, value)
    return smtp_server


def mail_from_env() -> MailDelivery:
    """The mail resource as the code location builds it from the environment."""
    return resources_from_env(os.environ)["mail"]


FIGURES = ExportFigures(
    campaign_id=C1,
    snapshot="20260105T000000.000000Z-1a2b3c4d",
    rows=1234,
    completion_rate=25.0,
    total_cost_usd="12345680.6000",
    latest_moved=True,
)


def test_send_upgrades_with_starttls_and_logs_in(smtp_server):
    settings = SmtpSettings(host="127.0.0.1", port=smtp_server.port, username="exports", password=SMTP_PASSWORD)
    send(settings, export_ready_message("exports@example.org", ["a@example.org"], FIGURES, "https://x/y", 3600))
    ((rcpt, message),) = smtp_server.messages
    assert rcpt == ["a@example.org"]
    assert message["Subject"] == f"Export ready: campaign {C1}, snapshot {FIGURES.snapshot}"
    body = message.get_content().replace("\r\n", "\n")
    for line in (
        "Rows (contacts):  1,234",
        "Completion rate:  25.00 %",
        "Total cost (USD): 12345680.6000",
        f"Snapshot:         {FIGURES.snapshot}",
        "https://x/y",
        "The link works for 1 hour",
    ):
        assert line in body


def test_mail_in_clear_text_is_refused_by_a_server_that_requires_starttls(smtp_server):
    with pytest.raises(Exception, match=r"530|STARTTLS"):  # the server refuses mail in clear text
        send(
            SmtpSettings(host="127.0.0.1", port=smtp_server.port, starttls=False),
            export_ready_message("e@example.org", ["a@example.org"], FIGURES, "x", None),
        )
    assert smtp_server.messages == []


def _export(instance, resources, campaign_id):
    return materialize(resources, instance, campaign_id, tags=export_run_tags(campaign_id, "manual"))


def test_export_ready_mail_has_a_working_presigned_link_and_the_figures(pg_url, s3_bucket, smtp_env, monkeypatch):
    awkward.load(pg_url)
    monkeypatch.setenv("EXPORTS_MAIL_LINK_EXPIRY_SECONDS", str(2 * 24 * 3600))
    resources = {"source": SourceDatabase(url=pg_url), "destination": ExportDestination(url=f"s3://{s3_bucket}/x")}
    with dg.instance_for_test() as instance:
        result = _export(instance, resources, C1)
        assert result.success

        def context(mail: MailDelivery):
            return dg.build_run_status_sensor_context(
                sensor_name="export_ready_mail_sensor",
                dagster_event=result.get_run_success_event(),
                dagster_instance=instance,
                dagster_run=result.dagster_run,
                resources=resources | {"mail": mail},
            )

        export_ready_mail_sensor(context(MailDelivery()))
        assert smtp_env.messages == []  # the default has no host: delivery is off
        export_ready_mail_sensor(context(mail_from_env()))

    ((rcpt, message),) = smtp_env.messages
    assert rcpt == ["owner@example.com", "team@example.org"]  # campaigns.owner_email, then EXPORTS_MAIL_TO
    csv = next(
        m
        for m in result.asset_materializations_for_node("campaign_export")
        if m.asset_key.to_user_string() == "campaign_results_csv"
    ).metadata
    snapshot = csv["snapshot"].value
    assert message["Subject"] == f"Export ready: campaign {C1}, snapshot {snapshot}"
    assert message["From"] == "exports@example.org"
    body = message.get_content().replace("\r\n", "\n")
    assert "Rows (contacts):  4\n" in body and "Completion rate:  25.00 %" in body
    assert "Total cost (USD): 12345677.5999" in body and "The link works for 2 days" in body
    assert SMTP_PASSWORD not in message.as_string()
    link = next(line for line in body.splitlines() if line.startswith("http"))
    assert parse_qs(urlsplit(link).query)["X-Amz-Expires"] == [str(2 * 24 * 3600)]
    with urllib.request.urlopen(link) as response:  # the presigned GET downloads the snapshot's CSV
        assert response.read() == awkward.expected_csv()
        assert f"campaign-{C1}-{snapshot}.csv" in response.headers["Content-Disposition"]


def test_local_destination_mail_gives_the_file_path(pg_url, tmp_path, smtp_env):
    awkward.load(pg_url)
    resources = {
        "source": SourceDatabase(url=pg_url),
        "destination": ExportDestination(url=str(tmp_path / "out")),
        "mail": mail_from_env(),
    }
    with dg.instance_for_test() as instance:
        result = _export(instance, resources, C1)
        export_ready_mail_sensor(
            dg.build_run_status_sensor_context(
                sensor_name="export_ready_mail_sensor",
                dagster_event=result.get_run_success_event(),
                dagster_instance=instance,
                dagster_run=result.dagster_run,
                resources=resources,
            )
        )
    ((_, message),) = smtp_env.messages
    path = message.get_content().replace("\r\n", "\n").split("Download the CSV:\n", 1)[1].splitlines()[0]
    with open(path, "rb") as handle:
        assert handle.read() == awkward.expected_csv()
    assert "The link works" not in message.get_content()


def test_failed_export_mails_the_operators_the_campaign_and_the_cause(pg_url, tmp_path, smtp_env):
    awkward.load(pg_url)
    unknown = "d0000000-0000-4000-8000-000000000000"
    resources = {
        "source": SourceDatabase(url=pg_url),
        "destination": ExportDestination(url=str(tmp_path / "out")),
        "mail": mail_from_env(),
    }
    with dg.instance_for_test() as instance:
        result = _export(instance, resources, unknown)
        assert not result.success
        context = dg.build_run_status_sensor_context(
            sensor_name="export_failed_mail_sensor",
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources=resources,
        ).for_run_failure()
        export_failed_mail_sensor(context)
    ((rcpt, message),) = smtp_env.messages
    assert rcpt == ["ops@example.org", "oncall@example.org"]
    assert message["Subject"] == f"Export failed: campaign {unknown}"
    body = message.get_content().replace("\r\n", "\n")
    assert f"Dagster run {result.run_id}" in body
    assert f"export of campaign {unknown} failed: campaign {unknown} is not in the source" in body


def test_a_run_of_many_campaigns_mails_each_published_one_and_the_operators_the_failed_one(pg_url, tmp_path, smtp_env):
    """C2 fails (a NaN cost): C1's and EMPTY's owners and EXPORTS_MAIL_TO get their mails, operators get C2's.
    XLSX selected: the mail links it (a CSV opened in Excel loses the "+" of phone numbers)."""
    import psycopg

    from exports_pipeline_tests.awkward import C2, EMPTY, K5

    awkward.load(pg_url)
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO call_attempts (id, campaign_id, contact_id, attempt_number, status, cost_usd) "
            f"VALUES ('b0000000-0000-4000-8000-0000000000ff', '{C2}', '{K5}', 9, 'failed', 'NaN')"
        )
    resources = {
        "source": SourceDatabase(url=pg_url),
        "destination": ExportDestination(url=str(tmp_path / "out")),
        "mail": mail_from_env(),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [C1, C2, EMPTY])
        result = dg.materialize(
            [campaign_export],
            instance=instance,
            resources=resources,
            raise_on_error=False,
            selection=[*DEFAULT_EXPORT_KEYS, dg.AssetKey("campaign_results_xlsx")],
            tags={"dagster/asset_partition_range_start": C1, "dagster/asset_partition_range_end": EMPTY},
        )
        assert not result.success
        export_failed_mail_sensor(
            dg.build_run_status_sensor_context(
                sensor_name="export_failed_mail_sensor",
                dagster_event=result.get_run_failure_event(),
                dagster_instance=instance,
                dagster_run=result.dagster_run,
                resources=resources,
            ).for_run_failure()
        )
    subjects = {message["Subject"]: (rcpt, message) for rcpt, message in smtp_env.messages}
    ready = sorted(s for s in subjects if s.startswith("Export ready"))
    assert [s.split(",")[0] for s in ready] == sorted(f"Export ready: campaign {c}" for c in (C1, EMPTY))
    c1_rcpt, c1_message = next(subjects[s] for s in ready if C1 in s)
    assert c1_rcpt == ["owner@example.com", "team@example.org"]
    assert "Download the XLSX:\n" in c1_message.get_content().replace("\r\n", "\n")
    operators, failed = subjects[f"Export failed: campaign {C2}"]
    assert operators == ["ops@example.org", "oncall@example.org"]
    assert f"export of campaign {C2} failed" in failed.get_content() and "NaN" in failed.get_content()

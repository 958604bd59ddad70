"""The user's way in, for real: dagster-webserver and dagster-daemon on loopback with the production
dagster.yaml (PostgreSQL storage, run queue), driven by the system Chromium through Playwright; a
backfill through the GraphQL API; the daemon's sensor mailing the owner after the UI's run.

Screenshots go to a temporary folder, or to docs/screenshots/ (the README's "Using the UI" shows them)
with EXPORTS_UPDATE_SCREENSHOTS=1, so that a test run leaves the repository as it was."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest
from aiosmtpd.controller import Controller

from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, C2, EMPTY
from exports_pipeline_tests.conftest import ADMIN_URL
from exports_pipeline_tests.test_delivery import Inbox

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHOTS = REPO / "docs" / "screenshots" if os.environ.get("EXPORTS_UPDATE_SCREENSHOTS") == "1" \
    else Path(os.environ.get("TMPDIR", "/tmp")) / "exports-pipeline-screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and shutil.which("chromium") is None,
                                reason="no Chromium at /usr/bin/chromium (CI installs Debian's chromium in .ci/run)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(what: str, predicate, timeout: float, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except OSError:
            pass
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


class Stack:
    def __init__(self, home: Path, url: str, instance: dg.DagsterInstance, inbox: Inbox, logs: list[Path]):
        self.home, self.url, self.instance, self.inbox, self.logs = home, url, instance, inbox, logs

    def wait(self, what, predicate, timeout):
        return _wait(what, predicate, timeout, self.logs)

    def graphql(self, query: str, variables: dict) -> dict:
        request = urllib.request.Request(f"{self.url}/graphql", json.dumps({"query": query, "variables": variables})
                                         .encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        assert "errors" not in body, body
        return body["data"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui_home")
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    names = [f"exports_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    server = urlsplit(ADMIN_URL)
    source_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + names[1]
    awkward.load(source_url)
    inbox, smtp_port, web_port = Inbox(), _free_port(), _free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": server.hostname,
           "DAGSTER_PG_PORT": str(server.port or 5432), "DAGSTER_PG_USER": server.username or "postgres",
           "DAGSTER_PG_PASSWORD": server.password or "", "DAGSTER_PG_DB": names[0], "EXPORTS_SOURCE_URL": source_url,
           "EXPORTS_DESTINATION": str(home / "exports"), "EXPORTS_SENSOR_INTERVAL_SECONDS": "3",
           "EXPORTS_SMTP_HOST": "127.0.0.1", "EXPORTS_SMTP_PORT": str(smtp_port), "EXPORTS_SMTP_STARTTLS": "false",
           "EXPORTS_MAIL_FROM": "exports@example.org"}
    processes, logs = [], []
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key in ("DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD",
                        "DAGSTER_PG_DB"):
                patch.setenv(key, env[key])
            # The test creates the storage tables first, so that the daemon and the webserver never race to.
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("campaigns", [C1, C2, EMPTY])
                for name, command in (("daemon", [BIN / "dagster-daemon", "run"]),
                                      ("webserver", [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p",
                                                     str(web_port)])):
                    logs.append(home / f"{name}.log")
                    with open(logs[-1], "wb") as out:
                        processes.append(subprocess.Popen([*command, "-w", REPO / "workspace.yaml"], cwd=home,
                                                          env=env, stdout=out, stderr=subprocess.STDOUT,
                                                          start_new_session=True))
                url = f"http://127.0.0.1:{web_port}"
                _wait("the webserver", lambda: urllib.request.urlopen(f"{url}/server_info", timeout=5).status == 200,
                      90, logs)
                yield Stack(home, url, instance, inbox, logs)
    finally:
        for process in processes:  # each process group holds the code servers and run workers it started
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        smtp.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def page(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def shot(page, name: str) -> None:
    """A 1280x800 viewport keeps each PNG well under 200 KB (they are committed to docs/)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png")


def _runs(stack, **tags) -> list[dg.DagsterRun]:
    return list(stack.instance.get_runs(filters=dg.RunsFilter(tags=tags)))


def test_a_partition_launched_from_the_asset_page_exports_and_mails_the_owner(stack, page):
    page.goto(f"{stack.url}/assets/campaign_results_csv?view=partitions")
    page.get_by_text("c1000000-0").first.wait_for()  # the "campaigns" partitions are listed
    assert page.get_by_text("c3000000-0").first.is_visible()
    page.wait_for_timeout(1500)  # Dagster's first-visit community dialog
    if page.get_by_role("button", name="Skip").is_visible():
        page.get_by_role("button", name="Skip").click()
    page.locator("button:has-text('Materialize')").first.click()
    page.get_by_role("button", name="Confirm").click()  # the multi-asset brings its other outputs along
    dialog = page.locator("[role=dialog]").last
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem").filter(has_text=C1).first.click()
    page.get_by_text("Launch runs to materialize").click()  # closes the partition list
    shot(page, "launch")
    page.get_by_role("button", name="Launch 1 run").click()

    run = stack.wait("the launched run to finish", lambda: next(
        (r for r in _runs(stack, **{"dagster/partition": C1}) if r.is_finished), None), 180)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["campaign_id"] == C1 and run.tags["trigger"] == "manual"  # ExportRunCoordinator's tags
    materialization = stack.instance.get_latest_materialization_event(dg.AssetKey("campaign_results_csv"))
    metadata = {k: v.value for k, v in materialization.asset_materialization.metadata.items()}
    assert materialization.run_id == run.run_id and metadata["rows"] == 4
    with open(metadata["location"], "rb") as handle:
        assert handle.read() == awkward.expected_csv()

    page.goto(f"{stack.url}/assets/campaign_results_csv?view=partitions&partition={C1}")
    page.get_by_text(metadata["snapshot"]).first.wait_for()
    text = page.locator("body").inner_text()
    assert "rows" in text and "location" in text and metadata["location"] in text
    shot(page, "metadata")

    message = stack.wait("the daemon's export-ready mail", lambda: stack.inbox.messages, 60)[0][1]
    assert message["To"] == "owner@example.com"
    assert message["Subject"] == f"Export ready: campaign {C1}, snapshot {metadata['snapshot']}"
    assert metadata["location"] in message.get_content()


def test_a_backfill_launched_through_graphql_completes(stack, page):
    data = stack.graphql("""
        mutation Backfill($params: LaunchBackfillParams!) {
          launchPartitionBackfill(backfillParams: $params) {
            __typename
            ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message }
          }
        }""", {"params": {"partitionNames": [C1, C2, EMPTY], "selector": {
        "partitionSetName": "export_campaign_partition_set",
        "repositorySelector": {"repositoryLocationName": "exports_pipeline", "repositoryName": "__repository__"}}}})
    launched = data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    status = """query Status($id: String!) { partitionBackfillOrError(backfillId: $id) {
                  ... on PartitionBackfill { status } } }"""
    stack.wait("the backfill to complete", lambda: stack.graphql(status, {"id": backfill_id})[
        "partitionBackfillOrError"]["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "FAILED", "CANCELED")
        and all(r.is_finished for r in _runs(stack, **{"dagster/backfill": backfill_id})), 240)
    runs = _runs(stack, **{"dagster/backfill": backfill_id})
    assert sorted(r.tags["campaign_id"] for r in runs) == sorted([C1, C2, EMPTY])
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert {r.tags["trigger"] for r in runs} == {"backfill"}
    for campaign in (C1, C2, EMPTY):
        assert (stack.home / "exports" / f"campaign_id={campaign}" / "latest.json").is_file()

    page.goto(f"{stack.url}/runs/b/{backfill_id}?tab=runs")
    page.get_by_text(backfill_id).first.wait_for()
    shot(page, "backfill")
    page.goto(f"{stack.url}/runs")
    page.get_by_text("campaign_id").first.wait_for()
    shot(page, "export_history")

"""The user's way in, for real: dagster-webserver and dagster-daemon on loopback with the production
dagster.yaml (PostgreSQL storage, run queue), driven by the system Chromium through Playwright: one
file format of one campaign launched from the asset catalog, its metadata and preview table, the
daemon's sensor mailing the owner; a backfill through the GraphQL API (runs of many campaigns); a
campaign's runs found by its name on the Runs page.

Screenshots go to a temporary folder, or to docs/screenshots/ (the README's "Using the UI" shows them)
with EXPORTS_UPDATE_SCREENSHOTS=1, so that a test run leaves the repository as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import openpyxl
import psycopg
import pytest
from aiosmtpd.controller import Controller
from playwright.sync_api import expect

from exports_pipeline.defs.assets import DEFAULT_EXPORT_KEYS, FORMAT_KEYS
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1, C2, EMPTY
from exports_pipeline_tests.conftest import ADMIN_URL, stop_process_group
from exports_pipeline_tests.test_delivery import Inbox

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHOTS = (
    REPO / "docs" / "screenshots"
    if os.environ.get("EXPORTS_UPDATE_SCREENSHOTS") == "1"
    else Path(os.environ.get("TMPDIR", "/tmp")) / "exports-pipeline-screenshots"
)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XLSX_KEY = FORMAT_KEYS["xlsx"]
C1_NAME_TAG = 'Spring, "promo" line'  # C1's name on one line: its campaign_name run tag

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and shutil.which("chromium") is None,
    reason="no Chromium at /usr/bin/chromium (CI installs Debian's chromium in .ci/run)",
)


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
        request = urllib.request.Request(
            f"{self.url}/graphql",
            json.dumps({"query": query, "variables": variables}).encode(),
            {"Content-Type": "application/json"},
        )
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
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": server.hostname,
        "DAGSTER_PG_PORT": str(server.port or 5432),
        "DAGSTER_PG_USER": server.username or "postgres",
        "DAGSTER_PG_PASSWORD": server.password or "",
        "DAGSTER_PG_DB": names[0],
        "EXPORTS_SOURCE_URL": source_url,
        "EXPORTS_DESTINATION": str(home / "exports"),
        "EXPORTS_SENSOR_INTERVAL_SECONDS": "3",
        "EXPORTS_SMTP_HOST": "127.0.0.1",
        "EXPORTS_SMTP_PORT": str(smtp_port),
        "EXPORTS_SMTP_STARTTLS": "false",
        "EXPORTS_MAIL_FROM": "exports@example.org",
    }
    processes, logs = [], []
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key in (
                "DAGSTER_HOME",
                "DAGSTER_PG_HOST",
                "DAGSTER_PG_PORT",
                "DAGSTER_PG_USER",
                "DAGSTER_PG_PASSWORD",
                "DAGSTER_PG_DB",
            ):
                patch.setenv(key, env[key])
            # The test creates the storage tables first, so that the daemon and the webserver never race to.
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("campaigns", [C1, C2, EMPTY])
                for name, command in (
                    ("daemon", [BIN / "dagster-daemon", "run"]),
                    ("webserver", [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", str(web_port)]),
                ):
                    logs.append(home / f"{name}.log")
                    with open(logs[-1], "wb") as out:
                        processes.append(
                            subprocess.Popen(
                                [*command, "-w", REPO / "workspace.yaml"],
                                cwd=home,
                                env=env,
                                stdout=out,
                                stderr=subprocess.STDOUT,
                                start_new_session=True,
                            )
                        )
                url = f"http://127.0.0.1:{web_port}"
                _wait(
                    "the webserver",
                    lambda: urllib.request.urlopen(f"{url}/server_info", timeout=5).status == 200,
                    90,
                    logs,
                )
                yield Stack(home, url, instance, inbox, logs)
    finally:
        for process in processes:  # each process group holds the code servers and run workers it started
            stop_process_group(process)
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
        # A returning user: Dagster's "Join the community" dialog, shown once per browser on localhost, is
        # dismissed already (its own localStorage key), so that it never covers what the test clicks.
        page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        yield page
        browser.close()


def shot(page, name: str) -> None:
    """A 1280x800 viewport keeps each PNG well under 200 KB (they are committed to docs/)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", animations="disabled")  # transitions shown finished


def _runs(stack, **tags) -> list[dg.DagsterRun]:
    return list(stack.instance.get_runs(filters=dg.RunsFilter(tags=tags)))


def _as_shown(value: str | None) -> str:
    """A cell's text as the browser renders it: HTML collapses each run of white space into one space."""
    return " ".join((value or "").split())


@pytest.fixture(scope="module")
def xlsx_run(stack, page) -> dg.DagsterRun:
    """campaign_results_xlsx alone, for one campaign, launched as a person does: Catalog → the asset →
    Partitions → Materialize… → the campaign → Launch 1 run (the multi-asset is subsettable: no dialog
    about its other outputs)."""
    page.goto(stack.url)
    page.get_by_role("link", name="Catalog").click()
    page.get_by_role("link", name=XLSX_KEY.path[-1]).first.click()
    page.get_by_role("tab", name="Partitions").click()
    page.get_by_text("c1000000-0").first.wait_for()  # one partition per campaign
    expect(page.get_by_text("c3000000-0").first).to_be_visible()
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Launch runs to materialize {XLSX_KEY.path[-1]}")).to_be_visible()
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem").filter(has_text=C1).click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the partition list
    expect(page.get_by_placeholder("Filter partitions")).to_be_hidden()
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    shot(page, "launch")
    dialog.get_by_role("button", name="Launch 1 run").click()
    expect(page.get_by_text("Launched run")).to_be_visible()
    ui_runs = lambda: _runs(stack, **{"dagster/partition": C1, "dagster/from_ui": "true"})  # noqa: E731
    stack.wait("the launched run to finish", lambda: ui_runs() and all(r.is_finished for r in ui_runs()), 300)
    [run] = ui_runs()
    return run


def test_xlsx_alone_launched_from_the_catalog_writes_only_its_file_and_mails_the_owner(stack, page, xlsx_run):
    assert xlsx_run.status == dg.DagsterRunStatus.SUCCESS
    assert xlsx_run.asset_selection == {XLSX_KEY}
    assert {k: xlsx_run.tags.get(k) for k in ("campaign_id", "campaign_name", "trigger", "formats")} == {
        "campaign_id": C1,
        "campaign_name": C1_NAME_TAG,
        "trigger": "manual",
        "formats": "xlsx",
    }
    events = stack.instance.all_logs(xlsx_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert [(e.asset_materialization.asset_key, e.asset_materialization.partition) for e in events] == [(XLSX_KEY, C1)]
    metadata = {k: v.value for k, v in events[0].asset_materialization.metadata.items()}
    assert metadata["rows"] == 4 and metadata["latest_moved"] is False  # not a default export (no CSV, Parquet)

    location = Path(metadata["location"])
    assert location.name == "campaign_results.xlsx" and location.parent.name == metadata["snapshot"]
    # The snapshot holds the XLSX, and the figures file and the manifest that every snapshot holds.
    assert sorted(p.name for p in location.parent.iterdir()) == [
        "campaign_results.xlsx",
        "campaign_stats.json",
        "manifest.json",
    ]
    manifest = json.loads((location.parent / "manifest.json").read_text())
    assert [(f["name"], f["rows"]) for f in manifest["files"]] == [
        ("campaign_results.xlsx", 4),
        ("campaign_stats.json", None),
    ]
    workbook = openpyxl.load_workbook(location, read_only=True)
    assert [c.value for c in next(workbook.worksheets[0].iter_rows(max_row=1))] == awkward.HEADER
    workbook.close()
    latest = location.parent.parent / "latest.json"
    assert not latest.exists() or json.loads(latest.read_text())["snapshot"] != metadata["snapshot"]

    page.goto(f"{stack.url}/assets/{XLSX_KEY.path[-1]}?view=partitions&partition={C1}")
    page.get_by_text(metadata["snapshot"]).first.wait_for()
    expect(page.get_by_text("Materialized (1)")).to_be_visible()  # the status filter counts the partition
    expect(page.locator(f"a[href*='{xlsx_run.run_id}']").first).to_be_visible()  # its latest materialization
    expect(page.get_by_text(metadata["location"]).first).to_be_visible()
    shot(page, "metadata")

    subject = f"Export ready: campaign {C1}, snapshot {metadata['snapshot']}"
    mails = stack.wait(
        "the daemon's export-ready mail", lambda: [m for _, m in stack.inbox.messages if m["Subject"] == subject], 120
    )
    assert len(mails) == 1 and mails[0]["To"] == "owner@example.com"
    body = mails[0].get_content().replace("\r\n", "\n")  # SMTP carries CRLF line ends
    assert f"Download the XLSX:\n{metadata['location']}\n" in body


def test_the_metadata_preview_is_a_table_of_the_files_first_rows(stack, page, xlsx_run):
    page.goto(f"{stack.url}/assets/{XLSX_KEY.path[-1]}?view=partitions&partition={C1}")
    preview = page.locator("table").filter(has=page.locator("th", has_text="phone_number")).last
    expect(preview.locator("th")).to_have_text(awkward.HEADER)
    contact = awkward.EXPECTED_ROWS[1]  # K1, the CSV's second row
    row = preview.locator("tr").filter(has_text=contact[awkward.HEADER.index("contact_id")])
    expect(row.locator("td")).to_have_text([_as_shown(value) for value in contact])
    page.get_by_role("cell", name="preview", exact=True).evaluate(
        "cell => cell.scrollIntoView({block: 'start', inline: 'nearest'})"
    )  # the key column stays in view
    expect(row.locator("td").first).to_be_in_viewport()
    shot(page, "preview")


@pytest.fixture(scope="module")
def backfill(stack) -> tuple[str, list[dg.DagsterRun]]:
    """A backfill of the default export assets for three campaigns, launched as the asset page's
    Materialize… dialog does (launchPartitionBackfill with the asset selection and the partitions)."""
    data = stack.graphql(
        """
        mutation Backfill($params: LaunchBackfillParams!) {
          launchPartitionBackfill(backfillParams: $params) {
            __typename
            ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message }
          }
        }""",
        {
            "params": {
                "partitionNames": [C1, C2, EMPTY],
                "assetSelection": [{"path": key.path} for key in DEFAULT_EXPORT_KEYS],
            }
        },
    )
    launched = data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    stack.wait(
        "the backfill to end",
        lambda: _backfill_status(stack, backfill_id) not in ("REQUESTED", "CANCELING")
        and all(r.is_finished for r in _runs(stack, **{"dagster/backfill": backfill_id})),
        300,
    )
    return backfill_id, _runs(stack, **{"dagster/backfill": backfill_id})


def _backfill_status(stack, backfill_id: str) -> str:
    query = """query Status($id: String!) { partitionBackfillOrError(backfillId: $id) {
                 ... on PartitionBackfill { status } } }"""
    return stack.graphql(query, {"id": backfill_id})["partitionBackfillOrError"]["status"]


def test_a_backfill_exports_several_campaigns_per_run(stack, page, backfill):
    backfill_id, runs = backfill
    assert _backfill_status(stack, backfill_id) == "COMPLETED_SUCCESS"
    assert runs and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert {(r.tags["trigger"], r.tags["formats"]) for r in runs} == {("backfill", "csv,parquet")}
    keys = stack.instance.get_dynamic_partitions("campaigns")
    covered = {}  # each run names the first and the last campaign of its stretch of partitions
    for run in runs:
        assert "dagster/partition" not in run.tags and "campaign_id" not in run.tags
        start, end = run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]
        covered[run.run_id] = keys[keys.index(start) : keys.index(end) + 1]
    assert sorted(c for campaigns in covered.values() for c in campaigns) == sorted([C1, C2, EMPTY])
    assert max(len(campaigns) for campaigns in covered.values()) > 1
    for campaign in (C1, C2, EMPTY):
        latest = json.loads((stack.home / "exports" / f"campaign_id={campaign}" / "latest.json").read_text())
        manifest = json.loads((stack.home / "exports" / latest["manifest"]).read_text())
        assert manifest["run_id"] in covered and campaign in covered[manifest["run_id"]]

    page.goto(f"{stack.url}/runs/b/{backfill_id}?tab=runs")
    for run in runs:
        expect(page.locator(f"a[href='/runs/{run.run_id}']").first).to_be_visible()
    expect(page.get_by_text("Succeeded", exact=True)).to_be_visible()
    shot(page, "backfill")


def test_a_campaigns_runs_are_found_by_its_name_on_the_runs_page(stack, page, xlsx_run, backfill):
    backfill_id, _ = backfill
    page.goto(f"{stack.url}/runs")
    expect(page.locator(f"a[href='/runs/b/{backfill_id}']").first).to_be_visible()  # unfiltered: all exports
    page.get_by_role("button", name="Filter").click()
    page.get_by_text("Tag", exact=True).click()
    page.get_by_text("campaign_name", exact=True).click()
    page.keyboard.type("spring")  # the tag's values, narrowed by any part of the name, any case
    page.get_by_role("menuitem").filter(has_text=C1_NAME_TAG).click()
    page.get_by_role("button", name="Filter").click()  # closes the filter menu
    expect(page).to_have_url(re.compile(r"[?&]q"))
    assert list(parse_qs(urlsplit(page.url).query).values()) == [[f"tag:campaign_name={C1_NAME_TAG}"]]

    named = _runs(stack, campaign_name=C1_NAME_TAG)
    assert [r.run_id for r in named] == [xlsx_run.run_id]  # the backfill's range runs name no one campaign
    expect(page.locator(f"a[href='/runs/{xlsx_run.run_id}']").first).to_be_visible()
    expect(page.locator(f"a[href='/runs/b/{backfill_id}']")).to_have_count(0)
    shot(page, "export_history")

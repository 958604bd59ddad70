"""The exports-pipeline command, run as a user runs it: a process, from a temporary folder."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from exports_pipeline.core.catalog import CAMPAIGN_STATUSES, open_catalog
from exports_pipeline.core.seed import create_source_schema
from exports_pipeline.run_tags import campaign_name_tag
from exports_pipeline_tests import awkward
from exports_pipeline_tests.awkward import C1

CLI = shutil.which("exports-pipeline") or str(Path(sys.executable).with_name("exports-pipeline"))


def run_cli(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("EXPORTS_SOURCE_URL", "EXPORTS_DESTINATION", "DAGSTER_HOME", "EXPORTS_DEMO_DIR")
    }
    environ.update(env)
    return subprocess.run([CLI, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def table_rows(stdout: str) -> list[list[str]]:
    """The rows of the campaigns table (between its header and its count), split into cells."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "CONTACTS", "LATEST", "SNAPSHOT", "LOCATION"]
    return [re.split(r"\s{2,}", line) for line in lines[1:-1]]


@pytest.mark.dagster
def test_demo_end_to_end_from_an_empty_folder(tmp_path, monkeypatch):
    result = run_cli(["demo"], tmp_path)
    assert result.returncode == 0, result.stderr
    exports = tmp_path / "demo" / "exports"
    latest_files = sorted(exports.glob("campaign_id=*/latest.json"))
    assert len(latest_files) >= 3
    for latest_file in latest_files:
        latest = json.loads(latest_file.read_text())
        manifest = json.loads((exports / latest["manifest"]).read_text())
        assert {f["name"] for f in manifest["files"]} >= {"campaign_results.csv", "campaign_results.parquet"}
        assert str(latest_file.parent / latest["snapshot"] / "campaign_results.csv") in result.stdout
    assert (tmp_path / ".dagster_home").is_dir()  # the run history of the embedded default
    again = run_cli(["demo"], tmp_path)  # the source exists now: it is reused, exports made anew
    assert again.returncode == 0, again.stderr
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".dagster_home"))
    with dg.DagsterInstance.get() as instance:  # the run history is the export history
        runs = instance.get_runs()
    campaigns = {p.parent.name.removeprefix("campaign_id=") for p in latest_files}
    assert len(runs) == 2 * len(campaigns) and all(r.is_success for r in runs)
    assert {r.tags["campaign_id"] for r in runs} == campaigns and {r.tags["trigger"] for r in runs} == {"manual"}
    with open_catalog(f"sqlite:///{tmp_path / 'demo' / 'source.sqlite'}") as catalog:
        names = catalog.names(sorted(campaigns))
    assert all(
        {"campaign_name": r.tags["campaign_name"]} == campaign_name_tag(names[r.tags["campaign_id"]]) for r in runs
    )


@pytest.mark.dagster
def test_demo_prints_a_short_summary_per_campaign_and_keeps_dagster_events_in_a_log_file(tmp_path):
    result = run_cli(["demo"], tmp_path)
    assert result.returncode == 0, result.stderr
    out, err = result.stdout.splitlines(), result.stderr.splitlines()
    assert len(out) + len(err) <= 40
    exports = tmp_path / "demo" / "exports"
    with open_catalog(f"sqlite:///{tmp_path / 'demo' / 'source.sqlite'}") as catalog:
        names = catalog.names(catalog.ids_after(None, 10))
    assert len(names) == 4
    log = tmp_path / ".dagster_home" / "exports-pipeline.log"
    assert err[0] == f"creating the demo source {tmp_path / 'demo' / 'source.sqlite'}"
    assert err[-1] == f"Dagster's event lines: {log} (--verbose shows them here)"
    summaries = [line for line in err[1:-1] if not line.startswith("  ")]
    notes = [line.strip() for line in err[1:-1] if line.startswith("  ")]
    for cid, name in names.items():  # name, rows, files, time; the files' locations on stdout
        folder = exports / f"campaign_id={cid}"
        latest = json.loads((folder / "latest.json").read_text())
        rows = json.loads((exports / latest["manifest"]).read_text())["files"][0]["rows"]
        summary = next(line for line in summaries if line.startswith(name + ": "))
        assert re.fullmatch(rf"{re.escape(name)}: {rows:,} rows, 3 files, \d+\.\d s", summary)
        assert {
            str(folder / latest["snapshot"] / file)
            for file in ("campaign_results.csv", "campaign_results.parquet", "campaign_stats.json")
        } <= set(out)
    assert len(summaries) == 4 and out[-1] == f"exported 4 demo campaigns to {exports}" and len(out) == 13
    # The seeded awkward phone numbers and a transcript that is not an object: reported, each on one line.
    assert notes and all(note.endswith("(reported, not blocking)") for note in notes)
    assert any(
        re.fullmatch(r"\d+ phone numbers are not E\.164, [\d.]+% of rows \(reported, not blocking\)", n) for n in notes
    )
    assert " - dagster - " not in result.stderr and "Telemetry" not in result.stderr
    assert "RUN_SUCCESS" in log.read_text()


@pytest.mark.dagster
def test_campaigns_lists_the_demo_campaigns_with_their_latest_snapshot(tmp_path):
    assert run_cli(["demo"], tmp_path).returncode == 0
    exports = tmp_path / "demo" / "exports"
    with open_catalog(f"sqlite:///{tmp_path / 'demo' / 'source.sqlite'}") as catalog:
        campaigns = {c.id: c for c in catalog.search(None, None, 10).campaigns}
    listed = run_cli(["campaigns"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = table_rows(listed.stdout)
    assert listed.stdout.splitlines()[-1] == "4 campaigns" and len(rows) == 4
    for cid, name, status, contacts, snapshot, location in rows:
        folder = exports / f"campaign_id={cid}"
        assert snapshot == json.loads((folder / "latest.json").read_text())["snapshot"]
        assert location == str(folder / snapshot) and (folder / snapshot / "manifest.json").is_file()
        assert (name, status, contacts) == (campaigns[cid].name, campaigns[cid].status, f"{campaigns[cid].contacts:,}")

    tokyo = next(c for c in campaigns.values() if c.name.startswith("東京"))
    for search in (["--search", "CUSTOMER CHECK"], ["--search", tokyo.id[9:18].upper()]):
        found = run_cli(["campaigns", *search], tmp_path)
        assert [row[0] for row in table_rows(found.stdout)] == [tokyo.id], found.stdout
    by_status = run_cli(["campaigns", "--status", tokyo.status], tmp_path)
    assert {row[0] for row in table_rows(by_status.stdout)} == {
        c.id for c in campaigns.values() if c.status == tokyo.status
    }
    assert run_cli(["campaigns", "--search", "no such campaign"], tmp_path).stdout == "no campaign matches\n"


def test_export_prints_locations_and_records_the_run(pg_url, tmp_path):
    awkward.load(pg_url)
    env = {"EXPORTS_SOURCE_URL": pg_url, "EXPORTS_DESTINATION": str(tmp_path / "out")}
    result = run_cli(["export", C1, "--format", "csv"], tmp_path, **env)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()  # the locations alone, for scripts
    assert [Path(p).name for p in printed] == ["campaign_results.csv", "campaign_stats.json"]
    assert Path(printed[0]).read_bytes() == awkward.expected_csv()
    summary, *notes, log_line = result.stderr.splitlines()
    assert re.fullmatch(r'Spring, "promo" line: 4 rows, 2 files, \d+\.\d s', summary)
    assert notes == [
        "  row anomalies: 1 call attempt of another campaign's contact, 1 answer of another campaign's "
        "contact, 2 answers to no question, 1 transcript not a JSON object, 1 transcript text not a "
        "string (reported, not blocking)",
        "  3 phone numbers are not E.164, 75.0% of rows (reported, not blocking)",
    ]
    assert log_line.startswith("Dagster's event lines: ")

    verbose = run_cli(["export", C1, "--format", "csv", "--verbose"], tmp_path, **env)
    # --format csv selects its assets in Dagster's job of every asset (export_campaign is the default files')
    assert verbose.returncode == 0 and " - dagster - DEBUG - __ASSET_JOB - " in verbose.stderr
    assert "RUN_SUCCESS" in verbose.stderr and len(verbose.stdout.splitlines()) == 2


def test_a_long_export_on_a_terminal_shows_a_progress_bar_then_only_the_summary(pg_url, tmp_path):
    awkward.load(pg_url)
    terminal, stderr = pty.openpty()
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    environ = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    process = subprocess.Popen(
        [CLI, "export", C1, "--format", "csv"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**environ, "EXPORTS_SOURCE_URL": pg_url, "EXPORTS_DESTINATION": str(tmp_path / "out")},
    )
    os.close(stderr)
    shown = b""
    while chunk := _read(terminal):
        shown += chunk
    assert process.wait(timeout=300) == 0
    os.close(terminal)
    screen = shown.decode()
    # A slow machine redraws the full bar as its seconds go by: what follows the last drawing counts.
    bars = list(re.finditer(r"\r\x1b\[KSpring, \"promo\" line  \[#{24}\] 100%  4 of 4 rows  \d+ s", screen))
    assert bars, repr(screen)
    after = screen[bars[-1].end() :]  # the bar is erased, then the same summary as without a terminal
    assert re.match(r'\r\x1b\[KSpring, "promo" line: 4 rows, 2 files, \d+\.\d s\r\n', after), repr(after)
    assert "\x1b" not in after[len("\r\x1b[K") :]


def _read(fd: int) -> bytes:
    """What the terminal shows next; empty once the command has exited and closed it."""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: no process holds the terminal any more
        return b""


@pytest.mark.dagster
@pytest.mark.parametrize(
    "present, missing", [("EXPORTS_SOURCE_URL", "EXPORTS_DESTINATION"), ("EXPORTS_DESTINATION", "EXPORTS_SOURCE_URL")]
)
def test_one_setting_without_the_other_is_refused_naming_it(tmp_path, present, missing):
    result = run_cli(
        ["export", C1], tmp_path, **{present: "postgresql://x@127.0.0.1/x" if "SOURCE" in present else str(tmp_path)}
    )
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr


@pytest.mark.parametrize(
    "campaign, message",
    [
        ("d0000000-0000-4000-8000-000000000000", "campaign d0000000-0000-4000-8000-000000000000 is not in the source"),
        ("../../etc", "campaign id '../../etc' is not a UUID"),
    ],
)
def test_export_of_a_bad_id_fails_without_writing_or_registering(pg_url, tmp_path, campaign, message):
    awkward.load(pg_url)
    result = run_cli(
        ["export", campaign], tmp_path, EXPORTS_SOURCE_URL=pg_url, EXPORTS_DESTINATION=str(tmp_path / "out")
    )
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".dagster_home").exists()  # no instance touched, so no partition registered


COMMANDS = ("demo", "export", "campaigns", "link", "seed")


@pytest.mark.dagster
def test_help_lists_every_command_with_a_one_line_summary(tmp_path):
    result = run_cli(["--help"], tmp_path)
    assert result.returncode == 0
    listed = dict(re.findall(r"^    (\w+) +(\S.*)$", result.stdout, re.MULTILINE))
    assert tuple(listed) == COMMANDS and all(len(summary) > 20 for summary in listed.values())
    for command in COMMANDS:
        own = run_cli([command, "--help"], tmp_path)
        assert own.returncode == 0 and own.stdout.startswith(f"usage: exports-pipeline {command}")
        assert listed[command] in " ".join(own.stdout.split())  # the summary heads the command's own help


def test_campaigns_finds_any_part_of_a_name_or_id_among_50000(pg_url, tmp_path, capsys):
    """Seeded with generate_series; the expected matches come from every row, read back and filtered here."""
    create_source_schema(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO campaigns (id, name, owner_id, status, created_at, updated_at) "
            "SELECT md5('c' || g)::uuid, CASE WHEN g %% 1000 = 0 THEN 'Spring Survey ' || g "
            "                                 WHEN g %% 997 = 0 THEN 'Autumn SPRING survey (copy) ' || g "
            "                                 ELSE 'Campaign ' || g END, "
            "       md5('o' || g)::uuid, (%s::text[])[g %% 6 + 1], now(), now() FROM generate_series(1, 49996) g",
            (list(CAMPAIGN_STATUSES),),
        )
        conn.execute(
            "INSERT INTO campaigns (id, name, owner_id, status, created_at, updated_at) VALUES "
            "(gen_random_uuid(), '100% done', gen_random_uuid(), 'running', now(), now()), "
            "(gen_random_uuid(), '1000 done', gen_random_uuid(), 'running', now(), now()), "
            "(gen_random_uuid(), 'snake_case', gen_random_uuid(), 'running', now(), now()), "
            "(gen_random_uuid(), 'snakeXcase', gen_random_uuid(), 'running', now(), now())"
        )
        conn.execute(  # Spring Survey N has N / 1000 contacts
            "INSERT INTO contacts (id, campaign_id, phone_number, state, attempt_count, created_at, updated_at) "
            "SELECT gen_random_uuid(), c.id, '+15550000000', 'pending', 0, now(), now() "
            "FROM campaigns c JOIN generate_series(1, 50) k ON k <= split_part(c.name, ' ', 3)::int / 1000 "
            "WHERE c.name LIKE 'Spring Survey %'"
        )
        everything = conn.execute("SELECT id::text, name, status FROM campaigns").fetchall()
    assert len(everything) == 50_000

    def expected(text: str, status: str | None = None) -> list[tuple[str, str, str]]:
        return sorted(
            (
                row
                for row in everything
                if (text.casefold() in row[1].casefold() or text.lower() in row[0]) and status in (None, row[2])
            ),
            key=lambda row: (row[1].lower(), row[0]),
        )

    some_id = everything[12_345][0]
    searches = [
        ("spring SURVEY", None, 10),
        ("Spring survey", "running", 100),
        (some_id.upper(), None, 5),
        (some_id[9:23], None, 5),
        ("100%", None, 5),
        ("snake_", None, 5),
        ("", "paused", 3),
    ]
    timings = []
    with open_catalog(pg_url) as catalog:
        for text, status, limit in searches:
            started = time.perf_counter()
            page = catalog.search(text, status, limit)
            timings.append(time.perf_counter() - started)
            matches = expected(text, status)
            assert page.total == len(matches) and page.total > 0
            assert [(c.id, c.name, c.status) for c in page.campaigns] == matches[:limit]
            assert all(
                c.contacts == (int(c.name.split()[2]) // 1000 if c.name.startswith("Spring Survey ") else 0)
                for c in page.campaigns
            )
    assert [c.name for c in catalog_page(pg_url, "100%")] == ["100% done"]  # LIKE's own characters match themselves
    assert [c.name for c in catalog_page(pg_url, "snake_")] == ["snake_case"]

    started = time.perf_counter()
    listed = run_cli(
        ["campaigns", "--search", "spring SURVEY", "--limit", "3"],
        tmp_path,
        EXPORTS_SOURCE_URL=pg_url,
        EXPORTS_DESTINATION=str(tmp_path / "out"),
    )
    command_seconds = time.perf_counter() - started
    assert listed.returncode == 0, listed.stderr
    first = expected("spring SURVEY")[:3]
    assert [row[:3] for row in table_rows(listed.stdout)] == [list(row) for row in first]
    assert all(row[4:] == ["-", "-"] for row in table_rows(listed.stdout))  # never exported
    assert listed.stdout.splitlines()[-1] == (
        f"3 of {len(expected('spring SURVEY'))} campaigns shown: narrow with --search or --status, or raise --limit"
    )
    with capsys.disabled():  # measured, not asserted: the suite shares the machine
        print(
            f"\ncampaigns search at 50,000 campaigns: {', '.join(f'{t * 1000:.0f} ms' for t in timings)}; "
            f"the command: {command_seconds:.2f} s"
        )


def catalog_page(url: str, text: str):
    with open_catalog(url) as catalog:
        return catalog.search(text, None, 10).campaigns

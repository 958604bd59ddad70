"""Shared fixtures: every test run makes its own PostgreSQL databases and drops them."""
from __future__ import annotations

import os
import uuid

import psycopg
import pytest

ADMIN_URL = os.environ.get("EXPORTS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _server_url(database: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@pytest.fixture
def make_pg_database():
    """Factory: a new, empty PostgreSQL database per call, dropped when the test ends."""
    created: list[str] = []

    def make() -> str:
        name = f"exports_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _server_url(name)

    yield make
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(make_pg_database) -> str:
    return make_pg_database()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'source.sqlite'}"


FAKE_AWS_SECRET = "moto-secret-key-never-shown"  # tests assert it appears in no log, metadata or error


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 API server over HTTP on loopback for the session, with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.setenv("AWS_ACCESS_KEY_ID", "moto-access-key")
        env.setenv("AWS_SECRET_ACCESS_KEY", FAKE_AWS_SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A new, empty bucket on the moto server."""
    import boto3

    name = f"exports-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name

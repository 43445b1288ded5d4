"""Shared fixtures: a real Mosquitto broker, a real PostgreSQL server and a real (tiny, untrained) int8 model bundle."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

from tests.support.broker import Broker, mosquitto_available
from tests.support.paths import REPO
from tests.support.postgres import PgServer, postgres_available


@pytest.fixture
def broker(tmp_path):
    """A running Mosquitto on a free loopback port (anonymous allowed, persistence on)."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def broker_factory(tmp_path):
    """Make brokers with custom settings: ``broker_factory(extra_conf=..., allow_anonymous=False)``."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    made: list[Broker] = []

    def make(name: str = "custom", **kwargs) -> Broker:
        b = Broker(tmp_path / f"mosquitto-{name}-{len(made)}", **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (apt ``postgresql``, driver ``psycopg``), skipped where missing."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed (pip install -e '.[dev]')")
    server = PgServer().start()
    yield server
    server.stop()


_DB_NUMBERS = itertools.count(1)


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_server.create_database(f"test_{next(_DB_NUMBERS)}")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real int8 bundle of an untrained width-0.5 mini-Xception (TensorFlow needed to build it)."""
    from tests.support.bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from this checkout the way a user builds it (pip, isolated build)."""
    import shutil
    import subprocess
    import sys

    repo = REPO
    src = tmp_path_factory.mktemp("wheel-src")
    # A copy of what git tracks or would track, so local build outputs (egg-info, build/) cannot leak in.
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        if (repo / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"building the wheel failed: {r.stderr[-2000:]}")
    [wheel] = out.glob("emotion_edge-*.whl")
    return wheel

"""Shared fixtures: a real Mosquitto broker and a real (tiny, untrained) int8 model bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.broker import Broker, mosquitto_available

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fer2013"


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
def tiny_bundle(tmp_path_factory) -> Path:
    """A real int8 bundle of an untrained width-0.5 mini-Xception (TensorFlow needed to build it)."""
    from tests.model_fixture import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))

"""What the tests and the benchmarks share: real servers on free loopback ports (Mosquitto, PostgreSQL, sshd-free
Chromium), a tiny real int8 bundle, MQTT traffic and schema checks, push keys and bundles, hostile input.

Benchmarks import it as ``tests.support`` when run from the repository root with ``PYTHONPATH=.``."""

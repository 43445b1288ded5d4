"""What the tests and the benchmarks share, one module per concern: ``paths`` (the checkout, the shared data),
``broker`` (a real Mosquitto on a free loopback port), ``postgres`` (a real PostgreSQL), ``browser`` (a real
headless Chromium), ``bundles`` (a tiny real int8 bundle), ``mqtt`` (a subscriber, sink configs, message bodies,
the schema validator), ``push`` (signing keys, bundle copies, a simulated fleet), ``hostile`` (the daemon as a
process, fuzz payloads), ``daemon`` (an in-memory sink, a demo config), ``cli`` (``python -m edge`` as a
subprocess), ``synthetic`` (learnable training faces), ``ha_schema`` (Home Assistant's discovery rules).

Benchmarks import it as ``tests.support`` when run from the repository root with ``PYTHONPATH=.``."""

"""Benchmarks run by hand, never by CI: each prints our figure beside a reference from the same run.

Run one from the repository root as a module, e.g. ``.venv/bin/python -m
bench.dataplane --help``; docs/performance.md has the commands and figures.

The benches (one module each): ``dataplane`` (packets/s, loss, latency),
``handshakes`` (handshakes/s, relaying during a bind flood), ``allocations``
(HTTP API and operator), ``memory`` (bytes per endpoint), ``stalls``
(event-loop stalls), ``fastpath`` (the kernel fast path), ``workers`` and
``handshakes_workers`` (every core), ``operator_scale`` (the operator at
10 000), ``apiserver_idle`` (the reporters' cost to the API server),
``tailnet`` (MB/s and CPU per MB through our relay and tailscaled's in a
tailnet) and ``fuzz`` (long fuzzing). What they share: ``processes``
(starting, pinning, measuring and stopping servers), ``sockets`` (UDP
sockets and queues), ``clients`` (key pairs and allocation), ``binder``
(bind handshakes), ``report`` (tables, percentiles, ratios) and ``c`` (the C
programs, built with gcc at run time).
Test support code comes from ``tests.support``.
"""

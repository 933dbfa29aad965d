"""forkserver.metrics_http: the template's selector-driven /metrics endpoint, over real loopback sockets."""

from __future__ import annotations

import selectors
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from forkserver.metrics_http import MAX_CONNECTIONS, REQUEST_DEADLINE, MetricsEndpoint


@pytest.fixture
def endpoint():
    sel = selectors.DefaultSelector()
    ep = MetricsEndpoint(sel, 0, lambda: b"walredo_template_spawns_total 3.0\n")
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, events in sel.select(0.05):
                key.data(events)
            ep.sweep()

    t = threading.Thread(target=loop)
    t.start()
    yield ep
    stop.set()
    t.join()
    ep.close()
    sel.close()


def test_serves_metrics_and_404(endpoint):
    with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert r.read() == b"walredo_template_spawns_total 3.0\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/other", timeout=5)
    assert info.value.code == 404


def test_slow_and_flooding_clients_are_bounded(endpoint):
    idle = [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(MAX_CONNECTIONS + 4)]
    try:
        time.sleep(0.3)
        assert len(endpoint.sockets()) - 1 <= MAX_CONNECTIONS
        deadline = time.monotonic() + REQUEST_DEADLINE + 5
        while len(endpoint.sockets()) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(endpoint.sockets()) == 1  # every silent connection closed after the deadline
    finally:
        for s in idle:
            s.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/", timeout=5) as r:
        assert r.status == 200

"""The suite-wide network guard really refuses non-local connections."""

import socket

import pytest


def test_remote_connection_is_refused():
    with pytest.raises(RuntimeError, match="must not touch the network"):
        socket.create_connection(("8.8.8.8", 53), timeout=1)


def test_name_resolution_is_refused():
    with pytest.raises(RuntimeError, match="must not touch the network"):
        socket.getaddrinfo("storage.googleapis.com", 443)


def test_loopback_is_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()


def test_four_fake_devices(num_devices):
    assert num_devices == 4

"""sd_notify against a fake service manager: a datagram socket bound where NOTIFY_SOCKET says."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from zramd import notify


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A bound AF_UNIX datagram socket in tmp_path, and an environment pointing at it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


@pytest.fixture
def abstract_manager() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    name = f"zramd-test-notify-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        yield sock, {"NOTIFY_SOCKET": "@" + name}
    finally:
        sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_reaches_a_path_socket(manager: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = manager
    assert notify.ready("serving 2 devices", environ=env) is True
    assert received(sock) == {"READY": "1", "STATUS": "serving 2 devices"}


def test_ready_reaches_an_abstract_socket(
    abstract_manager: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = abstract_manager
    assert notify.ready(environ=env) is True
    assert received(sock) == {"READY": "1"}


def test_stopping_status_extend_and_mainpid(manager: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = manager
    notify.stopping("swapoff /dev/nbd0", environ=env)
    assert received(sock) == {"STOPPING": "1", "STATUS": "swapoff /dev/nbd0"}
    notify.status("2 devices attached", environ=env)
    assert received(sock) == {"STATUS": "2 devices attached"}
    notify.extend_timeout(30, environ=env)
    assert received(sock) == {"EXTEND_TIMEOUT_USEC": "30000000"}
    notify.ready(mainpid=1234, environ=env)
    assert received(sock) == {"READY": "1", "MAINPID": "1234"}


def test_one_datagram_per_call(manager: tuple[socket.socket, dict[str, str]]) -> None:
    """Each call is exactly one message: READY and STATUS arrive together, never split."""
    sock, env = manager
    notify.ready("a", environ=env)
    notify.status("b", environ=env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=a\n"
    assert sock.recv(4096) == b"STATUS=b\n"


def test_no_notify_socket_is_a_no_op(tmp_path: Path) -> None:
    assert notify.ready("x", environ={}) is False
    assert notify.stopping(environ={"NOTIFY_SOCKET": ""}) is False


def test_default_environment_is_os_environ(
    manager: tuple[socket.socket, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = manager
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert notify.ready() is True
    assert received(sock) == {"READY": "1"}
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify.ready() is False


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", "@", "/" + "x" * 107])
def test_malformed_notify_socket_is_refused(value: str) -> None:
    with pytest.raises(notify.NotifyError, match="NOTIFY_SOCKET"):
        notify.ready(environ={"NOTIFY_SOCKET": value})


def test_nobody_listening_is_an_error_naming_the_socket(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(notify.NotifyError, match=str(missing)):
        notify.ready(environ={"NOTIFY_SOCKET": str(missing)})


@pytest.mark.parametrize(
    "fields", [{"STATUS": "two\nlines"}, {"status": "x"}, {"A=B": "1"}, {"STATUS": "nul\0"}, {}]
)
def test_bad_fields_are_refused_before_anything_is_sent(
    manager: tuple[socket.socket, dict[str, str]], fields: dict[str, str]
) -> None:
    sock, env = manager
    with pytest.raises(ValueError, match="sd_notify"):
        notify.notify(fields, environ=env)
    with pytest.raises(ValueError, match="sd_notify"):
        notify.notify(fields, environ={})  # refused even outside systemd: a bug either way
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_extend_timeout_needs_a_positive_time() -> None:
    with pytest.raises(ValueError, match="positive"):
        notify.extend_timeout(0, environ={})


def test_child_environment_drops_notify_socket() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "PATH": "/bin"}
    assert notify.child_environ(env) == {"PATH": "/bin"}
    assert env["NOTIFY_SOCKET"] == "/run/systemd/notify"  # the caller's copy is untouched

"""Tell the service manager how the server is doing: sd_notify(3) without libsystemd.

A service started with ``Type=notify`` gets ``$NOTIFY_SOCKET``: an ``AF_UNIX`` datagram socket,
given as an absolute path or as ``@name`` for the abstract namespace. Each message is one
datagram of ``KEY=VALUE`` lines. zramd sends:

* ``READY=1`` once the server is usable (the socket listens, the control tree is mounted);
* ``STOPPING=1`` when a stop begins (SIGTERM), so ``systemctl`` shows "deactivating";
* ``STATUS=...`` one line of free text that ``systemctl status`` shows;
* ``EXTEND_TIMEOUT_USEC=...`` while a long stop step (a swapoff) still makes progress;
* ``MAINPID=...`` only when a process other than the main one speaks for it (with
  ``NotifyAccess=all``).

Without ``$NOTIFY_SOCKET`` (not started by systemd, or not ``Type=notify``) every call is a
no-op that returns False, as sd_notify() returns 0. Only ``AF_UNIX`` addresses are supported;
systemd's ``vsock:`` form is refused with a message naming it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

#: sun_path holds 108 bytes including the terminating NUL (unix(7)); an abstract name 107
_SUN_PATH_MAX = 107
_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")


class NotifyError(OSError):
    """``$NOTIFY_SOCKET`` is malformed, or sending to it failed; the message names it."""


def _address(value: str) -> str:
    if value.startswith("@"):
        address = "\0" + value[1:]
    elif value.startswith("/"):
        address = value
    else:
        raise NotifyError(
            f"NOTIFY_SOCKET={value!r}: expected an absolute path or an @abstract name "
            "(zramd speaks AF_UNIX only)"
        )
    if len(os.fsencode(address)) > _SUN_PATH_MAX or address == "\0":
        raise NotifyError(f"NOTIFY_SOCKET={value!r}: not a valid AF_UNIX address")
    return address


def _message(fields: Mapping[str, str]) -> bytes:
    lines = []
    for key, value in fields.items():
        if not _KEY.match(key):
            raise ValueError(f"sd_notify field {key!r}: keys are upper-case ASCII words")
        if "\n" in value or "\0" in value:
            raise ValueError(f"sd_notify {key}={value!r}: a value is a single line")
        lines.append(f"{key}={value}")
    if not lines:
        raise ValueError("sd_notify: nothing to send")
    return ("\n".join(lines) + "\n").encode()


def notify(fields: Mapping[str, str], *, environ: Mapping[str, str] | None = None) -> bool:
    """Send one datagram of ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET``.

    ``environ`` defaults to ``os.environ``. Returns False when ``NOTIFY_SOCKET`` is unset or
    empty (nothing was sent), True once the datagram is sent. ValueError for a field that is
    not ``KEY=one line``; NotifyError for a malformed ``NOTIFY_SOCKET`` or a failed send (no
    listener at the path, a full queue): a service manager that cannot hear READY=1 times the
    start out, so the caller should report it.
    """
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    data = _message(fields)
    if not target:
        return False
    address = _address(target)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(data, address)
        except OSError as e:
            raise NotifyError(
                e.errno, f"sd_notify to NOTIFY_SOCKET={target}: {e.strerror}"
            ) from None
    return True


def ready(
    status: str | None = None,
    *,
    mainpid: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """``READY=1`` (with ``STATUS=`` if given). ``mainpid`` adds ``MAINPID=``: only for a
    process that is not the service's main one and speaks for it (it needs NotifyAccess=all).
    Same returns and errors as notify()."""
    fields = {"READY": "1"}
    if status is not None:
        fields["STATUS"] = status
    if mainpid is not None:
        fields["MAINPID"] = str(mainpid)
    return notify(fields, environ=environ)


def stopping(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1`` (with ``STATUS=`` if given): the stop has begun."""
    fields = {"STOPPING": "1"}
    if status is not None:
        fields["STATUS"] = status
    return notify(fields, environ=environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """``STATUS=text``: one line that ``systemctl status`` shows."""
    return notify({"STATUS": text}, environ=environ)


def extend_timeout(seconds: float, *, environ: Mapping[str, str] | None = None) -> bool:
    """``EXTEND_TIMEOUT_USEC``: the current start or stop step needs ``seconds`` more from now
    (systemd 236+; send it again before it runs out, e.g. while a swapoff makes progress)."""
    if not seconds > 0:
        raise ValueError(f"extend_timeout({seconds!r}): expected a positive number of seconds")
    return notify({"EXTEND_TIMEOUT_USEC": str(round(seconds * 1_000_000))}, environ=environ)


def child_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without ``NOTIFY_SOCKET``, for children (nbdkit, mkfs, ...):
    only the main process speaks for the service (sd_notify's ``unset_environment``)."""
    env = dict(os.environ if environ is None else environ)
    env.pop("NOTIFY_SOCKET", None)
    return env

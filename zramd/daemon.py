"""``zramd serve`` as a service's main process, and host setup around a running server.

What the shipped unit runs (``zramd serve --foreground --config /etc/zramd/zramd.conf``):

1. The configuration (genconf.py) is read while errors still reach the terminal. nbdkit
   starts with exactly the configured device ids (``device_ids=0,2``: one device per
   ``[zramN]`` section, gaps included), uninitialised, as a direct child of serve in its own
   process group (a Ctrl-C reaches serve alone) and without ``NOTIFY_SOCKET``.
2. Once the socket listens and the control tree is mounted (``supervise.start_server``), each
   device is configured through its control files and set up on this host (``attach.setup``:
   nbd-client, mkswap + swapon or mkfs + mount), every step recorded next to the pidfile
   (``record_path``); with ``--no-attach`` only configured (``attach.configure``).
3. ``READY=1`` with a ``STATUS=`` line naming what serves what (notify.py).
4. SIGTERM, SIGINT or SIGHUP: ``STOPPING=1``; the teardown in reverse (swapoff or umount,
   ``nbd-client -d``, reset), the stop timeout extended while a swapoff makes progress
   (``SwapoffProgress``); then nbdkit is stopped as ``zramd stop`` stops it (SIGTERM, SIGKILL
   2 s before STOP_TIMEOUT) and its socket, pidfile and mount are cleaned up. A teardown that
   fails (a swapoff refused for lack of memory) leaves nbdkit serving, since a swap still in
   use lives in it: STATUS says so, and the teardown is tried again every RETRY_INTERVAL
   seconds and at every further signal, until it succeeds or the service manager kills the
   unit at the end of its stop timeout.

Signals only set a flag and wake the wait (``Signals``): a step in progress (an mkfs, a
swapoff) is never cut short; the stop follows it. ``zramd stop`` runs the same teardown before
it signals nbdkit, and ``zramd setup``/``teardown`` run steps 2 and 4's teardown against a
server that is already running. Setups and teardowns of one runtime directory take turns
(``locked``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from zramd import attach, genconf, notify
from zramd.devices import device_name
from zramd.errors import ServeError
from zramd.runstate import Server, clean_up, exit_text, find_server, pidfd, read_pid
from zramd.supervise import STOP_TIMEOUT, Running, kill_after, stop
from zramd.zramctl import ControlTree

#: the configuration the shipped unit names
DEFAULT_CONFIG = Path("/etc/zramd/zramd.conf")
#: seconds between two attempts of a teardown that failed, while the stop waits for it
RETRY_INTERVAL = 10.0
#: seconds of stop timeout asked for (EXTEND_TIMEOUT_USEC) each time a swapoff makes progress
EXTEND_TIMEOUT = 30.0
#: the signals that stop a serving zramd
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

Report = Callable[[str], None]


# -- configuration and records ----------------------------------------------------------------


def read_config(path: Path) -> genconf.Config:
    """The devices ``path`` (and its ``path.d/*.conf`` drop-ins) configures, with this host's
    MemTotal as ``ram``. ServeError naming file, line, section and key for a bad file."""
    try:
        return genconf.read_config(genconf.config_files(path))
    except genconf.ConfigError as e:
        raise ServeError(str(e)) from None


def plugin_keys(config: genconf.Config) -> list[str]:
    """The plugin keys that create exactly the configured devices, uninitialised (attach
    configures them through their control files, as zram-generator configures sysfs)."""
    return ["device_ids=" + ",".join(str(d.id) for d in config.devices)]


def record_path(pidfile: Path) -> Path:
    """Where setup records what it did for the server holding ``pidfile``: beside it, named
    after it (``/run/zramd/zramd.pid`` -> ``/run/zramd/zramd.attached.json``)."""
    return pidfile.with_suffix(".attached.json")


@contextlib.contextmanager
def locked(record: Path) -> Iterator[None]:
    """Hold an exclusive flock on the record's directory: a ``systemctl stop`` and a
    ``zramd teardown`` never run swapoff on the same device at once."""
    fd = os.open(record.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def recorded(record: Path) -> list[attach.Attached]:
    """The devices the record lists as set up (none without a record)."""
    return attach.State.load(record).devices


# -- setting up and taking down ---------------------------------------------------------------


def ensure_devices(tree: ControlTree, ids: Iterable[int], log: Report) -> None:
    """Make a running server serve every id in ``ids`` the way zram-generator makes the kernel
    do it (generator.rs: read ``zram-control/hot_add`` until the device exists). hot_add gives
    the lowest free id, so every missing id is reached; devices added on the way that nobody
    asked for are hot-removed again. ControlFileError if hot_add fails (ENOSPC)."""
    wanted = set(ids)
    present = set(tree.device_ids())
    extra = []
    while not wanted <= present:
        new = tree.hot_add()
        if new in present:  # a hot_add that does not add: give up rather than loop
            raise ServeError(f"zram-control/hot_add answered {new}, which exists already")
        present.add(new)
        if new not in wanted:
            extra.append(new)
        else:
            log(f"{device_name(new)}: added (zram-control/hot_add)")
    for dev_id in extra:
        tree.hot_remove(dev_id)


def set_up(
    config: genconf.Config,
    control: Path,
    *,
    sock: Path | None,
    record: Path | None,
    host: attach.Host | None = None,
    log: Report,
) -> list[attach.Attached]:
    """Configure every device of ``config`` through ``control`` and set it up on this host
    through ``sock`` (attach.setup, recorded in ``record``); with ``record`` None, only
    configure (attach.configure) and return []. Nothing at all without devices (all of them
    skipped by host-memory-limit, say). AttachError as those raise it."""
    if not config.devices:
        return []
    if record is None:
        attach.configure(config.devices, control, host=host, log=log)
        return []
    if sock is None:
        raise ServeError("setting devices up on this host needs the server's Unix socket")
    where = attach.targets(config.devices, sock, control)
    with locked(record):
        return attach.setup(config.devices, where, state=record, host=host, log=log)


def tear_down(record: Path, *, host: attach.Host | None = None, log: Report) -> None:
    """attach.teardown of what ``record`` lists, under the lock (nothing to do without a
    record). AttachError names every device left attached."""
    if not record.parent.is_dir():
        return
    with locked(record):
        attach.teardown(state=record, host=host, log=log)


def _use(rec: attach.Attached) -> str:
    if rec.fs_type == "swap":
        return f"swap on {rec.nbd}"
    where = f" at {rec.mount_point}" if rec.mount_point else ""
    return f"{rec.fs_type} on {rec.nbd}{where}"


def status_line(names: Sequence[str], where: str, attached: Sequence[attach.Attached]) -> str:
    """One line for STATUS= (``systemctl status``): the devices served and what uses them."""
    what = ", ".join(names) if names else "no device"
    line = f"serving {what} on {where}"
    if attached:
        line += "; " + ", ".join(f"{r.name}: {_use(r)}" for r in attached)
    return line


# -- talking to the service manager -----------------------------------------------------------


@dataclass
class Notifier:
    """sd_notify calls that never stop the server: a failure is reported once (a manager that
    cannot hear READY=1 times the start out, which the log then explains)."""

    report: Report
    environ: Mapping[str, str] | None = None
    failed: bool = False

    def __call__(self, fields: Mapping[str, str]) -> None:
        try:
            notify.notify(fields, environ=self.environ)
        except notify.NotifyError as e:
            if not self.failed:
                self.report(f"zramd: warning: {e}")
            self.failed = True

    def status(self, text: str) -> None:
        self({"STATUS": text})


@dataclass
class SwapoffProgress:
    """``attach.Host.progress`` during a stop: while the device a swapoff empties holds less
    swap than at the previous look (``swaps()``: device -> KiB, as /proc/swaps says), the stop
    timeout is extended by EXTEND_TIMEOUT s; STATUS= says how much is left either way. A
    swapoff that stalls gets no extension, and the service manager's timeout ends it."""

    tell: Notifier
    swaps: Callable[[], Mapping[str, int]]
    last: dict[str, int] = field(default_factory=dict)

    def start(self) -> None:
        """The amounts before the teardown: the first look compares with these."""
        self.last = dict(self.swaps())

    def __call__(self, argv: Sequence[str]) -> None:
        if argv[0] != "swapoff":
            return
        dev = argv[-1]
        try:
            used = self.swaps().get(dev)
        except (OSError, ValueError):
            return
        if used is None:
            return
        before = self.last.get(dev)
        self.last[dev] = used
        fields = {"STATUS": f"stopping: swapoff {dev}: {used // 1024} MiB still in swap"}
        if before is None or used < before:
            fields["EXTEND_TIMEOUT_USEC"] = str(round(EXTEND_TIMEOUT * 1_000_000))
        self.tell(fields)


# -- signals ----------------------------------------------------------------------------------


class Signals:
    """For the duration of a ``with`` block, STOP_SIGNALS are recorded instead of acted on, and
    ``wait`` wakes up for them (``signal.set_wakeup_fd``). Only in the main thread."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self._old: dict[int, object] = {}
        self._old_fd = -1
        self._r = self._w = -1

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def __enter__(self) -> Signals:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]  # what signal() returned
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._r)
        os.close(self._w)

    def take(self) -> int | None:
        """The first signal received and not yet taken, else None."""
        return self.pending.pop(0) if self.pending else None

    def wait(self, fds: Sequence[int], timeout: float | None) -> None:
        """Until a signal arrives, one of ``fds`` is readable (a pidfd: that process exited)
        or ``timeout`` seconds pass (None: no limit)."""
        if self.pending:
            return
        poller = select.poll()
        for fd in (self._r, *fds):
            poller.register(fd, select.POLLIN)
        poller.poll(None if timeout is None else max(0, round(timeout * 1000)))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 64):
                pass


# -- the foreground server --------------------------------------------------------------------


def stop_child(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> tuple[int, bool]:
    """Stop a foreground nbdkit as ``zramd stop`` would: SIGTERM, SIGKILL after
    ``kill_after(timeout)`` s (nbdkit 1.32 waits for every connected client). (Exit status as
    a shell reports it, whether it had to be killed.)"""
    killed = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(kill_after(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed = True
    rc = proc.returncode
    return (128 - rc if rc < 0 else rc), killed


def stop_started(running: Running, report: Report) -> None:
    """Stop a server this process started (after a failed setup or an early signal): the
    foreground child directly, a background one as ``zramd stop`` does; then clean up."""
    opts = running.options
    if opts.foreground:
        status, _ = stop_child(running.proc)
        for line in clean_up(opts.pidfile, opts.socket, opts.control).lines():
            report(f"zramd: {line}")
        report(f"zramd: {exit_text(status)}")
        return
    stopped = stop(opts.pidfile, opts.socket, STOP_TIMEOUT)
    for line in stopped.cleanup.lines():
        report(f"zramd: {line}")


def serve_foreground(
    running: Running,
    signals: Signals,
    *,
    record: Path | None,
    status: str,
    report: Report,
    tell: Notifier,
    host: attach.Host | None = None,
) -> int:
    """Announce READY=1 and serve until a stop signal or nbdkit's own exit; stop as the module
    docstring says. The exit status as a shell reports nbdkit's (0 after a clean stop)."""
    proc = running.proc
    opts = running.options
    child = os.pidfd_open(proc.pid)
    tell({"READY": "1", "STATUS": status})
    progress = SwapoffProgress(tell, attach.Host().swaps)
    host = host or attach.Host(progress=progress)
    stopping = retrying = killed = False
    try:
        while proc.poll() is None:
            signals.wait([child], RETRY_INTERVAL if retrying else None)
            if proc.poll() is not None:
                break
            sig = signals.take()
            if sig is None and not retrying:
                continue
            if not stopping:
                name = signal.Signals(sig).name if sig is not None else "stop"
                report(f"zramd: {name}: stopping")
                what = "taking the devices down" if record is not None else "stopping nbdkit"
                tell({"STOPPING": "1", "STATUS": f"stopping: {what}"})
                stopping = True
            if record is not None:
                try:
                    progress.start()
                    tear_down(record, host=host, log=lambda m: report(f"zramd: {m}"))
                except (attach.AttachError, OSError) as e:
                    retrying = True
                    text = f"stop refused, nbdkit keeps serving: {e}"
                    report(f"zramd: {text} (retried every {RETRY_INTERVAL:g} s)")
                    tell.status(text)
                    continue
            # nbdkit's own stop may take STOP_TIMEOUT whatever the teardown took
            tell({"STATUS": "stopping nbdkit",
                  "EXTEND_TIMEOUT_USEC": str(round((STOP_TIMEOUT + 10) * 1_000_000))})  # fmt: skip
            _, killed = stop_child(proc)
    finally:
        os.close(child)
    rc = proc.wait()
    code = 128 - rc if rc < 0 else rc
    if killed:
        report(f"zramd: nbdkit did not exit within {kill_after(STOP_TIMEOUT):g} s of SIGTERM "
               "(it waits for every connected client); killed it (SIGKILL)")  # fmt: skip
    for line in clean_up(opts.pidfile, opts.socket, opts.control).lines():
        report(f"zramd: {line}")
    if record is not None and not stopping:
        with contextlib.suppress(attach.AttachError):
            left = recorded(record)
            if left:
                names = ", ".join(f"{r.name} ({r.nbd})" for r in left)
                report(f"zramd: nbdkit exited while {names} were set up on this host; take them "
                       "down with `zramd teardown`")  # fmt: skip
    if code or killed:
        report(f"zramd: {exit_text(code)}")
    return code


# -- a server that is already running ---------------------------------------------------------


def find_running(pidfile: Path) -> Server:
    """The zramd server holding ``pidfile`` (checked as ``zramd stop`` checks it). ServeError
    when there is none."""
    try:
        pid = read_pid(pidfile)
    except FileNotFoundError:
        raise ServeError(f"no server: no pidfile at {pidfile}") from None
    if pid is None:
        raise ServeError(f"no server: {pidfile} holds no pid (a server may be starting)")
    fd = pidfd(pid)
    if fd is None:
        raise ServeError(f"no server: {pidfile} is stale (process {pid} is gone)")
    try:
        server, why = find_server(pid, pidfile)
    finally:
        os.close(fd)
    if server is None:
        raise ServeError(f"no server: {pidfile} is stale ({why})")
    return server

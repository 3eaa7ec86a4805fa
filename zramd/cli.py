"""The ``zramd`` command: parse, call, print. A command's docstring is its help.

Serving and stopping are ``supervise.py``; every other subcommand reads and writes control
files through ``zramctl.py``, exactly as a script would with ``cat`` and ``echo``. Commands
that act on one device take ``--device N`` (default zram0); ``status`` lists them all, as
zramctl does. A zramd error (ZramdError) ends the command with its one-line message and exit
status 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

import zramd
from zramd import supervise, zramctl
from zramd.compress import DEFAULT, available
from zramd.devices import MAX_DEVICES, device_name
from zramd.errors import ZramdError
from zramd.parse import parse_size
from zramd.runstate import (
    default_control,
    default_log,
    default_pidfile,
    default_socket,
    private_dir,
    runtime_dir,
)
from zramd.zramctl import ControlFiles, ControlTree, human_size

T = TypeVar("T")


class _Group(click.Group):
    """Turns a ZramdError into click's one-line error (``Error: ...``, exit status 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZramdError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(zramd.__version__)
def main() -> None:
    """Compressed RAM block devices served over NBD (Linux's zram, in userspace)."""


def _parsed(
    parse: Callable[[str, str], T],
) -> Callable[[click.Context, click.Parameter, str | None], T | None]:
    """A click callback: ``parse(value, option name)``, its ValueError a usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return parse(value, param.name or "value")
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return callback


_size = _parsed(lambda value, name: parse_size(value, what=name))
_tcp = _parsed(lambda value, name: supervise.parse_tcp(value))
_device = _parsed(lambda value, name: zramctl.parse_device(value))


@main.command()
@click.option(
    "--devices",
    default=1,
    show_default=True,
    type=click.IntRange(0, MAX_DEVICES),
    help="Devices to create, zram0..zramN-1 (like zram's num_devices); each gets the options "
    "below, and zram-control/hot_add adds more.",
)
@click.option("--size", default="1G", show_default=True, callback=_size, help="Disk size.")
@click.option(
    "--algorithm",
    default=DEFAULT,
    show_default=True,
    type=click.Choice(available()),
    help="Compression algorithm.",
)
@click.option("--level", type=int, help="Compression level (algorithm-specific).")
@click.option("--mem-limit", callback=_size, help="Pool memory limit (0 = none).")
@click.option(
    "--backing-dev",
    metavar="FILE|URI",
    help="Where `writeback` sends cold pages: a file, block device or NBD URI.",
)
@click.option(
    "--recomp-algorithm",
    metavar="NAME[,NAME...]",
    help="Secondary algorithms for `recompress`, priority 1 first (e.g. zstd).",
)
@click.option("--socket", "sock", type=click.Path(path_type=Path), help="Unix socket to serve on.")
@click.option(
    "--tcp",
    metavar="[HOST:]PORT",
    callback=_tcp,
    help="Serve over TCP instead of the Unix socket (HOST defaults to 127.0.0.1).",
)
@click.option(
    "--tls",
    type=click.Choice(["off", "on", "require"]),
    help="nbdkit's TLS mode (default: require when credentials are given, else off).",
)
@click.option(
    "--tls-certificates",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory of X.509 certificates (nbdkit-tls(1)).",
)
@click.option(
    "--tls-psk",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Pre-shared keys file (username:hexkey lines, mode 0600).",
)
@click.option("--tls-verify-peer", is_flag=True, help="Require and verify client certificates.")
@click.option("--control", type=click.Path(path_type=Path), help="Control directory to mount.")
@click.option("--no-control", is_flag=True, help="Serve without a control directory.")
@click.option("--pidfile", type=click.Path(path_type=Path), help="Where nbdkit writes its pid.")
@click.option("--log", "logfile", type=click.Path(path_type=Path), help="Server log (background).")
@click.option("--auto-compact", default=30, show_default=True, help="Seconds between checks.")
@click.option(
    "--threads",
    default=supervise.DEFAULT_THREADS,
    show_default=True,
    type=click.IntRange(1, 64),
    help="nbdkit worker threads per connection (above 1, nbdkit 1.32 can abort when a client "
    "vanishes mid-request: docs/reliability.md).",
)
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (Ctrl-C stops).")
def serve(
    devices: int,
    size: int,
    algorithm: str,
    level: int | None,
    mem_limit: int | None,
    backing_dev: str | None,
    recomp_algorithm: str | None,
    sock: Path | None,
    tcp: tuple[str, int] | None,
    tls: str | None,
    tls_certificates: Path | None,
    tls_psk: Path | None,
    tls_verify_peer: bool,
    control: Path | None,
    no_control: bool,
    pidfile: Path | None,
    logfile: Path | None,
    auto_compact: int,
    threads: int,
    foreground: bool,
) -> None:
    """Serve compressed RAM block devices over NBD on a Unix socket (owner only), or over TCP
    when asked (--tcp; loopback unless a host is given; TLS with --tls-*).

    Each device is an export named zramN (an empty export name is zram0); the control tree
    holds zram-control/ and one zramN/ directory per device.
    """
    nbdkit = supervise.check_nbdkit()
    tls_opts = supervise.tls_args(tls, tls_certificates, tls_psk, tls_verify_peer)
    if tcp is not None and sock is not None:
        raise click.ClickException("--tcp and --socket: nbdkit serves one or the other")
    run = runtime_dir()
    sock = None if tcp is not None else (sock or default_socket()).absolute()
    control = None if no_control else (control or default_control()).absolute()
    pidfile = (pidfile or default_pidfile()).absolute()
    logfile = None if foreground else (logfile or default_log()).absolute()
    supervise.prepare_paths(run, sock, pidfile, logfile, control)
    if tcp is None:
        listen = ["-U", str(sock)]
    else:
        supervise.check_tcp(*tcp)
        listen = ["-i", tcp[0], "-p", str(tcp[1])]
        if not supervise.is_loopback(tcp[0]) and "--tls=require" not in tls_opts:
            click.echo(
                f"zramd: warning: serving on {tcp[0]}:{tcp[1]} without --tls=require: anyone "
                "who can reach it can read and write the device",
                err=True,
            )
    keys = [f"devices={devices}", f"size={size}", f"comp_algorithm={algorithm}"]
    keys.append(f"auto_compact={auto_compact}")
    if level is not None:
        keys.append(f"level={level}")
    if mem_limit is not None:
        keys.append(f"mem_limit={mem_limit}")
    if backing_dev is not None:
        spec = backing_dev if "://" in backing_dev else str(Path(backing_dev).absolute())
        keys.append(f"backing_dev={spec}")
    if recomp_algorithm is not None:
        keys.append(f"recomp_algorithm={recomp_algorithm}")
    opts = supervise.ServeOptions(
        nbdkit, listen, pidfile, sock, control, logfile, threads, tls_opts, keys, foreground
    )
    running = supervise.start_server(opts)
    pid = running.pid
    what = f"{human_size(size)} ({algorithm})"
    if devices != 1:
        last = device_name(devices - 1)
        what = f"{devices} devices (zram0..{last}), {human_size(size)} each ({algorithm})"
    if sock is not None:
        info = [
            f"zramd: serving {what} on {sock} (pid {pid})",
            f"  nbd-client:  nbd-client -unix {sock} /dev/nbd0 -N zram0 -b 4096",
            f"  qemu:        -drive file=nbd:unix:{sock},format=raw,if=virtio   (zram0)",
            f"  nbdfuse:     nbdfuse DIR/disk --unix {sock}   (then losetup -f --show DIR/disk)",
            f"  libnbd:      nbd+unix:///zram0?socket={sock}",
        ]
    else:
        assert tcp is not None
        host = f"[{tcp[0]}]" if ":" in tcp[0] else tcp[0]
        scheme = "nbd" if not tls_opts else "nbds"
        info = [
            f"zramd: serving {what} on {scheme}://{host}:{tcp[1]} (pid {pid})",
            f"  nbd-client:  nbd-client {tcp[0]} {tcp[1]} /dev/nbd0 -N zram0 -b 4096",
            f"  nbdinfo:     nbdinfo {scheme}://{host}:{tcp[1]}/zram0",
        ]
    if control is not None:
        info.append(f"  control:     {control}   (cat zram0/mm_stat; echo 1 > zram0/compact)")
    info.append(f"  data path:   {supervise.data_path()}")
    if logfile is not None:
        info.append(f"  log:         {logfile}      stop: zramd stop")
    click.echo("\n".join(info))
    if foreground:
        raise SystemExit(supervise.serve_foreground(running, lambda x: click.echo(x, err=True)))


@main.command()
@click.option("--pidfile", type=click.Path(path_type=Path), help="The server's pidfile.")
@click.option(
    "--socket", "sock", type=click.Path(path_type=Path), help="Its socket, if it is stale."
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds until stop returns: SIGTERM, then SIGKILL 2 s before the end.",
)
def stop(pidfile: Path | None, sock: Path | None, timeout: float) -> None:
    """Stop a server started by `zramd serve` within TIMEOUT, whatever its clients do.

    The pid is signalled only if /proc shows the nbdkit serving this pidfile. A server still
    there 2 s before the timeout (nbdkit waits for connected clients) is killed; its socket,
    pidfile and control mount are removed either way. A stale pidfile is removed and reported,
    and so is --socket if it is a stale socket; nothing else is ever deleted.
    """
    if (pidfile is None or sock is None) and not private_dir(runtime_dir(), create=False):
        raise click.ClickException(f"no server: {runtime_dir()} does not exist")
    pidfile = (pidfile or default_pidfile()).absolute()
    given = sock is not None
    sock = (sock or default_socket()).absolute()
    stopped = supervise.stop(pidfile, sock, timeout)
    if stopped.killed:
        click.echo(
            f"zramd: server {stopped.pid} did not exit within {stopped.grace:g} s of SIGTERM "
            "(nbdkit waits for every connected client); killed it (SIGKILL)",
            err=True,
        )
    for line in stopped.cleanup.lines():
        click.echo(f"zramd: {line}", err=True)
    if given and sock != stopped.socket:
        click.echo(f"zramd: --socket {sock} is not this server's socket: left alone", err=True)
    if stopped.cleanup.failed:
        raise click.ClickException(f"server {stopped.pid} stopped, but its state is left behind")
    click.echo(f"zramd: stopped server {stopped.pid}" + (" (killed)" if stopped.killed else ""))


control_option = click.option(
    "--control",
    type=click.Path(path_type=Path),
    default=None,
    help="Control tree (default: the one `zramd serve` mounts).",
)
device_option = click.option(
    "--device",
    "-d",
    "device",
    metavar="N",
    default="0",
    callback=_device,
    help="The device: N or zramN (default zram0).",
)


def _tree(control: Path | None) -> ControlTree:
    tree = ControlTree(zramctl.control_root(control))
    tree.check()
    return tree


def _files(control: Path | None, device: int) -> ControlFiles:
    return _tree(control).device(device)


@main.command()
@control_option
@click.option("--device", "-d", "device", metavar="N", callback=_device, help="Only this device.")
@click.option("--all", "every", is_flag=True, help="Also devices without a disksize.")
@click.option("--raw", is_flag=True, help="Use the raw output format.")
@click.option("--bytes", "-b", "raw_bytes", is_flag=True, help="Print sizes in bytes.")
@click.option("--json", "as_json", is_flag=True, help="Use JSON output.")
@click.option("--noheadings", "-n", is_flag=True, help="Don't print headings.")
@click.option("--output", "-o", help="Columns to print (comma list, +LIST appends).")
def status(
    control: Path | None,
    device: int | None,
    every: bool,
    raw: bool,
    raw_bytes: bool,
    as_json: bool,
    noheadings: bool,
    output: str | None,
) -> None:
    """Show the devices' status like zramctl: every device with a disksize (--all: every
    device; --device: that one).

    Columns: NAME DISKSIZE DATA COMPR ALGORITHM STREAMS ZERO-PAGES TOTAL MEM-LIMIT MEM-USED
    MIGRATED COMP-RATIO HUGE-PAGES RSS.
    """
    try:
        columns = zramctl.parse_columns(output)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--output") from None
    ids = None if device is None else [device]
    rows = zramctl.status_rows(_tree(control), ids, every=every)
    click.echo(
        zramctl.format_status(
            rows, columns, raw=raw, raw_bytes=raw_bytes, as_json=as_json, noheadings=noheadings
        ),
        nl=False,
    )


@main.command()
@control_option
@device_option
def compact(control: Path | None, device: int) -> None:
    """Compact the pool now (echo 1 > compact) and say what it freed."""
    click.echo(zramctl.compact(_files(control, device)))


@main.command(name="set")
@control_option
@device_option
@click.argument("attr")
@click.argument("value")
def set_(control: Path | None, device: int, attr: str, value: str) -> None:
    """Write VALUE to a device's control attribute (echo VALUE > zramN/ATTR)."""
    _files(control, device).write(attr, value + "\n")


@main.command()
@control_option
@device_option
def reset(control: Path | None, device: int) -> None:
    """Free everything and uninitialise the device (echo 1 > reset)."""
    _files(control, device).write("reset", "1\n")


@main.command()
@control_option
@device_option
@click.option("--idle", "mark", help="First mark pages idle: 'all' or an age in seconds.")
@click.argument("what", nargs=-1, required=True)
def writeback(control: Path | None, device: int, mark: str | None, what: tuple[str, ...]) -> None:
    """Write pages out to the backing device (echo WHAT > writeback).

    WHAT is idle, huge, huge_idle, incompressible, type=MODE, page_index=N or
    page_indexes=LO-HI (several indexes may be given). With --idle, pages are marked idle
    first (echo all > idle), so `zramd writeback --idle all idle` writes back everything.
    """
    click.echo(zramctl.writeback(_files(control, device), what, mark))


@main.command()
@control_option
@device_option
@click.option("--type", "kind", type=click.Choice(["idle", "huge", "huge_idle"]))
@click.option("--threshold", type=int, help="Only objects of at least this many bytes.")
@click.option("--max-pages", type=int, help="Budget: at most this many attempts.")
@click.option("--algo", help="Only this secondary algorithm.")
@click.option("--priority", type=int, help="Only the secondary algorithm of this priority.")
def recompress(
    control: Path | None,
    device: int,
    kind: str | None,
    threshold: int | None,
    max_pages: int | None,
    algo: str | None,
    priority: int | None,
) -> None:
    """Recompress stored pages with the secondary algorithms (echo ... > recompress)."""
    params: dict[str, object] = {
        "type": kind,
        "threshold": threshold,
        "max_pages": max_pages,
        "algo": algo,
        "priority": priority,
    }
    click.echo(zramctl.recompress(_files(control, device), params))


@main.command(name="hot-add")
@control_option
def hot_add(control: Path | None) -> None:
    """Add an uninitialised device (cat zram-control/hot_add) and print its name."""
    click.echo(device_name(_tree(control).hot_add()))


@main.command(name="hot-remove")
@control_option
@click.argument("device", metavar="DEVICE", callback=_device)
def hot_remove(control: Path | None, device: int) -> None:
    """Reset and remove DEVICE (N or zramN): echo N > zram-control/hot_remove.

    Refused while a client has it attached (EBUSY)."""
    _tree(control).hot_remove(device)


if __name__ == "__main__":
    main()

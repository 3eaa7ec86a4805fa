"""The ``zramd`` command: parse, call, print. A command's docstring is its help.

Serving and stopping are ``supervise.py``; every other subcommand reads and writes control
files through ``zramctl.py``, exactly as a script would with ``cat`` and ``echo``. Commands
that act on one device take ``--device N`` (default zram0); ``status`` lists them all, as
zramctl does. A zramd error (ZramdError) ends the command with its one-line message and exit
status 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

import zramd
from zramd import attach, daemon, supervise, swapmode, units, zramctl
from zramd.compress import DEFAULT, available
from zramd.devices import MAX_DEVICES, device_name
from zramd.errors import ServeError, ZramdError
from zramd.genconf import Config
from zramd.native import why_not_native
from zramd.parse import parse_size
from zramd.runstate import (
    Server,
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
    """Turns a ZramdError or AttachError into click's one-line error (``Error: ...``, exit
    status 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ZramdError, attach.AttachError) as e:
            raise click.ClickException(str(e)) from None


def _err(line: str) -> None:
    click.echo(line, err=True)


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
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="Serve the devices of this zram-generator-style file (e.g. /etc/zramd/zramd.conf) "
    "and set each up on this host as it says; --devices and the device options do not apply.",
)
@click.option(
    "--no-attach",
    is_flag=True,
    help="With --config: configure the devices but set none up on this host (clients "
    "elsewhere attach them).",
)
@click.option(
    "--swap",
    is_flag=True,
    help="Serve as this host's own swap: each device locks a pool reserve (--mem-limit, else "
    "half the disk) and its slot table, and the server mlocks itself; writes beyond the reserve "
    "fail with ENOSPC. Needs root (CAP_IPC_LOCK, CAP_SYS_RESOURCE); use swapon --discard.",
)
@click.option(
    "--foreground",
    "-f",
    is_flag=True,
    help="Stay in the foreground: a service's main process (sd_notify READY=1); SIGTERM or "
    "Ctrl-C takes the devices down, then stops nbdkit.",
)
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
    config_file: Path | None,
    no_attach: bool,
    swap: bool,
    foreground: bool,
) -> None:
    """Serve compressed RAM block devices over NBD on a Unix socket (owner only), or over TCP
    when asked (--tcp; loopback unless a host is given; TLS with --tls-*).

    Each device is an export named zramN (an empty export name is zram0); the control tree
    holds zram-control/ and one zramN/ directory per device. With --config, the devices are
    the file's [zramN] sections, configured and set up on this host (nbd-client, then swapon
    or mkfs and mount) before serve reports ready; `zramd stop` takes them down first.
    """
    config = None
    if config_file is not None:
        _check_config_options(click.get_current_context(), tcp, no_control, no_attach)
        config = daemon.read_config(config_file.absolute())
        for message in config.messages:
            _err(f"zramd: warning: {message}")
        if not config.devices:
            _err(f"zramd: warning: {config_file} configures no device: serving none")
    elif no_attach:
        raise click.UsageError("--no-attach goes with --config")
    swap = swap or (config is not None and config.swap)
    if swap:
        _check_swap(threads)
    nbdkit = supervise.check_nbdkit()
    tls_opts = supervise.tls_args(tls, tls_certificates, tls_psk, tls_verify_peer)
    if tcp is not None and sock is not None:
        raise click.ClickException("--tcp and --socket: nbdkit serves one or the other")
    run = runtime_dir()
    sock = None if tcp is not None else (sock or default_socket()).absolute()
    control = None if no_control else (control or default_control()).absolute()
    pidfile = (pidfile or default_pidfile()).absolute()
    logfile = None if foreground else (logfile or default_log()).absolute()
    if swap and logfile is not None:
        swapmode.check_log(logfile)
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
    record = None
    if config is not None and not no_attach:
        record = daemon.record_path(pidfile)
        left = daemon.recorded(record)
        if left:
            busy = ", ".join(f"{r.name} ({r.nbd or 'not connected'})" for r in left)
            raise ServeError(
                f"{record} records devices still set up on this host: {busy}; take them down "
                "first: zramd teardown"
            )
    if config is not None:
        keys = daemon.plugin_keys(config)
    else:
        keys = [f"devices={devices}", f"size={size}", f"comp_algorithm={algorithm}"]
    keys.append(f"auto_compact={auto_compact}")
    if swap:
        keys.append("swap=true")
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
        nbdkit, listen, pidfile, sock, control, logfile, threads, tls_opts, keys, foreground, swap
    )
    tell = daemon.Notifier(_err)
    with daemon.Signals() as signals:
        if foreground:
            tell.status("starting nbdkit")
        running = supervise.start_server(opts)
        attached: list[attach.Attached] = []
        names = [device_name(i) for i in range(devices)]
        if config is not None:
            attached = _set_up(config, running, record, tell if foreground else None)
            names = [d.name for d in config.devices]
        where = str(sock) if sock is not None else f"{tcp[0]}:{tcp[1]}" if tcp else ""
        status = daemon.status_line(names, where, attached)
        _print_serving(running, size, algorithm, devices, sock, tcp, tls_opts, control, logfile,
                       config, status)  # fmt: skip
        if foreground:
            raise SystemExit(
                daemon.serve_foreground(
                    running, signals, record=record, status=status, report=_err, tell=tell
                )
            )
        if signals.take() is not None:  # interrupted while starting in the background
            if record is not None:
                daemon.tear_down(record, log=_log)
            daemon.stop_started(running, _err)
            raise click.ClickException("interrupted: the server is stopped")


def _check_swap(threads: int) -> None:
    """What --swap needs before anything starts: one thread per connection (the thread that
    open() prepared serves every request), the C data path and the privileges to lock."""
    if threads != 1:
        raise click.UsageError(
            f"--swap serves each connection in the thread its open prepared: --threads {threads} "
            "cannot go with it (use 1, the default)"
        )
    why = why_not_native()
    if why is not None:
        raise click.ClickException(f"--swap needs the C data path: {why}")
    swapmode.check_privileges()
    warning = swapmode.min_free_warning()
    if warning is not None:
        _err(f"zramd: warning: {warning}")


def _check_config_options(
    ctx: click.Context, tcp: tuple[str, int] | None, no_control: bool, no_attach: bool
) -> None:
    """--config describes the devices itself: the device options do not go with it, and
    setting devices up on this host needs the socket, the control tree and root."""
    device_options = ("devices", "size", "algorithm", "level", "mem_limit", "backing_dev")
    given = [
        f"--{name.replace('_', '-')}"
        for name in (*device_options, "recomp_algorithm")
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
    ]
    if given:
        raise click.UsageError(
            f"--config describes the devices; {', '.join(given)} cannot go with it (write "
            "them into the file: zram-size, compression-algorithm, zram-resident-limit, "
            "writeback-device)"
        )
    if no_control:
        raise click.UsageError("--config configures the devices through the control tree: "
                               "--no-control cannot go with it")  # fmt: skip
    if tcp is not None and not no_attach:
        raise click.UsageError("--config sets the devices up on this host through the Unix "
                               "socket: --tcp needs --no-attach")  # fmt: skip
    if not no_attach and os.geteuid() != 0:
        raise click.UsageError("setting devices up on this host (nbd-client, swapon, mount) "
                               "needs root; --no-attach only configures them")  # fmt: skip


def _set_up(
    config: Config,
    running: supervise.Running,
    record: Path | None,
    tell: daemon.Notifier | None,
) -> list[attach.Attached]:
    """serve --config's setup once nbdkit is ready; a failure stops the server again."""
    opts = running.options
    assert opts.control is not None  # _check_config_options refused --no-control

    def log(line: str) -> None:
        _err(f"zramd: {line}")
        if tell is not None:
            tell.status(line)

    if tell is not None:
        tell.status("configuring the devices" if record is None else "setting the devices up")
    try:
        return daemon.set_up(config, opts.control, sock=opts.socket, record=record, log=log)
    except (attach.AttachError, OSError) as e:
        daemon.stop_started(running, _err)
        raise click.ClickException(f"{e}; the server is stopped") from None


def _print_serving(
    running: supervise.Running,
    size: int,
    algorithm: str,
    devices: int,
    sock: Path | None,
    tcp: tuple[str, int] | None,
    tls_opts: list[str],
    control: Path | None,
    logfile: Path | None,
    config: Config | None,
    status: str,
) -> None:
    pid = running.pid
    what = f"{human_size(size)} ({algorithm})"
    if config is not None:
        what = f"{len(config.devices)} devices of {config.files[0]}"
    elif devices != 1:
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
    if config is not None:
        info.append(f"  status:      {status}")
    if "swap=true" in running.options.plugin_keys:
        info.append("  swap mode:   reserve and server locked; swapon --discard frees pool memory")
    if logfile is not None:
        info.append(f"  log:         {logfile}      stop: zramd stop")
    click.echo("\n".join(info))


pidfile_option = click.option(
    "--pidfile", type=click.Path(path_type=Path), help="The server's pidfile (default: serve's)."
)


def _pidfile(pidfile: Path | None) -> Path:
    """--pidfile, or the default one once the runtime directory has passed its checks."""
    if pidfile is None:
        if not private_dir(runtime_dir(), create=False):
            raise click.ClickException(f"no server: {runtime_dir()} does not exist")
        pidfile = default_pidfile()
    return pidfile.absolute()


def _log(line: str) -> None:
    _err(f"zramd: {line}")


@main.command()
@pidfile_option
@click.option(
    "--socket", "sock", type=click.Path(path_type=Path), help="Its socket, if it is stale."
)
@click.option(
    "--timeout",
    default=supervise.STOP_TIMEOUT,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds until stop returns: SIGTERM, then SIGKILL 2 s before the end.",
)
def stop(pidfile: Path | None, sock: Path | None, timeout: float) -> None:
    """Stop a server started by `zramd serve` within TIMEOUT, whatever its clients do.

    What `serve --config` or `zramd setup` set up on this host is taken down first (swapoff
    or umount, nbd-client -d); if that fails (a swapoff refused for lack of memory), the
    server is left running and stop fails. The pid is signalled only if /proc shows the nbdkit
    serving this pidfile. A server still there 2 s before the timeout (nbdkit waits for
    connected clients) is killed; its socket, pidfile and control mount are removed either
    way. A stale pidfile is removed and reported, and so is --socket if it is a stale socket;
    nothing else is ever deleted.
    """
    if (pidfile is None or sock is None) and not private_dir(runtime_dir(), create=False):
        raise click.ClickException(f"no server: {runtime_dir()} does not exist")
    pidfile = (pidfile or default_pidfile()).absolute()
    given = sock is not None
    sock = (sock or default_socket()).absolute()

    def take_down(server: Server) -> None:
        try:
            daemon.tear_down(daemon.record_path(pidfile), log=_log)
        except attach.AttachError as e:
            raise ServeError(f"not stopped: {e}") from None

    stopped = supervise.stop(pidfile, sock, timeout, before=take_down)
    if stopped.killed:
        _err(
            f"zramd: server {stopped.pid} did not exit within {stopped.grace:g} s of SIGTERM "
            "(nbdkit waits for every connected client); killed it (SIGKILL)"
        )
    for line in stopped.cleanup.lines():
        _log(line)
    if given and sock != stopped.socket:
        _err(f"zramd: --socket {sock} is not this server's socket: left alone")
    if stopped.cleanup.failed:
        raise click.ClickException(f"server {stopped.pid} stopped, but its state is left behind")
    click.echo(f"zramd: stopped server {stopped.pid}" + (" (killed)" if stopped.killed else ""))


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=daemon.DEFAULT_CONFIG,
    show_default=True,
    help="zram-generator-style configuration ([zramN] sections).",
)
@pidfile_option
@click.option("--dry-run", is_flag=True, help="Print what would run, as a shell script.")
def setup(config_file: Path, pidfile: Path | None, dry_run: bool) -> None:
    """Set a running server's devices up on this host as the configuration says.

    For each [zramN] section: the device is added if the server lacks it (zram-control/
    hot_add), configured through its control files in zram-generator's order, attached with
    nbd-client, then mkswap + swapon or mkfs + mount. What was done is recorded beside the
    pidfile for `zramd teardown` and `zramd stop`; a setup that fails undoes itself.
    """
    config = daemon.read_config(config_file)
    for message in config.messages:
        _err(f"zramd: warning: {message}")
    if pidfile is None and dry_run and not private_dir(runtime_dir(), create=False):
        pidfile = default_pidfile()  # nothing runs: show serve's default paths
    pidfile = _pidfile(pidfile)
    try:
        server = daemon.find_running(pidfile)
    except ServeError:
        if not dry_run:
            raise
        sock, control, present = default_socket(), default_control(), None
    else:
        sock, control = _served_paths(server)
        present = set(ControlTree(control).device_ids())
    if dry_run:
        lines = attach.setup_script(
            config.devices, attach.targets(config.devices, sock, control)
        ).splitlines()
        notes = []
        if present is None:
            notes.append(f"# no server runs with pidfile {pidfile}: serve's default paths")
        else:
            for d in config.devices:
                if d.id not in present:
                    notes.append(
                        f"# {d.name} is not served yet: added first "
                        f"(cat {control}/zram-control/hot_add until it exists)"
                    )
        click.echo("\n".join([*lines[:2], *notes, *lines[2:]]))
        return
    if os.geteuid() != 0:
        raise click.ClickException("setting devices up (nbd-client, swapon, mount) needs root")
    daemon.ensure_devices(ControlTree(control), [d.id for d in config.devices], _log)
    attached = daemon.set_up(
        config, control, sock=sock, record=daemon.record_path(pidfile), log=_log
    )
    names = [d.name for d in config.devices]
    click.echo(f"zramd: {daemon.status_line(names, str(sock), attached)}")


def _served_paths(server: Server) -> tuple[Path, Path]:
    """The running server's socket and control tree, which setup needs."""
    if server.socket is None or server.control is None:
        raise ServeError(
            f"server {server.pid} serves without a Unix socket or without a control tree: "
            "setting devices up on this host needs both"
        )
    return server.socket, server.control


@main.command()
@pidfile_option
@click.option("--dry-run", is_flag=True, help="Print what would run, as a shell script.")
def teardown(pidfile: Path | None, dry_run: bool) -> None:
    """Take down what `serve --config` or `zramd setup` set up on this host, last device
    first: swapoff or umount, nbd-client -d, then reset the device. The server keeps running.

    Only what the record names and the system still shows is undone. A device whose swapoff
    or umount fails stays set up and recorded, and teardown fails naming it.
    """
    record = daemon.record_path(_pidfile(pidfile))
    if dry_run:
        click.echo(attach.teardown_script(record), nl=False)
        return
    daemon.tear_down(record, log=_log)


@main.command(name="install-unit")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Install under this directory (an image being built).",
)
@click.option(
    "--exe",
    help="The zramd command the unit runs (default: the one of this installation).",
)
@click.option("--force", is_flag=True, help="Replace a unit file that differs.")
def install_unit(root: Path, exe: str | None, force: bool) -> None:
    """Install the systemd unit and, if there is none, an example configuration.

    Writes ROOT/etc/systemd/system/zramd.service running this installation's zramd, and
    ROOT/etc/zramd/zramd.conf (one swap device, zram-generator's defaults) only when that file
    does not exist. Then: systemctl daemon-reload && systemctl enable --now zramd.
    """
    try:
        done = units.install(root, exe=exe, force=force)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    for line in done:
        click.echo(f"zramd: {line}")
    if root == Path("/"):
        click.echo("zramd: now: systemctl daemon-reload && systemctl enable --now zramd")


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

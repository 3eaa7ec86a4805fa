"""zram-generator.conf read as zram-generator reads it (zramd/genconf.py).

The tree cases mirror zram-generator's tests/NN-*/ directories (a root with usr/lib, etc, proc
and the expected devices in tests/test_cases.rs); the path cases its src/config.rs tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zramd import genconf
from zramd.genconf import Algorithm, ConfigError, DeviceConfig, MiB

GEN = "systemd/zram-generator.conf"


def tree(root: Path, files: dict[str, str], memtotal_kb: int = 8_013_220) -> Path:
    """A root like zram-generator's test directories: config files and proc/meminfo."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "meminfo").write_text(
        f"MemTotal:       {memtotal_kb} kB\nMemFree:          721288 kB\n"
    )
    return root


def one(root: Path, text: str, ram_mib: int = 8000) -> genconf.Config:
    path = root / "zramd.conf"
    path.write_text(text)
    return genconf.read_config([path], ram_mib=ram_mib)


def test_memtotal_is_mib_rounded_down(tmp_path: Path) -> None:
    """src/config.rs test_get_total_memory_kb: MemTotal 8013220 kB."""
    tree(tmp_path, {})
    assert genconf.meminfo_ram_mib(tmp_path / "proc" / "meminfo") == 8013220 // 1024
    (tmp_path / "bad").write_text("MemTotala: 8013220 kB\naMemTotal: 1 kB\n")
    with pytest.raises(ConfigError, match="no MemTotal"):
        genconf.meminfo_ram_mib(tmp_path / "bad")


def test_01_basic_an_empty_section_is_a_default_swap_device(tmp_path: Path) -> None:
    root = tree(tmp_path, {f"usr/lib/{GEN}": "[zram0]\n"})
    config = genconf.read_config(root=root)
    ram = 8013220 // 1024
    assert config.ram_mib == ram
    size = int(min(ram / 2, 4096) * MiB)  # 3912.5 MiB
    assert config.devices == (DeviceConfig("zram0", 0, size),)
    dev = config.devices[0]
    assert dev.is_swap
    assert (dev.swap_priority, dev.options, dev.mem_limit) == (100, "discard", 0)


def test_02_zstd_and_09_zram_size(tmp_path: Path) -> None:
    text = (
        "[zram0]\n"
        "compression-algorithm = zstd(dictionary=/etc/gaming,level=9) (recompargs)\n"
        "host-memory-limit = 2050\n"
        "zram-size = min(0.75 * ram, 6000)\n"
    )
    dev = one(tmp_path, text, ram_mib=2000).devices[0]
    assert dev.disksize == 1500 * MiB
    assert dev.algorithms == (Algorithm("zstd", ("dictionary=/etc/gaming", "level=9")),)
    assert dev.algorithms[0].params_text == "dictionary=/etc/gaming level=9"
    assert dev.recompress == "recompargs"


def test_03_too_much_memory_skips_the_device(tmp_path: Path) -> None:
    root = tree(tmp_path, {f"etc/{GEN}": "[zram0]\nhost-memory-limit=7824\n"})
    config = genconf.read_config(root=root)
    assert config.devices == ()
    assert any("above host-memory-limit = 7824: skipped" in m for m in config.messages)


def test_04_dropins_order_override_and_mask(tmp_path: Path) -> None:
    d = f"{GEN}.d"
    root = tree(
        tmp_path,
        {
            f"usr/lib/{d}/01-drop1.conf": "[zram0]\nhost-memory-limit=1234\n",
            f"usr/lib/{d}/02-drop2.conf": "[zram0]\nhost-memory-limit=9235\n",
            f"usr/lib/{d}/03-drop3.conf": "[zram0]\nhost-memory-limit=1\n[zram1]\nzram-size=1\n",
            # the same name as the main file: an ordinary drop-in, empty on purpose
            f"etc/{d}/zram-generator.conf": "# empty\n",
            f"etc/{d}/04-drop4.conf": "[zram2]\nzram-size=ram*0.8\noptions=\n",
            f"usr/lib/{d}/05-replaced.conf": "[zram2]\nswap-priority=1\n",
            f"run/{d}/05-replaced.conf": "[zram2]\nswap-priority=7\n",
            f"etc/{d}/ignored.txt": "[zram3]\n",
        },
    )
    os.symlink("/dev/null", root / "etc" / d / "03-drop3.conf")  # masks the vendor file
    config = genconf.read_config(root=root)
    names = [p.name for p in config.files]
    assert names == ["01-drop1.conf", "02-drop2.conf", "04-drop4.conf", "05-replaced.conf",
                     "zram-generator.conf"]  # fmt: skip
    assert config.files[3] == root / "run" / d / "05-replaced.conf"
    assert [d.name for d in config.devices] == ["zram0", "zram2"]
    zram2 = config.device("zram2")
    assert zram2 is not None
    assert zram2.disksize == int(config.ram_mib * 0.8 * MiB)
    assert zram2.options == ""
    assert zram2.swap_priority == 7


def test_main_file_precedence_and_it_comes_first(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            f"usr/lib/{GEN}": "[zram0]\nswap-priority = 1\n",
            f"etc/{GEN}": "[zram0]\nswap-priority = 2\n",
            f"usr/lib/{GEN}.d/10-a.conf": "[zram0]\nzram-size = 64\n",
        },
    )
    config = genconf.read_config(root=root)
    assert config.files == (root / "etc" / GEN, root / "usr/lib" / f"{GEN}.d" / "10-a.conf")
    assert config.devices[0].swap_priority == 2  # only /etc's main file is read
    assert config.devices[0].disksize == 64 * MiB
    tree(root, {f"run/{GEN}": "[zram0]\nswap-priority = 3\n"})
    assert genconf.read_config(root=root).devices[0].swap_priority == 3


def test_no_configuration_is_no_devices(tmp_path: Path) -> None:
    root = tree(tmp_path, {})
    assert genconf.config_files(root=root) == []
    assert genconf.read_config(root=root).devices == ()


def test_explicit_file_with_its_dropins(tmp_path: Path) -> None:
    main = tmp_path / "zramd.conf"
    main.write_text("[zram0]\nzram-size = 100\n")
    (tmp_path / "zramd.conf.d").mkdir()
    (tmp_path / "zramd.conf.d" / "20-b.conf").write_text("[zram0]\nzram-size = 300\n")
    (tmp_path / "zramd.conf.d" / "10-a.conf").write_text("[zram0]\nzram-size = 200\n")
    files = genconf.config_files(main)
    assert [f.name for f in files] == ["zramd.conf", "10-a.conf", "20-b.conf"]
    assert genconf.read_config(files, ram_mib=1000).devices[0].disksize == 300 * MiB
    with pytest.raises(ConfigError, match=r"missing\.conf: the configuration file does not exist"):
        genconf.config_files(tmp_path / "missing.conf")


def test_07_mount_points_are_normalised(tmp_path: Path) -> None:
    text = (
        "[zram11]\nmount-point = /var/compressed\nfs-type = ext4\n\n"
        "[zram12]\nmount-point = /var/folded\nfs-type = ext4\noptions = discard,casefold\n\n"
        "# systemd.unit(5) example\n[zram13]\nmount-point = /foo//bar/baz/\nfs-type = ext4\n\n"
        "[zram14]\nmount-point = /.żupan-ci3pły\nfs-type = ext4\n\n"
        "[zram15]\nmount-point = ///\nfs-type = ext4\n"
    )
    devices = {d.name: d for d in one(tmp_path, text).devices}
    assert {n: d.mount_point for n, d in devices.items()} == {
        "zram11": "/var/compressed",
        "zram12": "/var/folded",
        "zram13": "/foo/bar/baz",
        "zram14": "/.żupan-ci3pły",
        "zram15": "/",
    }
    assert all(d.fs_type == "ext4" and not d.is_swap for d in devices.values())
    assert devices["zram12"].options == "discard,casefold"
    assert devices["zram11"].options == "discard"


def test_08_plain_device_and_default_fs_types(tmp_path: Path) -> None:
    text = "[zram11]\nfs-type = ext2\n[zram1]\nmount-point = /mnt/z\n[zram2]\nfs-type = swap\n"
    devices = {d.name: d for d in one(tmp_path, text).devices}
    assert (devices["zram11"].fs_type, devices["zram11"].mount_point) == ("ext2", None)
    assert devices["zram1"].fs_type == "ext2"  # a mount point without fs-type: ext2
    assert devices["zram2"].is_swap
    assert [d.id for d in one(tmp_path, text).devices] == [1, 2, 11]  # in id order


def test_09_mount_options_unknown_key_is_a_warning(tmp_path: Path) -> None:
    text = "[zram11]\nmount-point = /var/compressed\nfs-type = ext4\nmount-options = discard\n"
    config = one(tmp_path, text)
    assert config.devices[0].options == "discard"
    assert any("mount-options = discard: unknown key, ignored" in m for m in config.messages)


def test_11_obsolete_keys(tmp_path: Path) -> None:
    text = (
        "[zram0]\nzram-fraction = 0.10\nmax-zram-size = 2048\nmemory-limit = 100000\n\n"
        "[zram1]\nhost-memory-limit = 2\n[zram1]\nzram-fraction = 0.10\nmax-zram-size = none\n"
        "memory-limit = none\n\n"
        "[zram2]\nzram-fraction = 0.10\nmax-zram-size = 2048\nmemory-limit = 1\n\n"
        "[zram3]\nmax-zram-size = 1000\nzram-size = 10\n"
    )
    devices = {d.name: d for d in one(tmp_path, text, ram_mib=30000).devices}
    assert set(devices) == {"zram0", "zram1", "zram3"}  # zram2: more RAM than 1 MiB
    assert devices["zram0"].disksize == 2048 * MiB  # int(0.1 * 30000) capped at 2048
    assert devices["zram1"].disksize == 3000 * MiB  # max-zram-size = none: no cap
    # max-zram-size alone also replaces zram-size: min(int(0.5 * 30000), 1000)
    assert devices["zram3"].disksize == 1000 * MiB


def test_zram_fraction_alone_has_no_maximum(tmp_path: Path) -> None:
    """zram-generator's code (not its man page's "defaulted to 4096")."""
    dev = one(tmp_path, "[zram0]\nzram-fraction = 0.5\n", ram_mib=30000).devices[0]
    assert dev.disksize == 15000 * MiB


def test_resident_limit_writeback_algorithms_priority(tmp_path: Path) -> None:
    text = (
        "[zram0]\n"
        "zram-size = ram\n"
        "zram-resident-limit = ram / 4\n"
        "compression-algorithm = lzo-rle zstd(level=3) lz4hc(level=9,x=y) (type=idle)\n"
        "writeback-device = /dev/disk/by-partuuid/2d54ffa0-01\n"
        "swap-priority = -1\n"
    )
    dev = one(tmp_path, text, ram_mib=4000).devices[0]
    assert (dev.disksize, dev.mem_limit) == (4000 * MiB, 1000 * MiB)
    assert dev.algorithms == (
        Algorithm("lzo-rle"),
        Algorithm("zstd", ("level=3",)),
        Algorithm("lz4hc", ("level=9", "x=y")),
    )
    assert dev.recompress == "type=idle"
    assert dev.backing_dev == "/dev/disk/by-partuuid/2d54ffa0-01"
    assert dev.swap_priority == -1


def test_later_values_override_earlier_ones(tmp_path: Path) -> None:
    text = "[zram0]\nzram-size = 1\ncompression-algorithm = zstd\nzram-size = 2\n" \
        "[zram0]\ncompression-algorithm = lz4\n"  # fmt: skip
    dev = one(tmp_path, text).devices[0]
    assert (dev.disksize, dev.algorithms) == (2 * MiB, (Algorithm("lz4"),))


def test_size_zero_skips_the_device(tmp_path: Path) -> None:
    config = one(tmp_path, "[zram0]\nzram-size = 0\n[zram1]\nzram-size = 0.0000001\n")
    assert config.devices == ()  # 0.0000001 MiB is 0 bytes once truncated
    assert sum("the size is 0: skipped" in m for m in config.messages) == 2


def test_other_sections_and_keys_outside_sections_are_warnings(tmp_path: Path) -> None:
    text = "zram-size = 1\nfoo!bar = 1\n[swap]\nzram-size = 1\n[zram]\n[zram0]\n"
    config = one(tmp_path, text)
    assert [d.name for d in config.devices] == ["zram0"]
    text_messages = "\n".join(config.messages)
    assert "a key outside any section, ignored" in text_messages
    assert "unknown operation foo!, ignored" in text_messages
    assert "[swap]: section ignored" in text_messages
    assert "[zram]: section ignored" in text_messages


def test_ini_syntax_as_rust_ini(tmp_path: Path) -> None:
    text = (
        "\ufeff; a comment\n"
        "   # an indented comment\n"
        "[ zram0 ]\n"
        'options = "discard,pri=5"\n'
        "fs-type: ext4\n"
        "mount-point = /srv/with\\x0020space\n"
        "zram-size = min(ram, \\\n"
        "    4096)\n"
    )
    dev = one(tmp_path, text).devices[0]
    assert dev.options == "discard,pri=5"
    assert dev.fs_type == "ext4"
    assert dev.mount_point == "/srv/with space"
    assert dev.disksize == 4096 * MiB


def test_set_runs_a_program_for_a_variable(tmp_path: Path) -> None:
    """src/config.rs: ``set!`` outside a section; its output is an expression (it may use ram
    and earlier variables) that later sizes use, whichever file they are in."""
    (tmp_path / "zramd.conf.d").mkdir()
    (tmp_path / "zramd.conf.d" / "50-size.conf").write_text("[zram0]\nzram-size = ram * two\n")
    main = tmp_path / "zramd.conf"
    main.write_text("set!two = echo 2\nset!half = echo ram / 2; exit 3\n[zram1]\nzram-size=half\n")
    config = genconf.read_config(genconf.config_files(main), ram_mib=100)
    assert [(d.name, d.disksize) for d in config.devices] == [
        ("zram0", 200 * MiB),
        ("zram1", 50 * MiB),
    ]
    assert any("exited 3; using its output anyway" in m for m in config.messages)


def test_set_is_refused_from_a_file_others_may_write(tmp_path: Path) -> None:
    path = tmp_path / "zramd.conf"
    path.write_text("set!x = touch " + str(tmp_path / "ran") + "; echo 1\n[zram0]\n")
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"refusing to run a program.*mode 0666"):
        genconf.read_config([path], ram_mib=100)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="running set! programs is disabled"):
        genconf.read_config([path], ram_mib=100, run_programs=False)
    assert not (tmp_path / "ran").exists()  # neither refusal ran the program


def test_set_output_must_be_an_expression(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"zramd.conf:1: set!x = echo hello: its output 'hello'"):
        one(tmp_path, "set!x = echo hello\n")
    with pytest.raises(ConfigError, match="needs a variable name other than ram"):
        one(tmp_path, "set!ram = echo 1\n")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "[zram0]\nzram-size = min(ram / 2\n",
            r":2: \[zram0\] zram-size = min\(ram / 2: .*not closed",
        ),
        ("[zram0]\nzram-size = ram * two\n", r"zram-size = ram \* two: unknown variable 'two'"),
        ("[zram0]\nzram-size = (ram-99)/0\n", "inf MiB, too large for a device"),
        ("[zram0]\nzram-size = (ram-8000)/0\n", "the result is not a number"),
        ("[zram0]\nzram-size = ram - 20000\n", "the result is -12000 MiB, below 0"),
        ("[zram0]\nzram-resident-limit = -1\n", r"zram-resident-limit = -1: the result is -1 MiB"),
        ("[zram0]\nswap-priority = 40000\n", "swap-priority = 40000: expected a swap priority"),
        ("[zram0]\nswap-priority = high\n", "expected a swap priority from -1 to 32767"),
        ("[zram0]\nhost-memory-limit = 1.5\n", "host-memory-limit = 1.5: expected a whole"),
        ("[zram0]\nmax-zram-size = -3\n", "max-zram-size = -3: expected a whole number"),
        ("[zram0]\nzram-fraction = -0.5\n", "zram-fraction = -0.5: expected a fraction"),
        ("[zram0]\nzram-fraction = nan\n", "expected a fraction"),
        ("[zram0]\nmount-point = foo/bar\n", "mount-point = foo/bar: not an absolute path"),
        ("[zram0]\nmount-point = /foo/../bar\n", "'..' is not allowed"),
        ("[zram0]\nmount-point = /foo/..\n", "'..' is not allowed"),
        ("[zram0]\nwriteback-device = sda2\n", "writeback-device = sda2: not an absolute"),
        ("[zram0]\nfs-type = ../../bin/sh\n", "not a file system type"),
        ("[zram0]\nfs-type = swap\nmount-point = /mnt\n", "fs-type = swap cannot be mounted"),
        ("[zram0]\ncompression-algorithm = zstd(level=3, dict=x)\n", "missing '\\)'"),
        ("[zram0]\ncompression-algorithm = zstd(level=3\n", "missing '\\)'"),
        ("[zram0]\ncompression-algorithm = a b c d e\n", "5 algorithms: zram takes one primary"),
        ("[zram0]\ncompression-algorithm = zst$d\n", "'zst\\$d' is not an algorithm name"),
        ("[zram05]\n", r":1: \[zram05\]: write the section as \[zram5\]"),
        ("[zram0]\nzram-size\n", ":2: 'zram-size': expected KEY = VALUE"),
        ("[zram0\n", ":1: '\\[zram0': a section line is \\[name\\]"),
        ("[zram0]\noptions = a\\qb\n", r":2: unknown escape '\\\\q'"),
    ],
)
def test_bad_input_names_file_line_section_and_key(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        one(tmp_path, text)
    assert str(tmp_path / "zramd.conf") in str(info.value)


def test_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "zramd.conf"
    path.write_bytes(b"[zram0]\noptions = \xff\n")
    with pytest.raises(ConfigError, match=r"zramd\.conf: not UTF-8"):
        genconf.read_config([path], ram_mib=1)

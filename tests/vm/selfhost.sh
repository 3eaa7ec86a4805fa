#!/bin/bash
# selfhost.sh: can a userspace NBD server be the swap device of the Linux that runs it?
# (zramd's copy of ../shared/vm/selfhost.sh, with --discard; tests/test_selfhost_vm.py runs it)
#
# Boots the Debian 6.1 kernel under qemu (TCG) with the HOST's userland: a small busybox
# initramfs loads the 9p/virtio/overlay modules, mounts the host's / read-only over virtio-9p,
# puts a tmpfs overlay on it (fresh tmpfs on /tmp and /run, so the guest never walks the host's
# /tmp; the zramd checkout and this run's work directory are overlaid back in at their host
# paths, so the checkout's .venv works unchanged), switch_roots into it and runs a bash payload
# as PID 1. The payload sets up swap (kernel zram, or `scripts/zramd serve` + nbd-client inside
# the guest) and runs `shguest run`: an mlocked watchdog (oom_score_adj -1000) that spawns a
# memory hog (HOG_MB of pseudo-random pages that lz4 compresses ~2.5:1, written, then
# regenerated and compared page by page) and prints progress, /proc/meminfo, swap counters and
# the server's threads (state, wchan) every INTERVAL s, scanning /dev/kmsg for OOM kills, hung
# tasks, I/O errors and nbd messages. A sentinel thread that needs no memory calls a deadlock
# after STALL s without hog progress: it prints what it knows, asks for sysrq-w (blocked tasks
# with kernel stacks), sysrq-l (what each CPU runs) and sysrq-m, prints the verdict and reboots
# the guest. An mlocked guard reboots it before the host's hard timeout whatever happens.
#
# usage: selfhost.sh ZRAMD_CHECKOUT MODE [GUEST_MB] [OPTIONS]
#   MODE                kernel-zram | zramd
#   GUEST_MB            guest RAM in MiB (default 384)
# zramd variants (any combination):
#   --nbd-swap          nbd-client -swap (mlocks nbd-client itself, its oom_score_adj -1000)
#   --oom-adj           the server (and its supervisor) start with oom_score_adj -1000
#   --mlock             LD_PRELOAD a constructor into nbdkit that calls
#                       mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) (zramd does not mlock itself)
#   --io-flusher        start `zramd serve` under prctl(PR_SET_IO_FLUSHER, 1) (inherited by the
#                       CLI, the supervisor shell and nbdkit; the payload prints every nbdkit
#                       thread's PF_MEMALLOC_NOIO / PF_LOCAL_THROTTLE flags)
#   --all               all four of the above
# both modes:
#   --min-free-kbytes N vm.min_free_kbytes=N in the guest before the hog
#   --sysctl KEY=VAL    any other guest sysctl before the hog (repeatable)
#   --hog-mb N          hog size (default GUEST_MB*3/2; 2x does not fit: see below)
#   --hog-rate R        pace the hog to R MiB/s in both phases (default 0: as fast as it can)
#   --swap-size S       zram disksize / zramd --size (default 512M)
#   --smp N             vCPUs (default 2)
#   --stall S           seconds without hog progress that count as a deadlock (default 180)
#   --interval S        watchdog period (default 10)
#   --timeout S         hard limit for the whole VM run (default 900)
#   --threads N         zramd serve --threads (default: zramd's own, 1)
#   --serve-arg ARG     one more argument for `zramd serve` (repeatable; e.g. --serve-arg --swap)
#   --discard           swapon --discard (discards freed swap clusters: over NBD the only
#                       notice that slots are free; then SELFHOST_MMSTAT_SETTLED shows mm_stat
#                       once the pool has given them back, or after 60 s)
#   --server-log PATH   zramd serve --log in the guest (default /run/selfhost/zramd.log, on tmpfs
#                       like zramd's own default /run/zramd/zramd.log; /dev/console shows it live)
#   --log FILE          keep the whole console log there
# Output: the console from the payload on (boot noise dropped), then one line
#   selfhost MODE[+variants]: ok|deadlock|oom|error <details>
# Hog size: with lz4 at ~2.5:1 a 2x-RAM hog cannot fit (kernel zram: OOM once the 512M swap is
# full); 1.5x is the most kernel zram holds with 512M at the default min_free_kbytes (it OOMs at
# min_free_kbytes=32768); --hog-mb 448 leaves room for zramd's ~33 MiB interpreter as well.
set -euo pipefail

usage() { sed -n '/^# usage:/,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }
[ $# -ge 2 ] || { usage >&2; exit 2; }
[ -d "$1" ] || { echo "selfhost: no checkout at $1" >&2; exit 2; }
CHECKOUT=$(cd "$1" && pwd -P) MODE=$2
shift 2
GUEST_MB=384
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then GUEST_MB=$1; shift; fi
SERVE_ARGS= SMP=2 HOG_MB= HOG_RATE=0 SWAP_SIZE=512M STALL=180 INTERVAL=10 TIMEOUT=900 LOG= THREADS=
SLOG=/run/selfhost/zramd.log
V_SWAP=0 V_OOM=0 V_MLOCK=0 V_FLUSHER=0 MIN_FREE=0 SYSCTLS= DISCARD=0
while [ $# -gt 0 ]; do
    case $1 in
    --nbd-swap) V_SWAP=1 ;;
    --oom-adj) V_OOM=1 ;;
    --mlock) V_MLOCK=1 ;;
    --io-flusher) V_FLUSHER=1 ;;
    --all) V_SWAP=1 V_OOM=1 V_MLOCK=1 V_FLUSHER=1 ;;
    --min-free-kbytes) MIN_FREE=$2; shift ;;
    --sysctl)
        [[ $2 =~ ^[a-z0-9_./]+=[0-9A-Za-z_.-]+$ ]] || { echo "selfhost: bad --sysctl $2" >&2; exit 2; }
        SYSCTLS+="$2,"; shift ;;
    --hog-mb) HOG_MB=$2; shift ;;
    --hog-rate) HOG_RATE=$2; shift ;;
    --swap-size) SWAP_SIZE=$2; shift ;;
    --smp) SMP=$2; shift ;;
    --stall) STALL=$2; shift ;;
    --interval) INTERVAL=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --server-log) SLOG=$2; shift ;;
    --discard) DISCARD=1 ;;
    --serve-arg) SERVE_ARGS+=" $2"; shift ;;
    --log) LOG=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "selfhost: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case $MODE in
kernel-zram)
    if [ $((V_SWAP + V_OOM + V_MLOCK + V_FLUSHER)) -gt 0 ] || [ -n "$THREADS" ]; then
        echo "selfhost: server variants apply to MODE zramd only" >&2; exit 2
    fi ;;
zramd)
    [ -x "$CHECKOUT/.venv/bin/zramd" ] || {
        echo "selfhost: $CHECKOUT/.venv/bin/zramd missing: run $CHECKOUT/scripts/zramd --help on the host first" >&2
        exit 2
    } ;;
*) echo "selfhost: MODE must be kernel-zram or zramd" >&2; exit 2 ;;
esac
HOG_MB=${HOG_MB:-$((GUEST_MB * 3 / 2))}
LABEL=$MODE
[ $V_SWAP = 1 ] && LABEL+=+nbd-swap
[ $V_OOM = 1 ] && LABEL+=+oom-adj
[ $V_MLOCK = 1 ] && LABEL+=+mlock
[ $V_FLUSHER = 1 ] && LABEL+=+io-flusher
[ "$MIN_FREE" != 0 ] && LABEL+=+min-free-$MIN_FREE
[ -n "$SYSCTLS" ] && LABEL+=+sysctl-${SYSCTLS%,}
[ -n "$THREADS" ] && LABEL+=+threads-$THREADS
[ "$HOG_RATE" != 0 ] && LABEL+=+rate-$HOG_RATE
[ "$SLOG" = /dev/console ] && LABEL+=+log-console
[ "$DISCARD" = 1 ] && LABEL+=+discard
[ -n "$SERVE_ARGS" ] && LABEL+=+serve$(echo "$SERVE_ARGS" | tr -d ' ')

K=${SELFHOST_KERNEL:-6.1.0-57-amd64}
# SELFHOST_TREE: an unpacked linux-image package (tests/vm.py's .cache/vm/...) to take the kernel
# and its modules from instead of /boot and /lib/modules (the guest sees its modules there too)
TREE=${SELFHOST_TREE:-}
[ -f "$TREE/boot/vmlinuz-$K" ] && [ -d "$TREE/lib/modules/$K" ] || { echo "selfhost: kernel $K missing${TREE:+ in $TREE}" >&2; exit 2; }
MODS=${TREE:+$TREE/lib/modules/$K}
for t in qemu-system-x86_64 gcc cpio gzip; do
    command -v $t >/dev/null || { echo "selfhost: $t missing" >&2; exit 2; }
done

W=$(mktemp -d /tmp/selfhost.XXXXXX)
QPID= TPID=
cleanup() {
    local p
    for p in $QPID $TPID; do kill -0 "$p" 2>/dev/null && kill "$p" 2>/dev/null; done
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- guest programs (built here)
cat > "$W/shguest.c" <<'CSRC'
/* shguest: the guest half of selfhost.sh (built on the host, run inside the VM).
 *   shguest run HOG_MB INTERVAL STALL_S DEADLINE_UPTIME SERVER_PID SWAPDEV [RATE_MIB_S]
 *       mlocked watchdog (oom_score_adj -1000) + forked memory hog. The hog writes HOG_MB of
 *       pseudo-random pages that lz4 compresses ~2.5:1, then regenerates and compares every page.
 *       The watchdog prints progress, /proc/meminfo, swap counters and the server's state every
 *       INTERVAL s, scans /dev/kmsg for OOM kills, hung tasks, I/O errors and nbd messages,
 *       declares a deadlock after STALL_S s without hog progress (dumps stacks, sysrq-w, reboots),
 *       and prints one "SELFHOST_RESULT outcome details" line.
 *   shguest guard DEADLINE_UPTIME
 *       mlocked sleeper: at that uptime print SELFHOST_GUARD, sysrq-w, and reboot the guest.
 *   shguest flags PID      print the PF_ flags of every thread of PID (IO_FLUSHER check)
 *   shguest gen LIT N      write N generated pages to stdout (calibration)
 *   shguest ioflusher CMD...   prctl(PR_SET_IO_FLUSHER, 1) then exec CMD
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <semaphore.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#define PR_GET_IO_FLUSHER 58
#endif
#define PF_MEMALLOC_NOIO 0x00080000UL
#define PF_LOCAL_THROTTLE 0x00100000UL
#define PG 4096

static unsigned LIT = 90; /* 64-byte chunks drawn fresh: 90/256 of them -> lz4 ~2.5:1 */

static inline uint64_t xs(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}
static uint64_t mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
/* page idx: 64 chunks, each either fresh random bytes or a copy of an earlier chunk */
static void gen(unsigned char *p, uint64_t idx, uint64_t seed) {
    uint64_t s = mix(seed ^ mix(idx)) | 1;
    for (unsigned off = 0; off < PG; off += 64) {
        uint64_t r = xs(&s);
        if (off == 0 || (r & 0xff) < LIT) {
            uint64_t *q = (uint64_t *)(p + off);
            for (int j = 0; j < 8; j++) q[j] = xs(&s);
        } else {
            memcpy(p + off, p + ((r >> 8) % (off / 64)) * 64, 64);
        }
    }
}

static void out(const char *fmt, ...) {
    static __thread char buf[16384];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1) n = sizeof buf - 1;
    for (int off = 0; off < n;) {
        ssize_t w = write(1, buf + off, n - off);
        if (w <= 0) { if (errno == EINTR) continue; break; }
        off += w;
    }
}
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static int readfile(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, size - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += r;
        if (n >= size - 1) break;
    }
    close(fd);
    buf[n] = 0;
    return (int)n;
}
static void writefile(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) { if (write(fd, s, strlen(s)) < 0) {} close(fd); }
}
static long field(const char *buf, const char *key) { /* "Key:   123 kB" */
    const char *p = buf;
    size_t k = strlen(key);
    while ((p = strstr(p, key))) {
        if (p == buf || p[-1] == '\n') return strtol(p + k, NULL, 10);
        p += k;
    }
    return -1;
}
static void protect_self(void) {
    if (mlockall(MCL_CURRENT | MCL_FUTURE)) out("shguest: mlockall failed: %s\n", strerror(errno));
    writefile("/proc/self/oom_score_adj", "-1000");
}

/* ---------------------------------------------------------------- hog */
static void pace(double t0, double mib_done, double rate) { /* sleep until mib_done/rate s after t0 */
    double ahead = t0 + mib_done / rate - now();
    if (ahead > 0) {
        struct timespec ts = {(time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9)};
        nanosleep(&ts, NULL);
    }
}
struct prog {
    volatile uint64_t phase, written, verified, bad, first_bad, write_ms, verify_ms, pages;
};

static void hog(struct prog *pg, uint64_t mb, uint64_t seed, double rate) {
    writefile("/proc/self/oom_score_adj", "0");
    uint64_t n = mb << 8;
    size_t len = n * PG;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) { out("HOG mmap %zu failed: %s\n", len, strerror(errno)); _exit(4); }
    madvise(m, len, MADV_NOHUGEPAGE);
    pg->pages = n;
    double t0 = now();
    pg->phase = 1;
    for (uint64_t i = 0; i < n; i++) {
        gen(m + i * PG, i, seed);
        pg->written = i + 1;
        if (rate > 0 && (i & 255) == 255) pace(t0, (i + 1) / 256.0, rate);
    }
    double t1 = now();
    pg->write_ms = (uint64_t)((t1 - t0) * 1000);
    out("HOG wrote %llu MiB (%llu pages) in %.1f s\n", (unsigned long long)mb,
        (unsigned long long)n, t1 - t0);
    pg->phase = 2;
    static unsigned char tmp[PG];
    uint64_t bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        gen(tmp, i, seed);
        if (memcmp(tmp, m + i * PG, PG)) { if (!bad++) pg->first_bad = i; pg->bad = bad; }
        pg->verified = i + 1;
        if (rate > 0 && (i & 255) == 255) pace(t1, (i + 1) / 256.0, rate);
    }
    double t2 = now();
    pg->verify_ms = (uint64_t)((t2 - t1) * 1000);
    pg->phase = 3;
    out("HOG verified %llu pages in %.1f s: %llu bad\n", (unsigned long long)n, t2 - t1,
        (unsigned long long)bad);
    _exit(bad ? 3 : 0);
}

/* ---------------------------------------------------------------- kmsg scan */
static int kmsg_fd = -1;
static int n_oom_kill, n_oom_invoke, n_hung, n_ioerr, n_nbd, n_allocfail, n_bug;
static char s_kill[600], s_invoke[300], s_hung[400], s_ioerr[300], s_nbd[400], s_allocfail[300],
    s_bug[300];

static void note(char *dst, size_t size, int count, const char *msg, size_t maxlen) {
    if (count > 3) return;
    size_t l = strlen(dst);
    if (l + 4 >= size) return;
    snprintf(dst + l, size - l, "%s%.*s", l ? " | " : "", (int)maxlen, msg);
}

static void kmsg_scan(void) {
    static char rec[8192];
    if (kmsg_fd < 0) return;
    for (;;) {
        ssize_t r = read(kmsg_fd, rec, sizeof rec - 1);
        if (r < 0) {
            if (errno == EPIPE || errno == EINTR) continue; /* overwritten records */
            break;                                          /* EAGAIN */
        }
        if (r == 0) break;
        rec[r] = 0;
        char *msg = strchr(rec, ';');
        if (!msg) continue;
        msg++;
        char *nl = strchr(msg, '\n');
        if (nl) *nl = 0;
        char *p;
        if ((p = strstr(msg, "Killed process"))) {
            n_oom_kill++;
            char *q = strstr(p, " total-vm");
            note(s_kill, sizeof s_kill, n_oom_kill, p, q ? (size_t)(q - p) : 80);
        } else if (strstr(msg, "invoked oom-killer")) {
            n_oom_invoke++;
            note(s_invoke, sizeof s_invoke, n_oom_invoke, msg, 60);
        } else if (strstr(msg, "blocked for more than")) {
            n_hung++;
            note(s_hung, sizeof s_hung, n_hung, msg, 80);
        } else if (strstr(msg, "I/O error") || strstr(msg, "-error on swap-device") ||
                   strstr(msg, "Buffer I/O")) {
            n_ioerr++;
            note(s_ioerr, sizeof s_ioerr, n_ioerr, msg, 90);
        } else if (strstr(msg, "page allocation failure")) {
            n_allocfail++;
            note(s_allocfail, sizeof s_allocfail, n_allocfail, msg, 90);
        } else if (!strncmp(msg, "nbd", 3) || strstr(msg, " nbd0") || strstr(msg, "nbd0:")) {
            n_nbd++;
            note(s_nbd, sizeof s_nbd, n_nbd, msg, 100);
        } else if (strstr(msg, "BUG:") || strstr(msg, "Oops") || strstr(msg, "soft lockup")) {
            n_bug++;
            note(s_bug, sizeof s_bug, n_bug, msg, 90);
        }
    }
}

/* ---------------------------------------------------------------- process state */
static char procstate(int pid) { /* R S D Z ... or '-' when gone */
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (readfile(path, buf, sizeof buf) <= 0) return '-';
    char *p = strrchr(buf, ')');
    return p && p[1] ? p[2] : '?';
}
static int alive(int pid) { char s = procstate(pid); return s != '-' && s != 'Z' && s != 'X'; }

/* one line per thread: tid comm state flags wchan */
static void threads(int pid, char *dst, size_t size, int with_stack) {
    char path[96], buf[2048], comm[64], wchan[96];
    dst[0] = 0;
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    size_t l = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        int tid = atoi(e->d_name);
        snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
        if (readfile(path, buf, sizeof buf) <= 0) continue;
        char *lp = strchr(buf, '('), *rp = strrchr(buf, ')');
        if (!lp || !rp) continue;
        snprintf(comm, sizeof comm, "%.*s", (int)(rp - lp - 1), lp + 1);
        char st = rp[2];
        /* fields after ')': state(3) ppid pgrp session tty tpgid flags(9) */
        unsigned long flags = 0;
        char *f = rp + 2;
        for (int i = 3; i < 9 && f; i++) f = strchr(f + 1, ' ');
        if (f) flags = strtoul(f + 1, NULL, 10);
        snprintf(path, sizeof path, "/proc/%d/task/%d/wchan", pid, tid);
        if (readfile(path, wchan, sizeof wchan) < 0) strcpy(wchan, "?");
        if (!wchan[0]) strcpy(wchan, "0");
        char *wnl = strchr(wchan, '\n');
        if (wnl) *wnl = 0;
        if (with_stack) {
            l += snprintf(dst + l, size - l, "    thread %d (%s) state %c flags 0x%lx%s%s wchan %s\n",
                          tid, comm, st, flags, flags & PF_MEMALLOC_NOIO ? " MEMALLOC_NOIO" : "",
                          flags & PF_LOCAL_THROTTLE ? " LOCAL_THROTTLE" : "", wchan);
            if (l >= size) { l = size - 1; break; }
            snprintf(path, sizeof path, "/proc/%d/task/%d/stack", pid, tid);
            static char stack[4096];
            if (readfile(path, stack, sizeof stack) > 0) {
                char *s = stack, *nl;
                while (*s && l < size - 100) {
                    nl = strchr(s, '\n');
                    if (nl) *nl = 0;
                    l += snprintf(dst + l, size - l, "      %s\n", s);
                    if (!nl) break;
                    s = nl + 1;
                }
            }
        } else {
            l += snprintf(dst + l, size - l, "%s%.15s:%c%s%s", l ? "," : "", comm, st,
                          (st == 'D' || st == 'R') ? "@" : "",
                          (st == 'D' || st == 'R') ? wchan : "");
        }
        if (l >= size) { l = size - 1; break; }
    }
    closedir(d);
}

static int cmd_flags(int pid) {
    static char buf[65536];
    threads(pid, buf, sizeof buf, 1);
    /* keep only the thread lines */
    char *s = buf, *nl;
    while (*s) {
        nl = strchr(s, '\n');
        if (nl) *nl = 0;
        if (strstr(s, "thread ")) out("%s\n", s);
        if (!nl) break;
        s = nl + 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- watchdog */
/* The watchdog process is mlocked, and it must not need a new page once memory runs out: the
 * hog is posix_spawn()ed (CLONE_VM|CLONE_VFORK: no copy-on-write pages in the watchdog), the
 * progress counters live in a memfd both map, and the verdict on a stall comes from a sentinel
 * thread that only sleeps, reads those counters and writes to fds opened beforehand (the
 * console and /proc/sysrq-trigger). The main thread's /proc reads may block in reclaim. */
static struct prog *pg;
static int sysrq_fd = -1, hog_pid, stall_s, server_pid;
static double t_start, deadline_up;
static uint64_t hog_mb;
static volatile int finishing;           /* 0 -> 1 by whoever prints SELFHOST_RESULT */
static volatile double last_report;      /* main thread's last tick */
static volatile long max_swap_used, pin0, pout0, oom0, last_pin, last_pout, last_oom;
static volatile double io_change_at = -1;
static char last_line[8192];             /* the main thread's last WD line, for the verdict */
static pthread_mutex_t kmsg_lock = PTHREAD_MUTEX_INITIALIZER;

static void sysrq_fd_write(char c) {
    if (sysrq_fd >= 0) { if (pwrite(sysrq_fd, &c, 1, 0) < 0) {} }
    else out("WD (no sysrq outside the selfhost guest: would send '%c')\n", c);
}
/* sysrq only inside the selfhost guest (its kernel command line names SELFHOST_W=): never
 * reboot the machine this is tested on */
static int open_sysrq(void) {
    static char cl[4096];
    if (readfile("/proc/cmdline", cl, sizeof cl) <= 0 || !strstr(cl, "SELFHOST_W=")) return -1;
    return open("/proc/sysrq-trigger", O_WRONLY | O_CLOEXEC);
}
static const char *phase_name(void) {
    return pg->phase == 1 ? "write" : pg->phase == 2 ? "verify" : pg->phase == 3 ? "done" : "start";
}
static void evidence(char *dst, size_t size) {
    snprintf(dst, size,
             "oom_kills=%ld%s%s%s hung_task_msgs=%d%s%s%s io_errors=%d%s%s%s nbd_msgs=%d%s%s%s"
             "%s%s%s%s%s%s",
             last_oom - oom0, s_kill[0] ? " [" : "", s_kill, s_kill[0] ? "]" : "", n_hung,
             s_hung[0] ? " [" : "", s_hung, s_hung[0] ? "]" : "", n_ioerr, s_ioerr[0] ? " [" : "",
             s_ioerr, s_ioerr[0] ? "]" : "", n_nbd, s_nbd[0] ? " [" : "", s_nbd,
             s_nbd[0] ? "]" : "", n_allocfail ? " alloc_failures=[" : "", s_allocfail,
             n_allocfail ? "]" : "", n_bug ? " kernel_bugs=[" : "", s_bug, n_bug ? "]" : "");
}
static void common(char *dst, size_t size, const char *server) {
    static __thread char ev[4096];
    evidence(ev, sizeof ev);
    snprintf(dst, size,
             "hog=%lluMiB phase=%s written=%llu verified=%llu/%llu bad=%llu write=%.1fs verify=%.1fs "
             "pswpout=%ld pswpin=%ld peak_swap_used=%ldkB server=%s %s",
             (unsigned long long)hog_mb, phase_name(), (unsigned long long)pg->written,
             (unsigned long long)pg->verified, (unsigned long long)pg->pages,
             (unsigned long long)pg->bad, pg->write_ms / 1000.0, pg->verify_ms / 1000.0,
             last_pout - pout0, last_pin - pin0, max_swap_used, server, ev);
}

/* Kernel stacks of every server and hog thread, read from /proc by a thread of its own: those
 * reads allocate, so the sentinel waits for it at most 20 s and then goes on without it. */
static sem_t dump_go;
static volatile int dump_done;
static void *dumper(void *arg) {
    (void)arg;
    static char big[65536];
    while (sem_wait(&dump_go) && errno == EINTR) {}
    if (server_pid > 0 && alive(server_pid)) {
        threads(server_pid, big, sizeof big, 1);
        out("WD server %d threads (state, PF_ flags, wchan, kernel stack):\n%s", server_pid, big);
    }
    threads(hog_pid, big, sizeof big, 1);
    out("WD hog %d threads:\n%s", hog_pid, big);
    dump_done = 1;
    return NULL;
}

static void *sentinel(void *arg) {
    (void)arg;
    uint64_t last = 0;
    double last_change = now();
    static __thread char buf[8192];
    for (;;) {
        sleep(1);
        if (finishing) return NULL;
        double t = now();
        uint64_t prog = pg->written + pg->verified;
        if (prog != last) { last = prog; last_change = t; }
        int stalled = t - last_change >= stall_s, late = t >= deadline_up;
        if (!stalled && !late) continue;
        if (__sync_val_compare_and_swap(&finishing, 0, 1) != 0) return NULL;
        if (stalled)
            out("WD DEADLOCK: no hog progress for %.0f s (hog %s at %llu+%llu pages); the main "
                "watchdog thread last reported at t=%.0f, swap counters last moved at t=%.0f\n",
                t - last_change, phase_name(), (unsigned long long)pg->written,
                (unsigned long long)pg->verified, last_report - t_start,
                io_change_at < 0 ? -1.0 : io_change_at);
        else
            out("WD TIMEOUT: guest deadline reached while the hog was still making progress\n");
        out("WD last report: %s\n", last_line[0] ? last_line : "(none)");
        sem_post(&dump_go);
        for (int i = 0; i < 200 && !dump_done; i++) {
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, NULL);
        }
        if (!dump_done) out("WD (the /proc stack dump did not finish in 20 s)\n");
        out("WD sysrq-w (blocked tasks), sysrq-l (what each CPU runs), sysrq-m (memory) follow\n");
        tcdrain(1);
        sysrq_fd_write('w');
        sysrq_fd_write('l');
        sysrq_fd_write('m');
        sleep(3);
        if (pthread_mutex_trylock(&kmsg_lock) == 0) { kmsg_scan(); pthread_mutex_unlock(&kmsg_lock); }
        common(buf, sizeof buf, server_pid <= 0 ? "n/a" : "see-sysrq-w");
        if (stalled)
            out("SELFHOST_RESULT deadlock no hog progress for %.0fs (swap counters last moved at "
                "t=%.0fs, main watchdog thread last ran at t=%.0fs); %s\n",
                t - last_change, io_change_at, last_report - t_start, buf);
        else
            out("SELFHOST_RESULT error timeout (guest deadline, hog still progressing); %s\n", buf);
        tcdrain(1);
        sleep(2);
        sysrq_fd_write('b');
        if (sysrq_fd < 0) { kill(hog_pid, SIGKILL); _exit(1); }
        for (;;) pause();
    }
}

static int cmd_hog(int argc, char **argv) {
    if (argc < 5) return 2;
    int fd = atoi(argv[4]);  /* shguest hog MB SEED PROGRESS_FD [RATE_MIB_S] */
    struct prog *p = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { out("HOG: mmap progress: %s\n", strerror(errno)); return 4; }
    hog(p, strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 0), argc > 5 ? atof(argv[5]) : 0);
    return 0;
}

static int cmd_run(int argc, char **argv) {
    if (argc < 8) { out("usage: shguest run HOG_MB INTERVAL STALL DEADLINE SERVER_PID SWAPDEV\n"); return 2; }
    hog_mb = strtoull(argv[2], NULL, 10);
    int interval = atoi(argv[3]);
    stall_s = atoi(argv[4]);
    deadline_up = atof(argv[5]);
    server_pid = atoi(argv[6]);
    const char *dev = argv[7];
    const char *rate = argc > 8 ? argv[8] : "0";
    protect_self();
    sysrq_fd = open_sysrq();
    kmsg_fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (kmsg_fd >= 0) lseek(kmsg_fd, 0, SEEK_END);
    int mfd = memfd_create("selfhost-progress", 0);
    if (mfd < 0 || ftruncate(mfd, PG)) { out("WD memfd: %s\n", strerror(errno)); return 4; }
    pg = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (pg == MAP_FAILED) { out("WD mmap: %s\n", strerror(errno)); return 4; }
    pg->pages = hog_mb << 8;
    static char mi[8192], vm[16384], sst[4096], thr[4096], infl[64], path[128], hogthr[512];
    static char line[8192];
    readfile("/proc/vmstat", vm, sizeof vm);
    oom0 = last_oom = field(vm, "oom_kill ");
    pin0 = last_pin = field(vm, "pswpin ");
    pout0 = last_pout = field(vm, "pswpout ");
    char a_mb[32], a_fd[16];
    snprintf(a_mb, sizeof a_mb, "%llu", (unsigned long long)hog_mb);
    snprintf(a_fd, sizeof a_fd, "%d", mfd);
    char *hargv[] = {"shguest", "hog", a_mb, "0x5e1f", a_fd, (char *)rate, NULL};
    extern char **environ;
    t_start = last_report = now();
    pid_t hp;
    static char self[512];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) { out("WD readlink: %s\n", strerror(errno)); return 4; }
    self[sl] = 0;
    int rc = posix_spawn(&hp, self, NULL, NULL, hargv, environ);
    if (rc) { out("WD posix_spawn: %s\n", strerror(rc)); return 4; }
    hog_pid = hp;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 256 << 10);
    pthread_t st, dt;
    sem_init(&dump_go, 0, 0);
    if (pthread_create(&st, &at, sentinel, NULL) || pthread_create(&dt, &at, dumper, NULL)) {
        out("WD: no sentinel thread\n");
        return 4;
    }
    out("WD hog pid %d, %llu MiB at %s MiB/s (0: unlimited), server pid %d, swap %s, tick %d s, "
        "stall %d s, deadline uptime %.0f\n", hp, (unsigned long long)hog_mb, rate, server_pid, dev,
        interval, stall_s, deadline_up);
    snprintf(path, sizeof path, "/sys/block/%s/inflight", dev);
    uint64_t last = 0;
    int status = 0;
    int mi_fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    for (;;) {
        int exited = 0;
        /* sample memory and swap counters every second, report every interval */
        for (int i = 0; i < interval * 10 && !exited; i++) {
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, NULL);
            if (waitpid(hp, &status, WNOHANG) == hp) exited = 1;
            if (i % 10 == 9 || exited) {
                ssize_t r = pread(mi_fd, mi, sizeof mi - 1, 0);
                mi[r > 0 ? r : 0] = 0;
                long su = field(mi, "SwapTotal:") - field(mi, "SwapFree:");
                if (su > max_swap_used) max_swap_used = su;
                readfile("/proc/vmstat", vm, sizeof vm);
                long pi = field(vm, "pswpin "), po = field(vm, "pswpout ");
                if (pi != last_pin || po != last_pout) io_change_at = now() - t_start;
                last_pin = pi;
                last_pout = po;
            }
        }
        double t = now();
        pthread_mutex_lock(&kmsg_lock);
        kmsg_scan();
        pthread_mutex_unlock(&kmsg_lock);
        long pin = last_pin, pout = last_pout;
        last_oom = field(vm, "oom_kill ");
        long swap_used = field(mi, "SwapTotal:") - field(mi, "SwapFree:");
        uint64_t prog = pg->written + pg->verified, delta = prog - last;
        last = prog;
        if (readfile(path, infl, sizeof infl) < 0) strcpy(infl, "? ?");
        char *nl = strchr(infl, '\n');
        if (nl) *nl = 0;
        sst[0] = thr[0] = 0;
        if (server_pid > 0) {
            char sp[64];
            snprintf(sp, sizeof sp, "/proc/%d/status", server_pid);
            if (readfile(sp, sst, sizeof sst) > 0) threads(server_pid, thr, sizeof thr, 0);
        }
        threads(hp, hogthr, sizeof hogthr, 0);
        uint64_t done = pg->phase >= 2 ? pg->verified : pg->written;
        int n = snprintf(line, sizeof line,
            "WD t=%4.0f hog %s %llu/%llu (+%llu) [%s] | free %ld avail %ld anon %ld file %ld "
            "mlocked %ld shmem %ld swapused %ld wb %ld kB | pswpin %ld pswpout %ld oom_kill %ld | "
            "%s inflight %s",
            t - t_start, phase_name(), (unsigned long long)done, (unsigned long long)pg->pages,
            (unsigned long long)delta, hogthr, field(mi, "MemFree:"), field(mi, "MemAvailable:"),
            field(mi, "AnonPages:"), field(mi, "Active(file):") + field(mi, "Inactive(file):"),
            field(mi, "Mlocked:"), field(mi, "Shmem:"), swap_used, field(mi, "Writeback:"),
            pin - pin0, pout - pout0, last_oom - oom0, dev, infl);
        if (server_pid > 0 && n < (int)sizeof line) {
            if (sst[0])
                snprintf(line + n, sizeof line - n, " | server %c rss %ld swap %ld lck %ld kB thr %s",
                         procstate(server_pid), field(sst, "VmRSS:"), field(sst, "VmSwap:"),
                         field(sst, "VmLck:"), thr);
            else
                snprintf(line + n, sizeof line - n, " | server GONE");
        }
        if (finishing) for (;;) pause(); /* the sentinel has the floor */
        out("%s\n", line);
        snprintf(last_line, sizeof last_line, "%s", line);
        last_report = t;
        if (exited) break;
    }
    if (__sync_val_compare_and_swap(&finishing, 0, 1) != 0) for (;;) pause();
    pthread_mutex_lock(&kmsg_lock);
    kmsg_scan();
    pthread_mutex_unlock(&kmsg_lock);
    readfile("/proc/vmstat", vm, sizeof vm);
    last_oom = field(vm, "oom_kill ");
    last_pin = field(vm, "pswpin ");
    last_pout = field(vm, "pswpout ");
    int salive = server_pid > 0 ? alive(server_pid) : 1;
    common(line, sizeof line, server_pid <= 0 ? "n/a" : salive ? "alive" : "dead");
    char how[96];
    if (WIFEXITED(status)) snprintf(how, sizeof how, "exit %d", WEXITSTATUS(status));
    else snprintf(how, sizeof how, "signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    /* ok: the hog verified every page, no OOM kill, the server lives, no swap I/O error */
    int hog_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    const char *outcome, *note = "";
    if (hog_ok && last_oom == oom0 && salive && n_ioerr == 0) outcome = "ok";
    else if (last_oom > oom0) outcome = "oom";
    else outcome = "error";
    if (hog_ok && n_ioerr) note = " (the hog verified every page, but the swap device failed I/O)";
    out("SELFHOST_RESULT %s hog %s%s, %.1fs total; %s\n", outcome, how, note, now() - t_start, line);
    return 0;
}

static int cmd_guard(int argc, char **argv) {
    if (argc < 3) return 2;
    double deadline = atof(argv[2]);
    protect_self();
    sysrq_fd = open_sysrq();
    while (now() < deadline) sleep(1);
    out("SELFHOST_GUARD guest deadline (uptime %.0f s) reached: sysrq-w, then reboot\n", deadline);
    tcdrain(1);
    sysrq_fd_write('w');
    sleep(2);
    tcdrain(1);
    sleep(1);
    sysrq_fd_write('b');
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) goto usage;
    if (!strcmp(argv[1], "run")) return cmd_run(argc, argv);
    if (!strcmp(argv[1], "guard")) return cmd_guard(argc, argv);
    if (!strcmp(argv[1], "hog")) return cmd_hog(argc, argv);
    if (!strcmp(argv[1], "flags") && argc > 2) return cmd_flags(atoi(argv[2]));
    if (!strcmp(argv[1], "gen") && argc > 3) {
        LIT = atoi(argv[2]);
        unsigned char b[PG];
        for (long i = 0, n = atol(argv[3]); i < n; i++) { gen(b, i, 0x5e1f); fwrite(b, 1, PG, stdout); }
        return 0;
    }
    if (!strcmp(argv[1], "ioflusher") && argc > 2) {
        if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0)) { perror("PR_SET_IO_FLUSHER"); return 127; }
        execvp(argv[2], argv + 2);
        perror("exec");
        return 127;
    }
usage:
    out("usage: shguest run|guard|flags|gen|ioflusher ...\n");
    return 2;
}
CSRC
cat > "$W/mlockall.c" <<'CSRC'
/* LD_PRELOAD into the zramd server: nbdkit mlockall()s itself before main (zramd does not). */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif
__attribute__((constructor)) static void selfhost_mlockall(void) {
    char exe[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = 0;
    const char *b = strrchr(exe, '/');
    if (strcmp(b ? b + 1 : exe, "nbdkit")) return;
    if (mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT))
        perror("selfhost: nbdkit mlockall");
    else
        fprintf(stderr, "selfhost: nbdkit %d: mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT)\n", getpid());
}
CSRC
gcc -O2 -Wall -pthread -o "$W/shguest" "$W/shguest.c"
gcc -O2 -Wall -shared -fPIC -o "$W/mlockall.so" "$W/mlockall.c"

# ---------------------------------------------------------------- initramfs
R=$W/initramfs
mkdir -p "$R"/{bin,proc,sys,dev,lib/modules,etc,lower,rw,newroot}
cp /bin/busybox "$R/bin/busybox"
file "$R/bin/busybox" | grep -q 'statically linked' || { echo "selfhost: /bin/busybox is not static" >&2; exit 2; }
ORDER=()
addmod() {
    local m=$1 d
    [[ " ${ORDER[*]} " == *" $m "* ]] && return 0
    for d in $(modinfo -b "${TREE:-/}" -k "$K" -F depends "$m" | tr ',' ' '); do addmod "$d"; done
    cp "$(modinfo -b "${TREE:-/}" -k "$K" -n "$m")" "$R/lib/modules/$m.ko"
    ORDER+=("$m")
}
for m in virtio_pci 9pnet_virtio 9p overlay; do addmod $m; done
echo "${ORDER[*]}" > "$R/etc/modorder"
cat > "$R/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
fail() { echo "SELFHOST_RESULT error guest init: $*"; sleep 1; echo b > /proc/sysrq-trigger; sleep 30; }
for m in $(cat /etc/modorder); do insmod /lib/modules/$m.ko || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || fail "9p mount"
mount -t tmpfs -o mode=755 rw /rw && mkdir -p /rw/root/u /rw/root/w
mount -t overlay -o lowerdir=/lower,upperdir=/rw/root/u,workdir=/rw/root/w root /newroot || fail "overlay"
# fresh /tmp and /run: the host's /tmp holds other people's sockets and FUSE mounts
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mount -t tmpfs -o mode=755 run /newroot/run
i=0
for p in $(echo "$SELFHOST_PATHS" | tr ':' ' '); do
    i=$((i + 1)); mkdir -p /rw/p$i/u /rw/p$i/w /newroot$p
    mount -t overlay -o lowerdir=/lower$p,upperdir=/rw/p$i/u,workdir=/rw/p$i/w p$i /newroot$p || fail "overlay $p"
done
if [ -n "$SELFHOST_MODS" ]; then  # the kernel's modules, where modprobe looks for them
    mkdir -p "/newroot/lib/modules/${SELFHOST_MODS##*/}"
    mount --bind "/lower$SELFHOST_MODS" "/newroot/lib/modules/${SELFHOST_MODS##*/}" || fail "modules"
fi
for d in proc sys dev; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /bin/bash "$SELFHOST_W/payload.sh"
INIT
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$W/initrd.gz")

# ---------------------------------------------------------------- payload (PID 1 in the guest)
cat > "$W/config" <<EOF
MODE=$MODE CHECKOUT=$CHECKOUT HOG_MB=$HOG_MB HOG_RATE=$HOG_RATE SWAP_SIZE=$SWAP_SIZE STALL=$STALL INTERVAL=$INTERVAL
V_SWAP=$V_SWAP V_OOM=$V_OOM V_MLOCK=$V_MLOCK V_FLUSHER=$V_FLUSHER MIN_FREE=$MIN_FREE THREADS=$THREADS
SYSCTLS="$SYSCTLS" SLOG=$SLOG DISCARD=$DISCARD
SERVE_ARGS="$SERVE_ARGS"
GUARD_AT=$((TIMEOUT - 45)) RUN_DEADLINE=$((TIMEOUT - 110)) LABEL=$LABEL
EOF
cat > "$W/payload.sh" <<'PAYLOAD'
# shellcheck shell=bash
. "$SELFHOST_W/config"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
say() { echo "SELFHOST: $*"; }
die() { echo "SELFHOST_RESULT error $*"; sleep 2; echo b > /proc/sysrq-trigger; sleep 60; }
G=$SELFHOST_W/shguest
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 shm /dev/shm
say "payload start at uptime $(cut -d' ' -f1 /proc/uptime) s: $LABEL, hog $HOG_MB MiB, swap $SWAP_SIZE, $(nproc) vCPU, kernel $(uname -r)"
"$G" guard "$GUARD_AT" &
sysctl -q kernel.hung_task_timeout_secs=60 kernel.printk="7 4 1 7"
[ "$MIN_FREE" != 0 ] && sysctl -q vm.min_free_kbytes="$MIN_FREE"
IFS=, read -ra kv <<< "$SYSCTLS"
for x in "${kv[@]}"; do [ -n "$x" ] && { sysctl -w "$x" || die "sysctl $x"; }; done
say "vm.min_free_kbytes=$(cat /proc/sys/vm/min_free_kbytes) swappiness=$(cat /proc/sys/vm/swappiness)" \
    "watermark_scale=$(cat /proc/sys/vm/watermark_scale_factor) overcommit=$(cat /proc/sys/vm/overcommit_memory)" \
    "thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled) zswap=$(cat /sys/module/zswap/parameters/enabled)"
SPID=0
SWAPON_OPTS=
[ "$DISCARD" = 1 ] && SWAPON_OPTS=--discard
case $MODE in
kernel-zram)
    modprobe zram num_devices=1 || die "modprobe zram"
    echo lz4 > /sys/block/zram0/comp_algorithm || die "zram lz4"
    echo "$SWAP_SIZE" > /sys/block/zram0/disksize || die "zram disksize"
    mkswap /dev/zram0 >/dev/null && swapon ${SWAPON_OPTS:-} /dev/zram0 || die "swapon zram0"
    DEV=zram0 ;;
zramd)
    modprobe nbd || die "modprobe nbd"
    modprobe fuse || die "modprobe fuse"
    S=/run/selfhost
    mkdir -p $S
    t0=$(cut -d' ' -f1 /proc/uptime)
    (
        [ "$V_OOM" = 1 ] && echo -1000 > /proc/self/oom_score_adj
        [ "$V_MLOCK" = 1 ] && export LD_PRELOAD=$SELFHOST_W/mlockall.so
        pre=()
        [ "$V_FLUSHER" = 1 ] && pre=("$G" ioflusher)
        exec "${pre[@]}" "$CHECKOUT/scripts/zramd" serve --size "$SWAP_SIZE" --algorithm lz4 \
            --socket $S/zramd.sock --control $S/control --pidfile $S/zramd.pid --log "$SLOG" \
            ${THREADS:+--threads $THREADS} $SERVE_ARGS
    ) || { [ -f "$SLOG" ] && cat "$SLOG"; die "zramd serve did not start"; }
    SPID=$(cat $S/zramd.pid)
    say "zramd serve ready after $(awk -v a="$t0" '{printf "%.0f", $1-a}' /proc/uptime) s; nbdkit pid $SPID" \
        "oom_score_adj=$(cat /proc/$SPID/oom_score_adj)" \
        "$(grep -E '^(VmRSS|VmLck)' /proc/$SPID/status | tr -s ' \t\n' ' ')"
    [ -f "$SLOG" ] && grep -h selfhost: "$SLOG"
    say "nbdkit threads (PF_MEMALLOC_NOIO/PF_LOCAL_THROTTLE = PR_SET_IO_FLUSHER):"
    "$G" flags "$SPID"
    nbd-client -unix $S/zramd.sock /dev/nbd0 -N zram0 -b 4096 $([ "$V_SWAP" = 1 ] && echo -swap) \
        || die "nbd-client failed"
    say "nbd-client processes left after the attach: $(pgrep -d' ' -x nbd-client || echo none)" \
        "(netlink mode: none, so -swap's mlockall/oom_score_adj die with it)"
    mkswap /dev/nbd0 >/dev/null && swapon ${SWAPON_OPTS:-} /dev/nbd0 || die "swapon nbd0"
    DEV=nbd0 ;;
esac
say "swap: $(tail -n +2 /proc/swaps | tr -s ' \t' ' ')"
say "$(grep -E '^(MemTotal|MemFree|MemAvailable)' /proc/meminfo | tr -s ' \n' ' ')"
"$G" run "$HOG_MB" "$INTERVAL" "$STALL" "$RUN_DEADLINE" "$SPID" "$DEV" "$HOG_RATE"
# post-mortem (the watchdog has printed SELFHOST_RESULT); every step bounded
if [ "$MODE" = kernel-zram ]; then
    echo "SELFHOST_MMSTAT $(cat /sys/block/zram0/mm_stat | tr -s ' ' ' ')"
else
    echo "SELFHOST_MMSTAT $(timeout 20 cat /run/selfhost/control/zram0/mm_stat | tr -s ' ' ' ')"
    if [ "$DISCARD" = 1 ]; then
        # discards of freed clusters are queued work: wait until the pool holds less than
        # 8 MiB of data (the hog is gone; the rest of the guest swaps little), or 60 s
        t0=$(cut -d' ' -f1 /proc/uptime) mm=
        for _ in $(seq 60); do
            mm=$(timeout 20 cat /run/selfhost/control/zram0/mm_stat | tr -s ' ' ' ')
            o=$(echo $mm | cut -d" " -f1)  # mm_stat pads its fields: a leading blank
            [ "${o:-x}" -lt $((8 << 20)) ] 2>/dev/null && break
            sleep 1
        done
        echo "SELFHOST_MMSTAT_SETTLED $(awk -v a="$t0" '{printf "%.0f", $1-a}' /proc/uptime)s $mm"
    fi
    timeout 20 cat /run/selfhost/control/zram0/mem_stat 2>/dev/null | sed 's/^/SELFHOST: mem_stat /'
    [ -f "$SLOG" ] && timeout 5 tail -n 5 "$SLOG" | sed 's/^/SELFHOST: zramd.log /'
fi
say "$(grep -E '^(MemFree|SwapFree|Mlocked)' /proc/meminfo | tr -s ' \n' ' ')"
say "end at uptime $(cut -d' ' -f1 /proc/uptime) s"
sleep 2
echo b > /proc/sysrq-trigger
sleep 60
PAYLOAD

# ---------------------------------------------------------------- run
CON=$W/console.log
: > "$CON"
START=$(date +%s)
PATHS=$CHECKOUT:$W
echo "selfhost: $LABEL, guest ${GUEST_MB} MiB, $SMP vCPU, hog ${HOG_MB} MiB, swap $SWAP_SIZE, timeout ${TIMEOUT}s (TCG)"
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -m "$GUEST_MB" -smp "$SMP" \
    -display none -nodefaults -no-reboot -monitor none -serial file:"$CON" \
    -kernel "$TREE/boot/vmlinuz-$K" -initrd "$W/initrd.gz" \
    -append "console=ttyS0 panic=-1 zswap.enabled=0 transparent_hugepage=never SELFHOST_W=$W SELFHOST_PATHS=$PATHS${MODS:+ SELFHOST_MODS=$MODS}" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    </dev/null >"$W/qemu.out" 2>&1 &
QPID=$!
# stream the console from the payload's first line on
tail -n +1 -f --pid=$QPID "$CON" 2>/dev/null | (
    on=
    while IFS= read -r l; do
        l=${l%$'\r'}
        [ -z "$on" ] && [[ $l == "SELFHOST: payload start"* ]] && on=1
        [ -n "$on" ] && printf '%s\n' "$l"
    done
) &
TPID=$!
RC=0
wait $QPID || RC=$?
QPID=
wait $TPID 2>/dev/null || true
ELAPSED=$(($(date +%s) - START))
tr -d '\r' < "$CON" > "$W/console.txt"
[ -n "$LOG" ] && cp "$W/console.txt" "$LOG"
if ! grep -q '^SELFHOST: payload start' "$W/console.txt"; then
    echo "--- console tail (the payload never started) ---"
    tail -n 30 "$W/console.txt"
    cat "$W/qemu.out"
fi
RES=$(grep -a -m1 '^SELFHOST_RESULT ' "$W/console.txt" | cut -d' ' -f2- || true)
MM=$(grep -a -m1 '^SELFHOST_MMSTAT ' "$W/console.txt" | cut -d' ' -f2- || true)
MMS=$(grep -a -m1 '^SELFHOST_MMSTAT_SETTLED ' "$W/console.txt" | cut -d' ' -f2- || true)
if [ -n "$RES" ]; then
    OUTCOME=${RES%% *} DETAILS=${RES#* }
elif grep -aq '^SELFHOST_GUARD' "$W/console.txt"; then
    OUTCOME=error DETAILS="guest deadline reached without a result (setup or post-mortem stuck)"
elif [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
    LASTWD=$(grep -a '^WD t=' "$W/console.txt" | tail -n 1)
    if [[ $LASTWD == *"(+0)"* ]]; then OUTCOME=deadlock; else OUTCOME=error; fi
    DETAILS="guest unresponsive: host timeout after ${TIMEOUT}s; last watchdog line: ${LASTWD:-none}"
else
    OUTCOME=error DETAILS="qemu exited $RC without a result"
fi
echo "selfhost $LABEL: $OUTCOME $DETAILS; mm_stat=[${MM:-n/a}]${MMS:+ mm_stat_settled=[$MMS]} guest=${GUEST_MB}MiB smp=$SMP vm=${ELAPSED}s"

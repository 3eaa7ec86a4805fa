# shellcheck shell=bash
# Sourced by scripts/test --sanitize: the C data path's suites on a sanitized zramd._zram.
#
# zramd._zram is built with -fsanitize=thread (tsan) or -fsanitize=address,undefined (asan) into
# a temporary directory that also holds a copy of the zramd package, and pytest imports zramd
# from there (PYTHONPATH, with PYTHONSAFEPATH so the working tree's zramd/ does not come
# first). The tree's own build and the venv are not touched. CPython and the codec libraries
# are not instrumented, so the runtime is preloaded (LD_PRELOAD) before anything else. pytest
# captures only Python's sys.stdout/stderr (--capture=sys), so a report the runtime writes to
# fd 2 reaches the terminal even when it halts the process, and a copy of stderr is searched
# for reports: any report, or any failure, fails the run.
#
# What runs: tests/test_core_stress.py and the suites that drive the C core, pool and codecs
# from threads or through their error paths, C implementation only (the Python twins gain
# nothing from a sanitizer). Tests that start other programs (scripts/c-stress, benchmarks)
# are left out: the preloaded runtime would be inherited by gcc and friends.
#
# Options, and why:
#   both      PYTHONMALLOC=malloc: every Python object comes from malloc, so the sanitizer
#             sees the memory behind the buffers C reads and writes (pymalloc hides it).
#   tsan      no ASLR (setarch -R), as scripts/c-stress: gcc 12's TSan wants the address-space
#             layout it was built for. halt_on_error: the first race ends the run.
#             suppressions: tests/tsan.supp (third-party frames only, each with its reason; none so far).
#   asan      detect_leaks=0: CPython does not free everything at exit, by design; a leak
#             check would report the interpreter, not zramd. halt_on_error, and UBSan with
#             -fno-sanitize-recover: the first error ends the run.

ZRAMD_SANITIZE_SUITES=(
    tests/test_core_stress.py
    tests/test_device_concurrency.py
    tests/test_tiers.py
    tests/test_device.py
    tests/test_pool_concurrency.py
    tests/test_pool.py
    tests/test_codecs_native.py
)
# the C implementation's parameter of each suite (pool_impl: native, make_pool: c)
# and not the tests that measure RSS, which the sanitizers' shadow memory inflates
ZRAMD_SANITIZE_K="not python and not harness and not bench and not long and not rss"

zramd_sanitize() {
    local kind=$1; shift
    local out flags runtime so rc
    zramd_need_pkgs gcc liblz4-dev libzstd-dev zlib1g-dev liblzo2-dev
    out=$(mktemp -d "${TMPDIR:-/tmp}/zramd-sanitize.XXXXXX")
    # shellcheck disable=SC2064  # expand now: $out is local
    trap "rm -rf '$out'" EXIT
    case $kind in
        tsan)
            flags="-O1 -g -fno-omit-frame-pointer -fsanitize=thread"
            runtime=libtsan.so.2 ;;
        asan)
            flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
            runtime=libasan.so.8 ;;
    esac
    runtime=$(gcc -print-file-name="$runtime")
    [ -f "$runtime" ] || { zramd_log "no $runtime (gcc 12's sanitizer runtime)"; return 1; }

    # the package without its build, then the sanitized build into it
    cp -r "$ZRAMD_ROOT/zramd" "$out/zramd"
    rm -rf "$out/zramd/csrc" "$out"/zramd/_zram*.so
    find "$out/zramd" -name __pycache__ -prune -exec rm -rf {} +
    zramd_log "building zramd._zram with $flags into $out"
    # setup.py's extra_compile_args (-O2 ...) come after CFLAGS; the sanitizer flags stay
    (cd "$ZRAMD_ROOT" && CFLAGS="$flags" LDFLAGS="${flags#-O1 -g }" "$ZRAMD_PY" setup.py -q \
        build_ext --build-lib "$out" --build-temp "$out/build" >"$out/build.log" 2>&1) \
        || { cat "$out/build.log" >&2; return 1; }
    so=$(ls "$out"/zramd/_zram*.so 2>/dev/null) \
        || { cat "$out/build.log" >&2; zramd_log "the sanitized build failed"; return 1; }
    case $(ldd "$so") in
        *"lib$kind.so"*) ;;
        *) zramd_log "$so is not linked to lib$kind"; return 1 ;;
    esac

    local env=(
        PYTHONPATH="$out" PYTHONSAFEPATH=1 PYTHONMALLOC=malloc LD_PRELOAD="$runtime"
        TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$ZRAMD_ROOT/tests/tsan.supp ${TSAN_OPTIONS:-}"
        ASAN_OPTIONS="detect_leaks=0 halt_on_error=1 ${ASAN_OPTIONS:-}"
        UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 ${UBSAN_OPTIONS:-}"
    )
    local run=(env "${env[@]}")
    [ "$kind" = tsan ] && run=(setarch "$(uname -m)" -R "${run[@]}")
    # the tests must import the sanitized build, not the tree's
    local where
    where=$("${run[@]}" "$ZRAMD_PY" -c 'import zramd._zram as m; print(m.__file__)')
    [ "$where" = "$so" ] || { zramd_log "tests would import $where, not $so"; return 1; }

    # arguments naming a test path replace the default suites; options alone are added to them
    local args=("$@") a paths=0
    for a in "$@"; do [ -e "${a%%::*}" ] && paths=1; done
    [ $paths -eq 1 ] || args=("${ZRAMD_SANITIZE_SUITES[@]}" -k "$ZRAMD_SANITIZE_K" "$@")
    zramd_log "$kind: pytest ${args[*]}"
    set +e
    "${run[@]}" "$ZRAMD_PY" -m pytest -p no:cacheprovider --capture=sys "${args[@]}" \
        2> >(tee "$out/stderr" >&2)
    rc=$?
    wait  # for tee
    set -e
    local reports
    reports=$(grep -c -E '^(WARNING: ThreadSanitizer|SUMMARY: (Thread|Address|UndefinedBehavior)Sanitizer|==[0-9]+==ERROR: |.*: runtime error: )' "$out/stderr" || true)
    if [ "$reports" -gt 0 ]; then
        zramd_log "$kind: $reports sanitizer report line(s) above (WARNING / SUMMARY / ERROR / runtime error): FAILED"
        return 1
    fi
    [ $rc -ne 5 ] || { zramd_log "pytest collected no tests"; return 1; }
    [ $rc -eq 0 ] && zramd_log "$kind: clean (no sanitizer report)"
    return $rc
}

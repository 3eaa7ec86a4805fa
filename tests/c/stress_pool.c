/*
 * stress_pool.c: zramd's C pool (zramd/csrc/zsmalloc.c) under threads, with no Python.
 *
 *     stress_pool [OPS_PER_WORKER [SEED]]        built and run by scripts/c-stress
 *
 * It includes zsmalloc.c itself, so it can hold the pool's locks and break its structures
 * on purpose. First the promises one thread can check: single-flight compaction, corrupt
 * headers refused (-EIO), zs_check finding a broken count, bad sizes and full arenas leaving
 * nothing behind, frees released to the OS in batches, mlock'ed frames released all the
 * same. Then the stress: NR_WORKERS threads store, load and free random batches, on objects
 * of their own and on shared entries (each under a mutex of its own, as the device's slot
 * locks), while one thread compacts (gentle and not) and one reads statistics. Every load is
 * checked against the bytes its (seed, size) generates. At the end every object reads back,
 * zs_check is clean, and once everything is freed and compacted no frame is held.
 *
 * Exit status 0 when everything held; the first failure is printed and exits 1.
 */
#include "zsmalloc.c"

#include <inttypes.h>
#include <unistd.h>

#define NR_WORKERS 4
#define NR_SHARED 256
#define MAX_PRIVATE 2048
#define MAX_BATCH 32

#define FAIL(...)                                                                              \
    do {                                                                                       \
        fprintf(stderr, "stress_pool: %s:%d: ", __FILE__, __LINE__);                           \
        fprintf(stderr, __VA_ARGS__);                                                          \
        fprintf(stderr, "\n");                                                                 \
        exit(1);                                                                               \
    } while (0)
#define EXPECT(cond, ...)                                                                      \
    do {                                                                                       \
        if (!(cond))                                                                           \
            FAIL("expected " #cond ": " __VA_ARGS__);                                          \
    } while (0)

static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

static unsigned below(uint64_t *state, unsigned n)
{
    return (unsigned)(next_random(state) % n);
}

/* The bytes an object of (seed, size) holds: runs of a repeated byte and noise, so objects
 * compress a little and neighbours differ. */
static void fill(unsigned char *buf, uint32_t size, uint64_t seed)
{
    uint64_t state = seed * 0x9E3779B97F4A7C15u + 1;
    for (uint32_t i = 0; i < size; i += 8) {
        uint64_t v = (i & 64) ? seed : next_random(&state);
        memcpy(buf + i, &v, size - i < 8 ? size - i : 8);
    }
}

static void verify(const unsigned char *got, uint32_t got_size, uint32_t size, uint64_t seed,
                   uint64_t handle)
{
    unsigned char want[ZS_MAX_ALLOC_SIZE];
    if (got_size != size)
        FAIL("handle %" PRIu64 ": %u bytes, expected %u", handle, got_size, size);
    fill(want, size, seed);
    if (memcmp(got, want, size) != 0)
        FAIL("handle %" PRIu64 ": contents differ (seed %" PRIu64 ", %u bytes)", handle, seed,
             size);
}

static uint32_t random_size(uint64_t *rng)
{
    switch (below(rng, 4)) {
    case 0:
        return 1 + below(rng, ZS_MAX_ALLOC_SIZE);
    case 1:
        return 20 + below(rng, 280); /* small classes: many objects per zspage */
    case 2:
        return 600 + below(rng, 1400); /* the bulk of compressed pages */
    default:
        return below(rng, 8) ? 3625 + below(rng, 472) : ZS_MAX_ALLOC_SIZE; /* huge */
    }
}

struct object {
    uint64_t handle, seed;
    uint32_t size;
};

static void store_one(struct zs_pool *pool, struct object *o, uint64_t seed, uint32_t size)
{
    unsigned char buf[ZS_MAX_ALLOC_SIZE];
    const unsigned char *src = buf;
    struct zs_fault f;
    fill(buf, size, seed);
    int err = zs_store_many(pool, 1, &src, &size, &o->handle, &f);
    if (err)
        FAIL("store of %u bytes: %d (fault %d)", size, err, f.kind);
    o->seed = seed;
    o->size = size;
}

static void load_check(struct zs_pool *pool, const struct object *o)
{
    unsigned char buf[ZS_MAX_ALLOC_SIZE];
    struct zs_fault f;
    int got = zs_load(pool, o->handle, buf, &f);
    if (got < 0)
        FAIL("load of handle %" PRIu64 ": %d (fault %d)", o->handle, got, f.kind);
    verify(buf, (uint32_t)got, o->size, o->seed, o->handle);
}

static void check_clean(struct zs_pool *pool)
{
    char msg[256];
    if (zs_check(pool, msg, sizeof(msg)) != 0)
        FAIL("zs_check: %s", msg);
}

static uint64_t live_objects(struct zs_pool *pool)
{
    struct zs_pool_stats ps;
    zs_pool_stats(pool, &ps, NULL);
    return ps.objects;
}

/* -- promises one thread can check ------------------------------------------------------------ */

static void check_single_flight(void)
{
    struct zs_pool *pool = zs_create_pool(16 << 20, 8, 64);
    struct object o[64];
    for (int i = 0; i < 64; i++)
        store_one(pool, &o[i], (uint64_t)i, 1500);
    for (int i = 0; i < 64; i += 2)
        zs_free_many(pool, 1, &o[i].handle, NULL);
    EXPECT(zs_can_compact(pool) > 0, "sparse zspages to compact");
    pthread_mutex_lock(&pool->compact_lock); /* another compaction "running" */
    EXPECT(zs_compact(pool, 0) == 0, "a second compaction returns at once");
    pthread_mutex_unlock(&pool->compact_lock);
    EXPECT(zs_compact(pool, 0) > 0, "then it runs");
    for (int i = 1; i < 64; i += 2)
        load_check(pool, &o[i]);
    check_clean(pool);
    zs_destroy_pool(pool);
}

static void check_corruption_is_refused(void)
{
    struct zs_pool *pool = zs_create_pool(16 << 20, 8, 64);
    struct object o[3];
    for (int i = 0; i < 3; i++)
        store_one(pool, &o[i], (uint64_t)i + 100, 100);
    uint32_t zid;
    uint64_t off;
    struct zs_fault f;
    EXPECT(zs_locate(pool, o[1].handle, &zid, &off, &f) == 0);
    uint64_t *hdr = header_word(pool, off);
    uint64_t good = *hdr;
    *hdr ^= 2; /* the header now names another handle */
    unsigned char buf[ZS_MAX_ALLOC_SIZE];
    EXPECT(zs_load(pool, o[1].handle, buf, &f) == -EIO && f.kind == ZS_FAULT_BAD_HEADER
               && f.offset == off && f.header == (good ^ 2),
           "a corrupt header is refused");
    uint64_t batch[2] = {o[0].handle, o[1].handle};
    EXPECT(zs_free_many(pool, 2, batch, &f) == -EIO && f.index == 1, "stops at the corrupt one");
    EXPECT(live_objects(pool) == 2, "the one before it was freed, the corrupt one kept");
    char msg[256];
    EXPECT(zs_check(pool, msg, sizeof(msg)) == -EIO && strstr(msg, "header"), "%s", msg);
    *hdr = good;
    load_check(pool, &o[1]);
    check_clean(pool);
    pool->zspages[zid].inuse++; /* a count that disagrees with the handles */
    EXPECT(zs_check(pool, msg, sizeof(msg)) == -EIO && strstr(msg, "inuse"), "%s", msg);
    pool->zspages[zid].inuse--;
    check_clean(pool);
    zs_destroy_pool(pool);
}

static void check_bad_calls_leave_nothing(void)
{
    struct zs_pool *pool = zs_create_pool(4 * ZS_PAGE_SIZE, 8, 64);
    struct zs_fault f;
    struct object o[4];
    for (int i = 0; i < 4; i++)
        store_one(pool, &o[i], (uint64_t)i, ZS_MAX_ALLOC_SIZE);
    unsigned char buf[ZS_MAX_ALLOC_SIZE] = {0};
    const unsigned char *src[3] = {buf, buf, buf};
    uint32_t sizes[3] = {100, 0, 100};
    uint64_t handles[3];
    EXPECT(zs_store_many(pool, 3, src, sizes, handles, &f) == -ENOSPC
               && f.kind == ZS_FAULT_ARENA_FULL && f.index == 0 && f.frames_needed == 7
               && f.frames_left == 0 && f.frames_max == 5,
           "a 112-byte class zspage needs 7 frames");
    zs_free_many(pool, 1, &o[3].handle, NULL);
    sizes[0] = sizes[2] = ZS_MAX_ALLOC_SIZE; /* the first one fits in the freed frame */
    sizes[1] = ZS_MAX_ALLOC_SIZE + 1;
    EXPECT(zs_store_many(pool, 3, src, sizes, handles, &f) == -EINVAL
               && f.kind == ZS_FAULT_BAD_SIZE && f.index == 1 && f.size == ZS_MAX_ALLOC_SIZE + 1,
           "a bad size mid-batch");
    EXPECT(live_objects(pool) == 3 && zs_get_total_pages(pool) == 3, "nothing stays stored");
    EXPECT(zs_free_many(pool, 1, &o[3].handle, &f) == -EINVAL
               && f.kind == ZS_FAULT_NOT_ALLOCATED,
           "a double free");
    uint64_t bogus = 5;
    EXPECT(zs_free_many(pool, 1, &bogus, &f) == -EINVAL && f.kind == ZS_FAULT_NOT_A_HANDLE);
    /* slot 2**56 - 1 of the 4096-byte class (index 254): far past its handle table */
    EXPECT(zs_load(pool, UINT64_MAX - 1, buf, &f) == -EINVAL && f.kind == ZS_FAULT_NOT_ALLOCATED);
    check_clean(pool);
    zs_destroy_pool(pool);
    pool = zs_create_pool(1 << 20, 8, 64);
    uint64_t h;
    EXPECT(zs_malloc(pool, 3000, &h, &f) == 0);
    EXPECT(zs_write(pool, h, buf, 3001, &f) == -E2BIG && f.kind == ZS_FAULT_TOO_LONG
               && f.obj_size == 3000,
           "writing past the object");
    check_clean(pool);
    zs_destroy_pool(pool);
    errno = 0;
    EXPECT(!zs_create_pool(0, 8, 64) && errno == EINVAL);
    EXPECT(!zs_create_pool(1 << 20, 3, 64) && errno == EINVAL);
    EXPECT(!zs_create_pool((uint64_t)ZS_MAX_FRAMES * ZS_PAGE_SIZE, 8, 64) && errno == EINVAL);
}

static int resident(struct zs_pool *pool, uint32_t frame, unsigned count)
{
    unsigned char vec[128];
    EXPECT(count <= sizeof(vec));
    if (mincore(pool->arena + frame_offset(frame), (size_t)count << PAGE_SHIFT, vec) != 0)
        FAIL("mincore: %s", strerror(errno));
    int n = 0;
    for (unsigned i = 0; i < count; i++)
        n += vec[i] & 1;
    return n;
}

static void check_release_batches(void)
{
    struct zs_pool *pool = zs_create_pool(64 << 20, 8, 16);
    struct object o[100];
    for (int i = 0; i < 100; i++)
        store_one(pool, &o[i], (uint64_t)i, ZS_MAX_ALLOC_SIZE);
    for (int i = 0; i < 100; i++) {
        zs_free_many(pool, 1, &o[i].handle, NULL);
        EXPECT(pool->nr_cached < 16, "at most a batch stays cached");
    }
    EXPECT(pool->releases == 100 / 16, "one madvise per batch of contiguous frames");
    EXPECT(resident(pool, 1, 96) == 0, "released frames left memory");
    zs_destroy_pool(pool);
}

static void check_mlocked_frames_are_released(void)
{
    struct zs_pool *pool = zs_create_pool(16 << 20, 8, 64);
    struct object o[8];
    for (int i = 0; i < 8; i++)
        store_one(pool, &o[i], (uint64_t)i, ZS_MAX_ALLOC_SIZE); /* frames 1..8 */
    if (mlock(pool->arena + frame_offset(1), 8 << PAGE_SHIFT) != 0) {
        printf("  mlock: %s (RLIMIT_MEMLOCK?): mlock'ed release not checked\n", strerror(errno));
        zs_destroy_pool(pool);
        return;
    }
    for (int i = 0; i < 8; i++)
        zs_free_many(pool, 1, &o[i].handle, NULL);
    EXPECT(resident(pool, 1, 8) == 8);
    zs_compact(pool, 0); /* releases the cache: MADV_DONTNEED fails on locked pages */
    EXPECT(pool->nr_cached == 0 && resident(pool, 1, 8) == 0, "unlocked and released");
    for (int i = 0; i < 8; i++) /* the frames are reusable */
        store_one(pool, &o[i], (uint64_t)i + 7, ZS_MAX_ALLOC_SIZE);
    for (int i = 0; i < 8; i++)
        load_check(pool, &o[i]);
    check_clean(pool);
    zs_destroy_pool(pool);
}

struct waiter {
    struct zs_pool *pool;
    int tid;
    int err;
    int done;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    unsigned char buf[ZS_MAX_ALLOC_SIZE] = {0};
    const unsigned char *src = buf;
    uint32_t size = ZS_MAX_ALLOC_SIZE;
    uint64_t handle;
    __atomic_store_n(&w->tid, gettid(), __ATOMIC_RELEASE);
    w->err = zs_store_many(w->pool, 1, &src, &size, &handle, NULL);
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Whether thread `tid` is asleep (in the kernel: here, waiting on the page lock's condvar);
 * false once it has exited. */
static int asleep(int tid)
{
    char path[64], stat[256] = "";
    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    if (!fgets(stat, sizeof(stat), f))
        stat[0] = 0;
    fclose(f);
    const char *state = strrchr(stat, ')');
    return state && state[2] == 'S';
}

/* An allocation that finds the arena empty while freed frames are on their way through
 * madvise waits for them instead of failing with ENOSPC. */
static void check_allocation_waits_for_released_frames(void)
{
    struct zs_pool *pool = zs_create_pool(8 * ZS_PAGE_SIZE, 8, 100);
    struct object o[8];
    for (int i = 0; i < 8; i++)
        store_one(pool, &o[i], (uint64_t)i, ZS_MAX_ALLOC_SIZE); /* the arena is full */
    zs_free_many(pool, 1, &o[0].handle, NULL);                /* one frame cached */
    /* release_frames' first half: the batch leaves the cache */
    pthread_mutex_lock(&pool->page_lock);
    uint32_t *batch = pool->cache;
    uint32_t n = pool->nr_cached;
    pool->cache = pool->spare;
    pool->spare = NULL;
    pool->nr_cached = 0;
    pool->releasing += n;
    pthread_mutex_unlock(&pool->page_lock);
    struct waiter w = {pool, 0, 1, 0};
    pthread_t thread;
    pthread_create(&thread, NULL, waiter_main, &w);
    while (!__atomic_load_n(&w.done, __ATOMIC_ACQUIRE)) { /* until it waits, or gave up */
        int tid = __atomic_load_n(&w.tid, __ATOMIC_ACQUIRE);
        if (tid && asleep(tid))
            break;
        sched_yield();
    }
    /* ... and its second half: the frame joins the free list */
    pthread_mutex_lock(&pool->page_lock);
    push_free_frames(pool, batch, n);
    pool->releasing -= n;
    pool->spare = batch;
    pthread_cond_broadcast(&pool->released);
    pthread_mutex_unlock(&pool->page_lock);
    pthread_join(thread, NULL);
    EXPECT(w.err == 0, "the store waited for the frame, got %d", w.err);
    check_clean(pool);
    zs_destroy_pool(pool);
}

/* Chains freed by several threads before the first of them releases the full cache: the
 * cache never overflows (the later frees release it themselves). */
static void check_cache_never_overflows(void)
{
    struct zs_pool *pool = zs_create_pool(1 << 20, 16, 4);
    uint32_t first[4];
    pthread_mutex_lock(&pool->page_lock);
    for (int i = 0; i < 4; i++)
        EXPECT(alloc_chain(pool, ZS_MAX_CHAIN_SIZE, &first[i], NULL) == 0);
    for (int i = 0; i < 4; i++) { /* as four threads would, none reaching release_frames */
        free_chain(pool, first[i]);
        EXPECT(pool->nr_cached <= pool->cache_size, "%u frames cached in room for %u",
               pool->nr_cached, pool->cache_size);
    }
    pthread_mutex_unlock(&pool->page_lock);
    release_frames(pool, pool->release_batch);
    EXPECT(pool->nr_cached == 0 && zs_get_total_pages(pool) == 0);
    check_clean(pool);
    zs_destroy_pool(pool);
}

/* -- the stress ------------------------------------------------------------------------------- */

struct shared_entry {
    pthread_mutex_t lock; /* the caller's lock (the device's slot lock), outside the pool's */
    struct object o;
};

static struct zs_pool *pool;
static struct shared_entry shared[NR_SHARED];
static long ops_per_worker;
static uint64_t base_seed;
static int stop;

struct worker {
    pthread_t thread;
    int id;
    struct object mine[MAX_PRIVATE];
    unsigned nr;
    uint64_t loads, stores, frees;
};

static void worker_store(struct worker *w, uint64_t *rng, uint64_t *serial)
{
    static __thread unsigned char data[MAX_BATCH][ZS_MAX_ALLOC_SIZE];
    const unsigned char *src[MAX_BATCH];
    uint32_t size[MAX_BATCH];
    uint64_t handles[MAX_BATCH];
    unsigned n = 1 + below(rng, MAX_BATCH);
    if (n > MAX_PRIVATE - w->nr)
        n = MAX_PRIVATE - w->nr;
    if (!n)
        return;
    uint64_t first = *serial;
    for (unsigned i = 0; i < n; i++) {
        size[i] = random_size(rng);
        fill(data[i], size[i], first + i);
        src[i] = data[i];
    }
    struct zs_fault f;
    int err = zs_store_many(pool, n, src, size, handles, &f);
    if (err)
        FAIL("worker %d: store_many of %u: %d (fault %d)", w->id, n, err, f.kind);
    for (unsigned i = 0; i < n; i++)
        w->mine[w->nr++] = (struct object){handles[i], first + i, size[i]};
    *serial += n;
    w->stores += n;
}

static void worker_load(struct worker *w, uint64_t *rng)
{
    static __thread unsigned char data[MAX_BATCH][ZS_MAX_ALLOC_SIZE];
    unsigned char *dst[MAX_BATCH];
    uint32_t size[MAX_BATCH];
    uint64_t handles[MAX_BATCH];
    unsigned pick[MAX_BATCH], n = 1 + below(rng, MAX_BATCH);
    for (unsigned i = 0; i < n; i++) {
        pick[i] = below(rng, w->nr);
        handles[i] = w->mine[pick[i]].handle;
        dst[i] = data[i];
    }
    struct zs_fault f;
    int err = zs_load_many(pool, n, handles, dst, size, &f);
    if (err)
        FAIL("worker %d: load_many: %d (fault %d at %zu)", w->id, err, f.kind, f.index);
    for (unsigned i = 0; i < n; i++) {
        const struct object *o = &w->mine[pick[i]];
        verify(data[i], size[i], o->size, o->seed, o->handle);
    }
    w->loads += n;
}

static void worker_free(struct worker *w, uint64_t *rng)
{
    uint64_t handles[MAX_BATCH];
    unsigned n = 1 + below(rng, MAX_BATCH);
    if (n > w->nr)
        n = w->nr;
    for (unsigned i = 0; i < n; i++) { /* distinct: swap each victim to the end */
        unsigned k = below(rng, w->nr - i);
        struct object t = w->mine[k];
        w->mine[k] = w->mine[w->nr - 1 - i];
        w->mine[w->nr - 1 - i] = t;
        handles[i] = t.handle;
    }
    struct zs_fault f;
    int err = zs_free_many(pool, n, handles, &f);
    if (err)
        FAIL("worker %d: free_many: %d (fault %d at %zu)", w->id, err, f.kind, f.index);
    w->nr -= n;
    w->frees += n;
}

static void worker_shared(struct worker *w, uint64_t *rng, uint64_t *serial)
{
    struct shared_entry *e = &shared[below(rng, NR_SHARED)];
    pthread_mutex_lock(&e->lock);
    load_check(pool, &e->o);
    if (below(rng, 2)) { /* replace it */
        struct zs_fault f;
        if (zs_free_many(pool, 1, &e->o.handle, &f) != 0)
            FAIL("worker %d: free of a shared object: fault %d", w->id, f.kind);
        store_one(pool, &e->o, (*serial)++, random_size(rng));
    }
    pthread_mutex_unlock(&e->lock);
    w->loads++;
}

static void worker_rewrite(struct worker *w, uint64_t *rng, uint64_t *serial)
{
    if (w->nr == MAX_PRIVATE)
        return;
    unsigned char buf[ZS_MAX_ALLOC_SIZE];
    struct object *o = &w->mine[w->nr];
    struct zs_fault f;
    o->size = random_size(rng);
    o->seed = (*serial)++;
    if (zs_malloc(pool, o->size, &o->handle, &f) != 0)
        FAIL("worker %d: malloc: fault %d", w->id, f.kind);
    fill(buf, o->size, o->seed);
    if (zs_write(pool, o->handle, buf, o->size, &f) != 0)
        FAIL("worker %d: write: fault %d", w->id, f.kind);
    w->nr++;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint64_t rng = base_seed + (uint64_t)w->id * 7919 + 1;
    uint64_t serial = ((uint64_t)w->id + 1) << 40;
    for (long op = 0; op < ops_per_worker; op++) {
        unsigned r = below(&rng, 100);
        if (r < 30 || w->nr < MAX_BATCH)
            worker_store(w, &rng, &serial);
        else if (r < 55)
            worker_load(w, &rng);
        else if (r < 85)
            worker_free(w, &rng);
        else if (r < 97)
            worker_shared(w, &rng, &serial);
        else
            worker_rewrite(w, &rng, &serial);
    }
    return NULL;
}

struct compactor {
    uint64_t runs, freed;
};

static void *compactor_main(void *arg)
{
    struct compactor *c = arg;
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
        c->freed += zs_compact(pool, (int)(c->runs & 1));
        c->runs++;
    }
    return NULL;
}

static void *reader_main(void *arg)
{
    struct zs_class_stats *rows = calloc(ZS_MAX_CLASSES, sizeof(*rows));
    uint64_t *reads = arg;
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
        struct zs_pool_stats ps;
        zs_pool_stats(pool, &ps, rows);
        for (unsigned i = 0; i < ps.nr_classes; i++)
            if (rows[i].obj_used > rows[i].obj_allocated)
                FAIL("class %u: %" PRIu64 " used of %" PRIu64, rows[i].spec.size,
                     rows[i].obj_used, rows[i].obj_allocated);
        (void)zs_can_compact(pool);
        (void)zs_get_total_pages(pool);
        (*reads)++;
    }
    free(rows);
    return NULL;
}

static void stress(void)
{
    static struct worker workers[NR_WORKERS];
    struct compactor comp = {0, 0};
    uint64_t reads = 0, serial = 1;
    pthread_t comp_thread, reader_thread;
    pool = zs_create_pool(1ull << 30, 8, 64);
    if (!pool)
        FAIL("zs_create_pool: %s", strerror(errno));
    for (int i = 0; i < NR_SHARED; i++) {
        pthread_mutex_init(&shared[i].lock, NULL);
        store_one(pool, &shared[i].o, serial++, 40 + (uint32_t)i * 13);
    }
    uint64_t t0 = now_ns();
    pthread_create(&comp_thread, NULL, compactor_main, &comp);
    pthread_create(&reader_thread, NULL, reader_main, &reads);
    for (int i = 0; i < NR_WORKERS; i++) {
        workers[i].id = i;
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    }
    for (int i = 0; i < NR_WORKERS; i++)
        pthread_join(workers[i].thread, NULL);
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(comp_thread, NULL);
    pthread_join(reader_thread, NULL);
    double secs = (double)(now_ns() - t0) / 1e9;

    uint64_t live = NR_SHARED, loads = 0, stores = 0, frees = 0;
    for (int i = 0; i < NR_SHARED; i++)
        load_check(pool, &shared[i].o);
    for (int i = 0; i < NR_WORKERS; i++) {
        for (unsigned k = 0; k < workers[i].nr; k++)
            load_check(pool, &workers[i].mine[k]);
        live += workers[i].nr;
        loads += workers[i].loads;
        stores += workers[i].stores;
        frees += workers[i].frees;
    }
    check_clean(pool);
    struct zs_pool_stats ps;
    zs_pool_stats(pool, &ps, NULL);
    EXPECT(ps.objects == live, "%" PRIu64 " objects, %" PRIu64 " live", ps.objects, live);
    EXPECT(comp.freed > 0 && ps.pages_compacted == comp.freed, "compaction ran alongside");
    printf("  %d workers x %ld ops in %.2f s: %" PRIu64 " stores, %" PRIu64 " loads, %" PRIu64
           " frees; %" PRIu64 " compactions freed %" PRIu64 " frames (longest gentle slice %"
           PRIu64 " ns); %" PRIu64 " stats reads; %" PRIu64 " live objects in %" PRIu64
           " frames\n",
           NR_WORKERS, ops_per_worker, secs, stores, loads, frees, comp.runs, comp.freed,
           ps.max_slice_ns, reads, live, ps.total_pages);

    for (int i = 0; i < NR_SHARED; i++)
        zs_free_many(pool, 1, &shared[i].o.handle, NULL);
    for (int i = 0; i < NR_WORKERS; i++)
        for (unsigned k = 0; k < workers[i].nr; k++)
            if (zs_free_many(pool, 1, &workers[i].mine[k].handle, NULL) != 0)
                FAIL("final free of worker %d's object %u", i, k);
    zs_compact(pool, 0);
    zs_pool_stats(pool, &ps, NULL);
    EXPECT(ps.total_pages == 0 && ps.objects == 0 && ps.frames_cached == 0,
           "%" PRIu64 " frames held after everything was freed", ps.total_pages);
    check_clean(pool);
    zs_destroy_pool(pool);
}

int main(int argc, char **argv)
{
    ops_per_worker = 100000;
    base_seed = 1;
    for (int i = 1; i < argc; i++) { /* the options of every tests/c harness (scripts/c-stress) */
        if (!strcmp(argv[i], "-n") && i + 1 < argc)
            ops_per_worker = atol(argv[++i]) * 50; /* -n counts rounds of 50 operations */
        else if (!strcmp(argv[i], "-s") && i + 1 < argc)
            base_seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc)
            ++i; /* the worker count is fixed: NR_WORKERS */
        else {
            fprintf(stderr, "usage: %s [-t THREADS] [-n ROUNDS] [-s SEED]\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    check_single_flight();
    check_corruption_is_refused();
    check_bad_calls_leave_nothing();
    check_release_batches();
    check_mlocked_frames_are_released();
    check_allocation_waits_for_released_frames();
    check_cache_never_overflows();
    printf("  single-thread checks: ok\n");
    stress();
    printf("stress_pool: ok\n");
    return 0;
}

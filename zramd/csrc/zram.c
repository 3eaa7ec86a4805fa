/* zram.c - the device's per-request work in C, with no GIL (see zram.h for the contract).
 *
 * A write of one request:
 *
 *   1. whole pages are encoded before any slot lock is taken, as the kernel allocates before
 *      it locks the slot: the same-fill test, compression, and a pool object (compressed, or
 *      the raw page when the result is at least huge_class_size); mem_limit is checked after
 *      every allocation, with one direct compaction before a write is refused;
 *   2. every stripe lock the request touches is taken, in ascending order;
 *   3. partial pages at the edges are read, patched and encoded under those locks;
 *   4. the slots are switched over and the per-stripe counters updated; old objects are freed
 *      once the locks are dropped. A failure in 1 or 3 frees what was allocated: no slot
 *      changes (all or nothing).
 *
 * A read copies each stripe's objects out under its lock (one class lock per object, taken
 * inside zs_load) and decompresses them into the request buffer after dropping it.
 *
 * Written-back pages live on a store only Python can reach. A read lists them and returns
 * ZRAM_NEED_BACKING; a write that must patch one returns it before changing anything. The
 * first written-back slot a call meets pins the current generation (`wb_readers[wb_gen & 1]`),
 * under that slot's stripe lock, so any block freed after the scan is still queued when the
 * caller reads the store with no lock held. Freed blocks wait out a grace period, as SRCU's:
 * zram_reclaim_blocks retires the blocks freed so far and starts a new generation, and hands
 * the retired ones out once the readers of the old generation are gone. Readers that start
 * later pin the new generation, so a steady stream of them holds no block for long.
 */
#define _GNU_SOURCE
#include "zram.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "zcomp.h"
#include "zsmalloc.h"

#define PAGE ZRAM_PAGE_SIZE
#define PAGE_MASK (PAGE - 1)
#define STRIPE_PAGES (1u << STRIPE_SHIFT)
#define STORED_MASK (ZRAM_SIZE_MASK | ZRAM_SAME | ZRAM_WB) /* a slot holds something */
#define ACCESSED (ZRAM_IDLE | ZRAM_PP_SLOT)                /* what any access clears */
#define HUGE_FLAGS (ZRAM_HUGE | PAGE)
#define PP_BUCKET_SHIFT 6

struct zram_core {
    uint64_t pages;
    uint64_t *handle; /* pool handle, fill word, or backing block */
    uint32_t *flags;  /* size (low 13 bits) | ZRAM_* */
    uint32_t *actime;
    size_t map_bytes;

    struct zs_pool *pool;
    struct zcomp *comps[ZRAM_MAX_COMPS];
    unsigned huge_class_size;

    pthread_mutex_t stripe[NR_STRIPES];
    struct zram_stripe_stat stat[NR_STRIPES];

    _Atomic uint64_t limit_pages;
    _Atomic uint64_t max_pages;
    _Atomic uint64_t failed_reads, failed_writes;
    _Atomic uint64_t direct_runs, direct_freed;

    _Atomic unsigned prepared; /* threads zram_prepare_thread readied: streams kept for each */

    /* gate: requests in flight; close() sets closing and waits for the count to drain */
    _Atomic long active;
    _Atomic int closing;
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_cond;

    /* written-back blocks freed by overwrite or discard, reclaimed by Python's bitmap: those
     * freed since the last retirement, and those retired under generation retired_gen, which
     * wait until wb_readers[retired_gen & 1] drains (see the note at the top) */
    _Atomic uint64_t wb_gen;
    _Atomic long wb_readers[2];
    pthread_mutex_t freed_lock;
    uint64_t *freed, *retired;
    size_t nfreed, freed_cap, nretired, retired_cap;
    uint64_t retired_gen;
};

/* -- per-thread scratch ---------------------------------------------------------------------
 * Buffers a request needs, kept per thread (nbdkit runs one or a few threads per connection)
 * and grown to the largest write seen (zram_prepare_thread grows it up front), so the request
 * path does not allocate. Discard and write-zeroes need no per-page arrays. */

/* Old objects a write replaces are freed once its stripe locks are dropped, in one batch; a
 * request replacing more frees each full batch under the locks (stripe -> pool is the lock
 * order), so the list never grows. */
#define STALE_MAX 256

struct scratch {
    unsigned char objs[STRIPE_PAGES][PAGE]; /* one stripe's objects, copied out */
    uint32_t objsize[STRIPE_PAGES];
    unsigned char page[PAGE]; /* an edge page being patched */
    uint64_t *values;         /* per page of a write: new handle or fill word */
    uint32_t *vflags;         /* ... and its flags (0: empty the slot) */
    size_t cap, nstale;
    uint64_t stale[STALE_MAX]; /* handles to free once the locks are dropped */
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p)
{
    struct scratch *s = p;
    if (!s)
        return;
    free(s->values);
    free(s->vflags);
    free(s);
}

static void scratch_key_init(void) { pthread_key_create(&scratch_key, scratch_free); }

static struct scratch *scratch_get(size_t pages)
{
    pthread_once(&scratch_once, scratch_key_init);
    struct scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s)) {
            free(s);
            return NULL;
        }
    }
    if (pages > s->cap) {
        size_t cap = pages < 64 ? 64 : pages;
        uint64_t *v = realloc(s->values, cap * sizeof *v);
        if (!v)
            return NULL;
        s->values = v;
        uint32_t *f = realloc(s->vflags, cap * sizeof *f);
        if (!f)
            return NULL;
        s->vflags = f;
        s->cap = cap;
    }
    s->nstale = 0;
    return s;
}

static void stale_push(struct zram_core *z, struct scratch *s, uint64_t handle)
{
    if (s->nstale == STALE_MAX) {
        zs_free_many(z->pool, s->nstale, s->stale, NULL);
        s->nstale = 0;
    }
    s->stale[s->nstale++] = handle;
}

/* -- lifecycle ------------------------------------------------------------------------------ */

struct zram_core *zram_create(uint64_t pages, struct zs_pool *pool, struct zcomp *const *comps)
{
    if (!pool || !comps[0]) {
        errno = EINVAL;
        return NULL;
    }
    struct zram_core *z = calloc(1, sizeof *z);
    if (!z)
        return NULL;
    z->pages = pages;
    /* three lazily committed columns: memory only for the parts written */
    z->map_bytes = pages * (sizeof(uint64_t) + 2 * sizeof(uint32_t));
    if (z->map_bytes) {
        void *m = mmap(NULL, z->map_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            free(z);
            return NULL;
        }
        z->handle = m;
        z->flags = (uint32_t *)(z->handle + pages);
        z->actime = z->flags + pages;
    }
    z->pool = pool;
    for (int p = 0; p < ZRAM_MAX_COMPS; p++)
        z->comps[p] = comps[p];
    z->huge_class_size = zs_huge_class_size(pool);
    for (int i = 0; i < NR_STRIPES; i++)
        pthread_mutex_init(&z->stripe[i], NULL);
    pthread_mutex_init(&z->gate_lock, NULL);
    pthread_cond_init(&z->gate_cond, NULL);
    pthread_mutex_init(&z->freed_lock, NULL);
    return z;
}

static int gate_enter(struct zram_core *z)
{
    atomic_fetch_add(&z->active, 1);
    if (atomic_load(&z->closing)) {
        if (atomic_fetch_sub(&z->active, 1) == 1) {
            pthread_mutex_lock(&z->gate_lock);
            pthread_cond_broadcast(&z->gate_cond);
            pthread_mutex_unlock(&z->gate_lock);
        }
        return -ESHUTDOWN;
    }
    return 0;
}

static void gate_leave(struct zram_core *z)
{
    if (atomic_fetch_sub(&z->active, 1) == 1 && atomic_load(&z->closing)) {
        pthread_mutex_lock(&z->gate_lock);
        pthread_cond_broadcast(&z->gate_cond);
        pthread_mutex_unlock(&z->gate_lock);
    }
}

void zram_close(struct zram_core *z)
{
    pthread_mutex_lock(&z->gate_lock);
    atomic_store(&z->closing, 1);
    while (atomic_load(&z->active))
        pthread_cond_wait(&z->gate_cond, &z->gate_lock);
    pthread_mutex_unlock(&z->gate_lock);
    if (z->map_bytes) {
        munmap(z->handle, z->map_bytes);
        z->handle = NULL;
        z->flags = z->actime = NULL;
        z->map_bytes = 0;
    }
}

void zram_destroy(struct zram_core *z)
{
    if (!z)
        return;
    zram_close(z);
    for (int i = 0; i < NR_STRIPES; i++)
        pthread_mutex_destroy(&z->stripe[i]);
    pthread_mutex_destroy(&z->gate_lock);
    pthread_cond_destroy(&z->gate_cond);
    pthread_mutex_destroy(&z->freed_lock);
    free(z->freed);
    free(z->retired);
    free(z);
}

uint64_t zram_pages(const struct zram_core *z) { return z->pages; }

int zram_lock_table(struct zram_core *z)
{
    /* mlock faults every page in (a write fault: private pages of our own), then keeps them */
    if (mlock(z, sizeof *z) != 0)
        return -errno;
    if (z->map_bytes && mlock(z->handle, z->map_bytes) != 0) {
        int err = errno;
        munlock(z, sizeof *z);
        return -err;
    }
    return 0;
}

/* Stack a serving thread may use below its prepare call (a request's C and Python frames):
 * touched up front, so that under mlockall those pages are resident and locked already. */
#define PREPARE_STACK (128 << 10)

static void __attribute__((noinline)) touch_stack(void)
{
    unsigned char room[PREPARE_STACK];
    memset(room, 0, sizeof room);
    __asm__ volatile("" : : "r"(room) : "memory"); /* the stores are not optimised away */
}

int zram_prepare_thread(struct zram_core *z, size_t max_len)
{
    int rc = gate_enter(z);
    if (rc)
        return rc;
    /* a write of max_len bytes at any offset covers at most this many whole pages */
    struct scratch *s = scratch_get(max_len / PAGE + 1);
    if (!s) {
        gate_leave(z);
        return -ENOMEM;
    }
    /* calloc and realloc may hand out pages never touched: touch them all now */
    memset(s->objs, 0, sizeof s->objs);
    memset(s->page, 0, sizeof s->page);
    memset(s->stale, 0, sizeof s->stale);
    memset(s->values, 0, s->cap * sizeof *s->values);
    memset(s->vflags, 0, s->cap * sizeof *s->vflags);
    touch_stack();
    unsigned threads = atomic_fetch_add(&z->prepared, 1) + 1;
    for (int p = 0; p < ZRAM_MAX_COMPS && !rc; p++)
        if (z->comps[p])
            rc = zcomp_reserve_streams(z->comps[p], threads);
    gate_leave(z);
    return rc;
}

static inline pthread_mutex_t *stripe_lock(struct zram_core *z, uint64_t index)
{
    return &z->stripe[(index >> STRIPE_SHIFT) & STRIPE_MASK];
}

static inline struct zram_stripe_stat *stripe_stat(struct zram_core *z, uint64_t index)
{
    return &z->stat[(index >> STRIPE_SHIFT) & STRIPE_MASK];
}

/* Take the stripe locks of pages first..last in ascending lock order (the only place that
 * holds more than one; the order makes it deadlock-free). Returns the range taken as
 * [*lo1, *hi1] and [*lo2, *hi2] (the second may be empty: lo2 > hi2). */
struct held {
    int lo1, hi1, lo2, hi2;
};

static struct held lock_stripes(struct zram_core *z, uint64_t first, uint64_t last)
{
    uint64_t c0 = first >> STRIPE_SHIFT, c1 = last >> STRIPE_SHIFT;
    struct held h = {0, -1, 0, -1};
    if (c1 - c0 >= NR_STRIPES - 1) {
        h.lo1 = 0;
        h.hi1 = NR_STRIPES - 1;
    } else {
        int lo = (int)(c0 & STRIPE_MASK), hi = (int)(c1 & STRIPE_MASK);
        if (lo <= hi) {
            h.lo1 = lo;
            h.hi1 = hi;
        } else { /* wraps: 0..hi first, then lo..end */
            h.lo1 = 0;
            h.hi1 = hi;
            h.lo2 = lo;
            h.hi2 = NR_STRIPES - 1;
        }
    }
    for (int i = h.lo1; i <= h.hi1; i++)
        pthread_mutex_lock(&z->stripe[i]);
    for (int i = h.lo2; i <= h.hi2; i++)
        pthread_mutex_lock(&z->stripe[i]);
    return h;
}

static void unlock_stripes(struct zram_core *z, struct held h)
{
    for (int i = h.hi2; i >= h.lo2; i--)
        pthread_mutex_unlock(&z->stripe[i]);
    for (int i = h.hi1; i >= h.lo1; i--)
        pthread_mutex_unlock(&z->stripe[i]);
}

/* -- statistics ----------------------------------------------------------------------------- */

void zram_set_limit(struct zram_core *z, uint64_t pages) { atomic_store(&z->limit_pages, pages); }

void zram_note_peak(struct zram_core *z, uint64_t pages)
{
    uint64_t cur = atomic_load(&z->max_pages);
    while (pages > cur && !atomic_compare_exchange_weak(&z->max_pages, &cur, pages))
        ;
}

void zram_reset_max(struct zram_core *z)
{
    if (gate_enter(z))
        return;
    atomic_store(&z->max_pages, zs_get_total_pages(z->pool));
    gate_leave(z);
}

void zram_get_stats(struct zram_core *z, struct zram_stats *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < NR_STRIPES; i++) {
        struct zram_stripe_stat *s = &z->stat[i];
        pthread_mutex_lock(&z->stripe[i]);
        out->stored += s->stored;
        out->compr += s->compr;
        out->same += s->same;
        out->huge += s->huge;
        out->huge_since += s->huge_since;
        out->notify_free += s->notify_free;
        pthread_mutex_unlock(&z->stripe[i]);
    }
    out->failed_reads = atomic_load(&z->failed_reads);
    out->failed_writes = atomic_load(&z->failed_writes);
    out->direct_runs = atomic_load(&z->direct_runs);
    out->direct_freed = atomic_load(&z->direct_freed);
    out->max_pages = atomic_load(&z->max_pages);
    out->limit_pages = atomic_load(&z->limit_pages);
    pthread_mutex_lock(&z->freed_lock);
    out->wb_pending = z->nfreed + z->nretired;
    pthread_mutex_unlock(&z->freed_lock);
}

/* -- pages ---------------------------------------------------------------------------------- */

/* page_same_filled: the repeated 64-bit word, if the page is one. */
static int same_filled(const unsigned char *page, uint64_t *word)
{
    uint64_t first, last, w;
    memcpy(&first, page, 8);
    memcpy(&last, page + PAGE - 8, 8);
    if (first != last)
        return 0;
    for (size_t pos = 8; pos < PAGE - 8; pos += 8) {
        memcpy(&w, page + pos, 8);
        if (w != first)
            return 0;
    }
    *word = first;
    return 1;
}

static void fill_page(unsigned char *dst, uint64_t word, size_t lo, size_t hi)
{
    if (!word) {
        memset(dst, 0, hi - lo);
        return;
    }
    /* byte k of the page is byte k % 8 of the word */
    for (size_t k = lo; k < hi; k++)
        dst[k - lo] = (unsigned char)(word >> (8 * (k & 7)));
}

/* Streams held by one request, one per priority, taken on first use. */
struct streams {
    struct zcomp_strm *s[ZRAM_MAX_COMPS];
};

static struct zcomp_strm *stream(struct zram_core *z, struct streams *st, int prio)
{
    if (!st->s[prio])
        st->s[prio] = zcomp_stream_get(z->comps[prio]);
    return st->s[prio];
}

static void streams_put(struct zram_core *z, struct streams *st)
{
    for (int p = 0; p < ZRAM_MAX_COMPS; p++)
        if (st->s[p])
            zcomp_stream_put(z->comps[p], st->s[p]);
}

/* Decompress an object of slot flags `f` (size bytes at src) into a whole page. */
static int decode_object(struct zram_core *z, struct streams *st, uint32_t f,
                         const unsigned char *src, uint32_t size, unsigned char *dst)
{
    if (size == PAGE) {
        memcpy(dst, src, PAGE);
        return 0;
    }
    int prio = (int)((f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT);
    if (!z->comps[prio])
        return -EIO;
    struct zcomp_strm *s = stream(z, st, prio);
    if (!s)
        return -ENOMEM;
    return zcomp_decompress(z->comps[prio], s, src, size, dst) ? -EBADMSG : 0;
}

/* zs_load for a slot's handle: an unknown handle is reported apart from a bad header. */
static int load_object(struct zram_core *z, uint64_t handle, unsigned char *dst)
{
    int n = zs_load(z->pool, handle, dst, NULL);
    return n == -EINVAL ? -ENOENT : n;
}

static void direct_compact(struct zram_core *z)
{
    uint64_t freed = zs_compact(z->pool, 0);
    atomic_fetch_add(&z->direct_runs, 1);
    atomic_fetch_add(&z->direct_freed, freed);
}

/* Store one object, enforcing mem_limit: the limit is checked after the allocation, as the
 * kernel does; over it, the object is freed, the pool compacted once, and the store retried. */
static int store_object(struct zram_core *z, const unsigned char *obj, uint32_t size,
                        uint64_t *handle)
{
    int rc = zs_store_many(z->pool, 1, &obj, &size, handle, NULL);
    if (rc == -ENOSPC) { /* the arena is full: compact, then try once more */
        direct_compact(z);
        rc = zs_store_many(z->pool, 1, &obj, &size, handle, NULL);
        if (rc == -ENOSPC)
            return -ENOMEM;
    }
    if (rc)
        return rc;
    uint64_t limit = atomic_load(&z->limit_pages);
    uint64_t total = zs_get_total_pages(z->pool);
    if (limit && total > limit) {
        zs_free_many(z->pool, 1, handle, NULL);
        direct_compact(z);
        rc = zs_store_many(z->pool, 1, &obj, &size, handle, NULL);
        if (rc)
            return rc == -ENOSPC ? -ENOMEM : rc;
        total = zs_get_total_pages(z->pool);
        if (total > limit) {
            zs_free_many(z->pool, 1, handle, NULL);
            return -ENOSPC;
        }
    }
    zram_note_peak(z, total);
    return 0;
}

/* Encode one whole page: a fill word (SAME), or a new pool object. */
static int encode_page(struct zram_core *z, struct streams *st, const unsigned char *page,
                       uint64_t *value, uint32_t *flags)
{
    uint64_t word;
    if (same_filled(page, &word)) {
        *value = word;
        *flags = ZRAM_SAME;
        return 0;
    }
    struct zcomp_strm *s = stream(z, st, 0);
    if (!s)
        return -ENOMEM;
    unsigned int clen;
    if (zcomp_compress(z->comps[0], s, page, &clen))
        return -EIO;
    int rc;
    if (clen >= z->huge_class_size) {
        rc = store_object(z, page, PAGE, value);
        *flags = HUGE_FLAGS;
    } else {
        rc = store_object(z, s->buffer, clen, value);
        *flags = clen;
    }
    return rc;
}

/* Free the objects of encoded pages that were never installed. */
static void free_encoded(struct zram_core *z, const uint64_t *values, const uint32_t *flags,
                         size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (flags[k] & ZRAM_SIZE_MASK)
            zs_free_many(z->pool, 1, &values[k], NULL);
}

/* zram_free_page for slot i (stripe lock held): counters, and what the old contents held:
 * its pool object goes on the scratch's stale list, its backing block on the freed queue. */
static void free_slot(struct zram_core *z, struct scratch *s, uint64_t i)
{
    uint32_t old = z->flags[i];
    if (!(old & STORED_MASK))
        return;
    struct zram_stripe_stat *ss = stripe_stat(z, i);
    if (old & ZRAM_SAME) {
        ss->same--;
    } else if (old & ZRAM_WB) {
        pthread_mutex_lock(&z->freed_lock);
        if (z->nfreed == z->freed_cap) {
            size_t cap = z->freed_cap ? 2 * z->freed_cap : 256;
            uint64_t *p = realloc(z->freed, cap * sizeof *p);
            if (p) {
                z->freed = p;
                z->freed_cap = cap;
            }
        }
        if (z->nfreed < z->freed_cap)
            z->freed[z->nfreed++] = z->handle[i];
        /* else: the block stays marked in use on the store (leaked, never corrupted) */
        pthread_mutex_unlock(&z->freed_lock);
    } else {
        stale_push(z, s, z->handle[i]);
        ss->compr -= old & ZRAM_SIZE_MASK;
        if (old & ZRAM_HUGE)
            ss->huge--;
    }
    ss->stored--;
    z->handle[i] = 0;
    z->flags[i] = 0;
    z->actime[i] = 0;
}

/* Switch slot i to (value, flags); flags 0 empties it. Stripe lock held; cannot fail. */
static void install_slot(struct zram_core *z, struct scratch *s, uint64_t i, uint64_t value,
                         uint32_t f, uint32_t now)
{
    free_slot(z, s, i);
    if (!f)
        return;
    struct zram_stripe_stat *ss = stripe_stat(z, i);
    z->handle[i] = value;
    z->flags[i] = f;
    z->actime[i] = now;
    ss->stored++;
    if (f & ZRAM_SAME) {
        ss->same++;
    } else {
        ss->compr += f & ZRAM_SIZE_MASK;
        if (f & ZRAM_HUGE) {
            ss->huge++;
            ss->huge_since++;
        }
    }
}

/* Pin the current generation of freed blocks; returns its parity + 1 (need->pinned). A
 * retirement between reading the generation and counting ourselves in it would leave us
 * counted in one it no longer waits for: check, and count again in the new one. */
static int wb_pin(struct zram_core *z)
{
    for (;;) {
        uint64_t gen = atomic_load(&z->wb_gen);
        atomic_fetch_add(&z->wb_readers[gen & 1], 1);
        if (atomic_load(&z->wb_gen) == gen)
            return (int)(gen & 1) + 1;
        atomic_fetch_sub(&z->wb_readers[gen & 1], 1);
    }
}

static void wb_unpin(struct zram_core *z, int pin)
{
    atomic_fetch_sub(&z->wb_readers[pin - 1], 1);
}

/* List a written-back slot (its stripe lock held); the first one pins the blocks. */
static int need_push(struct zram_core *z, struct zram_wb_need *need, uint64_t index,
                     uint64_t block)
{
    if (!need->pinned)
        need->pinned = wb_pin(z);
    if (need->n == need->cap) {
        size_t cap = need->cap ? 2 * need->cap : 16;
        struct zram_wb_page *p = realloc(need->pages, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        need->pages = p;
        need->cap = cap;
    }
    need->pages[need->n].index = index;
    need->pages[need->n].block = block;
    need->n++;
    return 0;
}

/* Contents a caller fetched for a written-back page (or NULL if it did not fetch this one). */
static const unsigned char *have_data(const struct zram_wb_have *have, uint64_t index,
                                      uint64_t block)
{
    if (!have)
        return NULL;
    for (size_t k = 0; k < have->n; k++)
        if (have->pages[k].index == index && have->pages[k].block == block)
            return have->data + k * PAGE;
    return NULL;
}

/* The current contents of slot i as a whole page (stripe lock held). ZRAM_NEED_BACKING when it
 * is written back and the caller has not fetched that block. */
static int load_locked(struct zram_core *z, struct streams *st, uint64_t i, unsigned char *dst,
                       const struct zram_wb_have *have)
{
    uint32_t f = z->flags[i];
    uint32_t size = f & ZRAM_SIZE_MASK;
    if (size) {
        unsigned char obj[PAGE];
        int n = load_object(z, z->handle[i], obj);
        if (n < 0)
            return n;
        return decode_object(z, st, f, obj, (uint32_t)n, dst);
    }
    if (f & ZRAM_SAME) {
        fill_page(dst, z->handle[i], 0, PAGE);
        return 0;
    }
    if (f & ZRAM_WB) {
        const unsigned char *data = have_data(have, i, z->handle[i]);
        if (!data)
            return ZRAM_NEED_BACKING;
        memcpy(dst, data, PAGE);
        return 0;
    }
    memset(dst, 0, PAGE);
    return 0;
}

/* -- write, discard, write-zeroes ------------------------------------------------------------ */

/* Read-modify-write of a partially covered page (stripe lock held): its new value and flags,
 * or 0 in *change when nothing changes (zeroing part of a page that holds no data). */
static int edit_locked(struct zram_core *z, struct streams *st, struct scratch *s, uint64_t page,
                       uint64_t offset, uint64_t end, const unsigned char *src, int hole,
                       uint64_t *value, uint32_t *flags, int *change,
                       const struct zram_wb_have *have, struct zram_wb_need *need)
{
    uint64_t start = page << ZRAM_PAGE_SHIFT;
    uint64_t lo = (offset > start ? offset : start) - start;
    uint64_t hi = (end < start + PAGE ? end : start + PAGE) - start;
    *change = 0;
    if (!src && !(z->flags[page] & STORED_MASK))
        return 0; /* already reads as zeros */
    int rc = load_locked(z, st, page, s->page, have);
    if (rc == ZRAM_NEED_BACKING)
        return need_push(z, need, page, z->handle[page]) ? -ENOMEM : ZRAM_NEED_BACKING;
    if (rc)
        return rc;
    if (src) {
        memcpy(s->page + lo, src + (start + lo - offset), hi - lo);
    } else {
        memset(s->page + lo, 0, hi - lo);
        if (hole) {
            uint64_t w;
            if (same_filled(s->page, &w) && !w) {
                *value = 0;
                *flags = 0;
                *change = 1;
                return 0;
            }
        }
    }
    rc = encode_page(z, st, s->page, value, flags);
    if (!rc)
        *change = 1;
    return rc;
}

/* The write / discard / write-zeroes path: set [offset, end) from src, or to zero. */
static int apply(struct zram_core *z, uint64_t offset, uint64_t end, const unsigned char *src,
                 int hole, int discard, uint32_t now, const struct zram_wb_have *have,
                 struct zram_wb_need *need)
{
    uint64_t first = offset >> ZRAM_PAGE_SHIFT, last = (end - 1) >> ZRAM_PAGE_SHIFT;
    uint64_t full_lo = (offset + PAGE_MASK) >> ZRAM_PAGE_SHIFT;
    uint64_t full_hi = end >> ZRAM_PAGE_SHIFT;
    if (full_hi < full_lo)
        full_hi = full_lo;
    size_t n_full = (size_t)(full_hi - full_lo);
    struct scratch *s = scratch_get(src ? n_full : 0);
    if (!s)
        return -ENOMEM;
    uint64_t *values = s->values;
    uint32_t *flags = s->vflags;
    struct streams st = {{0}};
    int rc = 0;
    size_t done = 0;

    /* 1. whole pages, before any slot lock */
    if (src) {
        const unsigned char *base = src + ((full_lo << ZRAM_PAGE_SHIFT) - offset);
        for (; done < n_full; done++) {
            flags[done] = 0;
            rc = encode_page(z, &st, base + (done << ZRAM_PAGE_SHIFT), &values[done],
                             &flags[done]);
            if (rc)
                goto fail_encoded;
        }
    }

    /* 2. the stripe locks, ascending */
    struct held held = lock_stripes(z, first, last);

    /* 3. partial edge pages, under the locks (a discard leaves them alone, as the kernel's) */
    uint64_t edge_page[2];
    uint64_t edge_value[2];
    uint32_t edge_flags[2];
    int nedges = 0;
    if ((offset | end) & PAGE_MASK && !discard) {
        uint64_t cand[2] = {first, last};
        int ncand = first == last ? 1 : 2;
        for (int c = 0; c < ncand; c++) {
            uint64_t p = cand[c];
            if (p >= full_lo && p < full_hi)
                continue;
            int change;
            edge_flags[nedges] = 0;
            int erc = edit_locked(z, &st, s, p, offset, end, src, hole, &edge_value[nedges],
                                  &edge_flags[nedges], &change, have, need);
            if (erc == ZRAM_NEED_BACKING) { /* list it, and go on to list the other edge too */
                rc = erc;
                continue;
            }
            if (erc) {
                rc = erc;
                break;
            }
            if (change)
                edge_page[nedges++] = p;
        }
        if (rc) { /* an error, or written-back edges to fetch: nothing changes */
            unlock_stripes(z, held);
            free_encoded(z, edge_value, edge_flags, (size_t)nedges);
            goto fail_encoded;
        }
    }

    /* 4. switch the slots over: nothing below can fail (zeroing: no fill word, or zero) */
    for (size_t k = 0; k < n_full; k++)
        install_slot(z, s, full_lo + k, src ? values[k] : 0, src ? flags[k] : hole ? 0 : ZRAM_SAME,
                     now);
    for (int e = 0; e < nedges; e++)
        install_slot(z, s, edge_page[e], edge_value[e], edge_flags[e], now);
    if (!src) /* the kernel counts every whole page a discard visits */
        for (uint64_t p = full_lo; p < full_hi; p++)
            stripe_stat(z, p)->notify_free++;
    unlock_stripes(z, held);
    streams_put(z, &st);
    if (s->nstale)
        zs_free_many(z->pool, s->nstale, s->stale, NULL);
    return 0;

fail_encoded:
    streams_put(z, &st);
    if (src)
        free_encoded(z, values, flags, done);
    return rc;
}

static int update(struct zram_core *z, uint64_t offset, uint64_t len, const unsigned char *src,
                  int hole, int discard, uint32_t now, const struct zram_wb_have *have,
                  struct zram_wb_need *need)
{
    int rc = gate_enter(z);
    if (rc)
        return rc;
    need->n = 0;
    need->pinned = 0;
    if (offset > z->pages << ZRAM_PAGE_SHIFT || len > (z->pages << ZRAM_PAGE_SHIFT) - offset)
        rc = -EINVAL;
    else if (len)
        rc = apply(z, offset, offset + len, src, hole, discard, now, have, need);
    if (rc < 0 && rc != -EINVAL)
        atomic_fetch_add(&z->failed_writes, 1);
    if (rc != ZRAM_NEED_BACKING && need->pinned)
        wb_unpin(z, need->pinned);
    gate_leave(z);
    return rc;
}

int zram_write(struct zram_core *z, uint64_t offset, const unsigned char *src, size_t len,
               uint32_t now, const struct zram_wb_have *have, struct zram_wb_need *need)
{
    return update(z, offset, len, src, 0, 0, now, have, need);
}

int zram_zero(struct zram_core *z, uint64_t offset, uint64_t len, int hole, int discard,
              uint32_t now, const struct zram_wb_have *have, struct zram_wb_need *need)
{
    return update(z, offset, len, NULL, hole, discard, now, have, need);
}

/* -- read ----------------------------------------------------------------------------------- */

/* Read pages [i, stop) of one stripe into dst, where dst holds bytes from device offset
 * `dst_off`; `lo`/`hi` clip the request's first and last page. */
static int read_stripe(struct zram_core *z, struct scratch *s, struct streams *st, uint64_t i,
                       uint64_t stop, uint64_t offset, uint64_t end, unsigned char *dst,
                       uint32_t now, struct zram_wb_need *need)
{
    /* what each page holds, taken under the stripe lock */
    uint32_t kind[STRIPE_PAGES]; /* its flags; 0 = reads as zeros */
    uint64_t word[STRIPE_PAGES];
    pthread_mutex_t *lock = stripe_lock(z, i);
    int rc = 0;
    pthread_mutex_lock(lock);
    for (uint64_t j = i; j < stop; j++) {
        size_t k = (size_t)(j - i);
        uint32_t f = z->flags[j];
        kind[k] = f;
        if (f & ZRAM_SIZE_MASK) {
            int n = load_object(z, z->handle[j], s->objs[k]);
            if (n < 0) {
                rc = n;
                break;
            }
            s->objsize[k] = (uint32_t)n;
        } else if (f & ZRAM_SAME) {
            word[k] = z->handle[j];
        } else if (f & ZRAM_WB) {
            word[k] = z->handle[j];
            if (need_push(z, need, j, z->handle[j])) {
                rc = -ENOMEM;
                break;
            }
        } else {
            continue;
        }
        if (f & ACCESSED) /* any access ends idleness and post-processing picks */
            z->flags[j] = f & ~ACCESSED;
        z->actime[j] = now;
    }
    pthread_mutex_unlock(lock);
    if (rc)
        return rc;
    /* decompress outside the lock */
    for (uint64_t j = i; j < stop; j++) {
        size_t k = (size_t)(j - i);
        uint64_t start = j << ZRAM_PAGE_SHIFT;
        uint64_t lo = offset > start ? offset - start : 0;
        uint64_t hi = end < start + PAGE ? end - start : PAGE;
        unsigned char *out = dst + (start + lo - offset);
        uint32_t f = kind[k];
        if (f & ZRAM_SIZE_MASK) {
            if (lo == 0 && hi == PAGE) {
                rc = decode_object(z, st, f, s->objs[k], s->objsize[k], out);
            } else {
                rc = decode_object(z, st, f, s->objs[k], s->objsize[k], s->page);
                if (!rc)
                    memcpy(out, s->page + lo, hi - lo);
            }
            if (rc)
                return rc;
        } else if (f & ZRAM_SAME) {
            fill_page(out, word[k], lo, hi);
        } else if (!(f & ZRAM_WB)) {
            memset(out, 0, hi - lo);
        }
    }
    return 0;
}

int zram_read(struct zram_core *z, uint64_t offset, unsigned char *dst, size_t len, uint32_t now,
              struct zram_wb_need *need)
{
    int rc = gate_enter(z);
    if (rc)
        return rc;
    if (offset > z->pages << ZRAM_PAGE_SHIFT || len > (z->pages << ZRAM_PAGE_SHIFT) - offset) {
        gate_leave(z);
        return -EINVAL;
    }
    struct scratch *s = len ? scratch_get(0) : NULL;
    if (len && !s)
        rc = -ENOMEM;
    struct streams st = {{0}};
    uint64_t end = offset + len;
    need->n = 0;
    need->pinned = 0;
    for (uint64_t i = offset >> ZRAM_PAGE_SHIFT; !rc && len && i <= (end - 1) >> ZRAM_PAGE_SHIFT;) {
        uint64_t stop = ((i >> STRIPE_SHIFT) + 1) << STRIPE_SHIFT;
        uint64_t last = ((end - 1) >> ZRAM_PAGE_SHIFT) + 1;
        if (stop > last)
            stop = last;
        rc = read_stripe(z, s, &st, i, stop, offset, end, dst, now, need);
        i = stop;
    }
    streams_put(z, &st);
    if (!rc && need->n) {
        rc = ZRAM_NEED_BACKING; /* the pin stays until zram_wb_done */
    } else {
        if (need->pinned)
            wb_unpin(z, need->pinned);
        if (rc)
            atomic_fetch_add(&z->failed_reads, 1);
    }
    gate_leave(z);
    return rc;
}

void zram_wb_done(struct zram_core *z, int pin) { wb_unpin(z, pin); }

void zram_count_failed(struct zram_core *z, int read)
{
    atomic_fetch_add(read ? &z->failed_reads : &z->failed_writes, 1);
}

void zram_wb_need_free(struct zram_wb_need *need)
{
    free(need->pages);
    need->pages = NULL;
    need->n = need->cap = 0;
}

size_t zram_reclaim_blocks(struct zram_core *z, uint64_t *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&z->freed_lock);
    while (n < max) {
        if (!z->nretired && z->nfreed) { /* retire the blocks freed so far: a new generation */
            uint64_t *p = z->retired;
            size_t cap = z->retired_cap;
            z->retired = z->freed;
            z->retired_cap = z->freed_cap;
            z->nretired = z->nfreed;
            z->freed = p;
            z->freed_cap = cap;
            z->nfreed = 0;
            z->retired_gen = atomic_fetch_add(&z->wb_gen, 1);
        }
        if (!z->nretired || atomic_load(&z->wb_readers[z->retired_gen & 1]))
            break;
        size_t k = z->nretired < max - n ? z->nretired : max - n;
        memcpy(out + n, z->retired + (z->nretired - k), k * sizeof *out);
        z->nretired -= k;
        n += k;
    }
    pthread_mutex_unlock(&z->freed_lock);
    return n;
}

/* -- block status --------------------------------------------------------------------------- */

int zram_extents(struct zram_core *z, uint64_t first, uint64_t stop, uint64_t *runs, int nruns)
{
    if (gate_enter(z))
        return -ESHUTDOWN;
    int n = 0;
    int type = -1;
    uint64_t start = first;
    pthread_mutex_t *held = NULL;
    for (uint64_t i = first; i < stop; i++) {
        pthread_mutex_t *lock = stripe_lock(z, i);
        if (lock != held) { /* a stripe's slots are read under its lock, one stripe at a time */
            if (held)
                pthread_mutex_unlock(held);
            pthread_mutex_lock(lock);
            held = lock;
        }
        uint32_t f = z->flags[i];
        int t;
        if (!(f & STORED_MASK))
            t = 3; /* hole | zero */
        else if (f & ZRAM_SAME && !z->handle[i])
            t = 2;
        else
            t = 0;
        if (t != type) {
            if (type >= 0) {
                runs[3 * n] = start;
                runs[3 * n + 1] = i - start;
                runs[3 * n + 2] = (uint64_t)type;
                if (++n == nruns) {
                    pthread_mutex_unlock(held);
                    gate_leave(z);
                    return n;
                }
            }
            type = t;
            start = i;
        }
    }
    if (held)
        pthread_mutex_unlock(held);
    if (type >= 0 && n < nruns) {
        runs[3 * n] = start;
        runs[3 * n + 1] = stop - start;
        runs[3 * n + 2] = (uint64_t)type;
        n++;
    }
    gate_leave(z);
    return n;
}

/* -- slot operations for post-processing ---------------------------------------------------- */

int64_t zram_mark_idle(struct zram_core *z, int64_t cutoff)
{
    if (gate_enter(z))
        return -ESHUTDOWN;
    int64_t marked = 0;
    for (uint64_t first = 0; first < z->pages; first += STRIPE_PAGES) {
        uint64_t stop = first + STRIPE_PAGES < z->pages ? first + STRIPE_PAGES : z->pages;
        pthread_mutex_lock(stripe_lock(z, first));
        for (uint64_t i = first; i < stop; i++) {
            uint32_t f = z->flags[i];
            if (!(f & ZRAM_SIZE_MASK) || f & (ZRAM_SAME | ZRAM_WB))
                continue;
            if (cutoff < 0 || (int64_t)z->actime[i] < cutoff) {
                z->flags[i] = f | ZRAM_IDLE;
                marked++;
            } else {
                z->flags[i] = f & ~ZRAM_IDLE;
            }
        }
        pthread_mutex_unlock(stripe_lock(z, first));
    }
    gate_leave(z);
    return marked;
}

int zram_pick(struct zram_core *z, uint64_t lo, uint64_t hi, uint32_t need, uint32_t skip,
              uint64_t **out, size_t *n, size_t *cap)
{
    if (gate_enter(z))
        return -ESHUTDOWN;
    skip |= ZRAM_PP_SLOT;
    if (hi > z->pages)
        hi = z->pages;
    int rc = 0;
    for (uint64_t i = lo; i < hi && !rc;) {
        uint64_t end = ((i >> STRIPE_SHIFT) + 1) << STRIPE_SHIFT;
        if (end > hi)
            end = hi;
        pthread_mutex_lock(stripe_lock(z, i));
        for (uint64_t j = i; j < end; j++) {
            uint32_t f = z->flags[j];
            if (!(f & ZRAM_SIZE_MASK) || (f & need) != need || f & skip)
                continue;
            if (*n + 2 > *cap) {
                size_t c = *cap ? 2 * *cap : 256;
                uint64_t *p = realloc(*out, c * sizeof *p);
                if (!p) {
                    rc = -ENOMEM;
                    break;
                }
                *out = p;
                *cap = c;
            }
            z->flags[j] = f | ZRAM_PP_SLOT;
            (*out)[(*n)++] = j;
            (*out)[(*n)++] = f;
        }
        pthread_mutex_unlock(stripe_lock(z, i));
        i = end;
    }
    gate_leave(z);
    return rc;
}

void zram_unpick(struct zram_core *z, const uint64_t *idx, size_t n)
{
    if (gate_enter(z))
        return;
    for (size_t k = 0; k < n; k++) {
        uint64_t j = idx[k];
        if (j >= z->pages)
            continue;
        pthread_mutex_lock(stripe_lock(z, j));
        z->flags[j] &= ~ZRAM_PP_SLOT;
        pthread_mutex_unlock(stripe_lock(z, j));
    }
    gate_leave(z);
}

/* Post-processing's access to slot `index`: enter the gate and take the slot's stripe lock;
 * the lock, or NULL with -ESHUTDOWN / -EINVAL in *rc. */
static pthread_mutex_t *pp_enter(struct zram_core *z, uint64_t index, int *rc)
{
    if (gate_enter(z)) {
        *rc = -ESHUTDOWN;
        return NULL;
    }
    if (index >= z->pages) {
        gate_leave(z);
        *rc = -EINVAL;
        return NULL;
    }
    pthread_mutex_t *lock = stripe_lock(z, index);
    pthread_mutex_lock(lock);
    return lock;
}

/* ... and its end: the lock dropped, the slot's old object `old` freed if it was switched
 * (`done`), the gate left; returns `done`. */
static int pp_leave(struct zram_core *z, pthread_mutex_t *lock, int done, uint64_t old)
{
    pthread_mutex_unlock(lock);
    if (done)
        zs_free_many(z->pool, 1, &old, NULL);
    gate_leave(z);
    return done;
}

/* Whether slot `index` (stripe lock held) is still what post-processing picked: PP_SLOT, an
 * object, and the handle it was picked with (any access or free clears or changes these). */
static inline int still_picked(const struct zram_core *z, uint64_t index, uint64_t handle)
{
    uint32_t f = z->flags[index];
    return f & ZRAM_PP_SLOT && f & ZRAM_SIZE_MASK && z->handle[index] == handle;
}

int zram_take_page(struct zram_core *z, uint64_t index, uint32_t *flags, uint64_t *handle,
                   unsigned char *page)
{
    int rc;
    pthread_mutex_t *lock = pp_enter(z, index, &rc);
    if (!lock)
        return rc;
    unsigned char obj[PAGE];
    uint32_t f = z->flags[index];
    int n = 0;
    if (f & ZRAM_PP_SLOT && f & ZRAM_SIZE_MASK) {
        *flags = f;
        *handle = z->handle[index];
        n = load_object(z, *handle, obj);
    }
    pthread_mutex_unlock(lock);
    rc = 0;
    if (n < 0) {
        rc = n;
    } else if (n) {
        struct streams st = {{0}};
        rc = decode_object(z, &st, f, obj, (uint32_t)n, page);
        streams_put(z, &st);
        if (!rc)
            rc = 1;
    }
    gate_leave(z);
    return rc;
}

int zram_complete_writeback(struct zram_core *z, uint64_t index, uint64_t handle, uint64_t block)
{
    int rc;
    pthread_mutex_t *lock = pp_enter(z, index, &rc);
    if (!lock)
        return rc;
    int done = still_picked(z, index, handle);
    if (done) {
        uint32_t f = z->flags[index];
        struct zram_stripe_stat *ss = stripe_stat(z, index);
        ss->compr -= f & ZRAM_SIZE_MASK;
        if (f & ZRAM_HUGE)
            ss->huge--;
        z->flags[index] = ZRAM_WB; /* zram_free_page + set WB: size, IDLE, HUGE cleared */
        z->handle[index] = block;
        z->actime[index] = 0;
    }
    return pp_leave(z, lock, done, handle);
}

void zram_tried(struct zram_core *z, uint64_t index, uint64_t handle, int incompressible)
{
    int rc;
    pthread_mutex_t *lock = pp_enter(z, index, &rc);
    if (!lock)
        return;
    uint32_t f = z->flags[index];
    if (f & ZRAM_PP_SLOT && z->handle[index] == handle) {
        f &= ~(ZRAM_PP_SLOT | ZRAM_IDLE);
        z->flags[index] = f | (incompressible ? ZRAM_INCOMPRESSIBLE : 0);
    }
    pp_leave(z, lock, 0, 0);
}

int zram_complete_recompress(struct zram_core *z, uint64_t index, uint64_t handle, uint64_t newh,
                             uint32_t size, int prio)
{
    int rc;
    pthread_mutex_t *lock = pp_enter(z, index, &rc);
    if (!lock)
        return rc;
    int done = still_picked(z, index, handle);
    if (done) {
        uint32_t f = z->flags[index];
        struct zram_stripe_stat *ss = stripe_stat(z, index);
        uint32_t keep = f & ~(ZRAM_SIZE_MASK | ZRAM_HUGE | ZRAM_IDLE | ZRAM_PP_SLOT |
                              ZRAM_COMP_PRIORITY_MASK);
        z->flags[index] = keep | size | ((uint32_t)prio << ZRAM_COMP_PRIORITY_SHIFT);
        z->handle[index] = newh;
        ss->compr += (int64_t)size - (int64_t)(f & ZRAM_SIZE_MASK);
        if (f & ZRAM_HUGE)
            ss->huge--;
    }
    return pp_leave(z, lock, done, handle);
}

int zram_slot(struct zram_core *z, uint64_t index, uint64_t *handle, uint32_t *flags,
              uint32_t *actime)
{
    if (gate_enter(z))
        return -ESHUTDOWN;
    if (index >= z->pages) {
        gate_leave(z);
        return -EINVAL;
    }
    pthread_mutex_t *lock = stripe_lock(z, index);
    pthread_mutex_lock(lock);
    *handle = z->handle[index];
    *flags = z->flags[index];
    *actime = z->actime[index];
    pthread_mutex_unlock(lock);
    gate_leave(z);
    return 0;
}

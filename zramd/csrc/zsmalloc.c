/*
 * zsmalloc.c: zramd's zsmalloc pool in C (after mm/zsmalloc.c; zramd/pool.py is the reference)
 *
 * Design
 * ======
 *
 * Compressed pages come in every size from a few bytes to 4 KiB. Giving each its own frame
 * wastes half the memory; a general heap fragments and cannot give frames back. zsmalloc
 * sorts objects into *size classes* 16 bytes apart and packs each class into *zspages*:
 * chains of up to `chain` independent 4 KiB frames, sized so the chain's tail waste is
 * least, objects laid end to end across frame boundaries. Frames come from one MAP_NORESERVE
 * reservation and go back to the OS (madvise) when their zspage empties.
 *
 * Callers hold handles, never locations. A handle names an entry of its class's handle
 * table; the entry holds where the object is now, so compaction moves an object by copying
 * it and rewriting that one entry:
 *
 *     handle = entry << 8 | class index
 *        |
 *        v
 *     class->handles[entry] = zspage id << 37 | arena offset      (the location; huge objects:
 *        |                         |                              size << 37 | frame offset)
 *        |                         v
 *        |        zspages[id]: inuse, freeobj, fresh cursor, first frame, prev/next
 *        |                         |
 *        v                         v
 *     arena: frame f ---links[f]---> frame g ---links[g]---> 0     (frames of one zspage)
 *            [hdr|obj 0 ...][hdr|obj 1 .....|..... obj 1][hdr|obj 2 ...] ...
 *              ^ header = size << 48 | handle << 1 | 1: the way back from object to handle
 *
 * Free handle-table entries hold -1 - next free entry (entry 0 is never used, so no handle is
 * 0). A free object's header holds the arena offset of the next free object << 1 (tag bit
 * clear). Objects are carved lazily: a new zspage costs O(1); objects past the `fresh`
 * cursor have never held a header. Huge classes (one object per one-frame zspage) keep no
 * header and no zspage descriptor: the location records the size.
 *
 * Allocation takes an object from the first zspage of the fullest non-empty fullness group
 * (10 % steps, kernel >= 6.4); a zspage whose last object is freed is freed at once.
 * Compaction walks classes from the largest down, moving objects from the emptiest zspage
 * into the fullest until zs_can_compact is zero.
 *
 * Every choice (class table, frame and zspage-id reuse order, release batches) is pool.py's,
 * so the two give the same handles and locations for the same calls.
 *
 * A locked pool (zs_lock_frames: a swap device's) is the one thing pool.py has no twin of. Its
 * frames 1..N are faulted in and mlocked up front and the pool is capped at them; freed frames
 * go straight back on the free list, resident, and no frame is ever madvised away. Handle
 * tables cannot grow by realloc there (new heap pages are memory the kernel may have to
 * reclaim, by swapping into this very pool), so each class's table becomes a directory of
 * 512-entry chunks, one frame of the reserve each:
 *
 *     class->chunks[entry >> 9][entry & 511] = location       (the directory itself is locked)
 *
 * Locking
 * =======
 *
 *     pool->compact_lock  (trylock: single flight)
 *       -> class->lock    (one per class: its lists, counters, handle table, object bytes)
 *         -> pool->page_lock  (leaf: frame allocator, zspage ids)
 *
 * No code holds two class locks, and no madvise runs under a lock: a full cache of freed
 * frames is taken out under the page lock and released once the caller has dropped its
 * class lock (release_frames). A zspage, its frames' link words and its objects belong to
 * one class while it lives; they change hands only through the page lock, which orders the
 * old owner's last touch before the new owner's first. pages_allocated and the compaction
 * counters are also read without a lock (atomics).
 */
#define _GNU_SOURCE
#include "zsmalloc.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE_SHIFT ZS_PAGE_SHIFT
#define PAGE_SIZE ZS_PAGE_SIZE
#define PAGE_MASK (PAGE_SIZE - 1)

#define ZS_HANDLE_SIZE 8        /* in-object header: the reverse map compaction needs */
#define ZS_MIN_ALLOC_SIZE 32    /* max(32, chain << PAGE_SHIFT >> OBJ_INDEX_BITS) on 64-bit */
#define ZS_SIZE_CLASS_DELTA (PAGE_SIZE >> 8) /* 16: rounding wastes < 16 B per object */
#define ZS_SIZE_CLASSES 255

#define HANDLE_CLASS_BITS 8 /* 255 class indices */
#define HANDLE_CLASS_MASK ((1u << HANDLE_CLASS_BITS) - 1)
#define LOC_SHIFT 37 /* arena offsets below 2^37; zspage id (or huge size) above */
#define LOC_OFF_MASK ((UINT64_C(1) << LOC_SHIFT) - 1)
#define OBJ_ALLOCATED_TAG 1
#define HDR_HANDLE_SHIFT 1
#define HDR_SIZE_SHIFT 48
#define HDR_HANDLE_MASK ((UINT64_C(1) << HDR_SIZE_SHIFT) - 1) /* handle and tag bits */
#define MAX_HANDLE ((UINT64_C(1) << (HDR_SIZE_SHIFT - HDR_HANDLE_SHIFT)) - 1)

/* Fullness groups: 0 empty (never listed: freed at once), 1..10 by ten-percent ratio,
 * 11 full (only counted: nothing allocates from, or compacts out of, a full zspage). */
enum fullness_group {
    ZS_INUSE_RATIO_0 = 0,
    ZS_INUSE_RATIO_10 = 1,
    ZS_INUSE_RATIO_99 = 10,
    ZS_INUSE_RATIO_100 = 11,
    NR_FULLNESS_GROUPS = 12,
};

/* A zspage descriptor: 32 bytes in a lazily committed table indexed by id (0 is "none").
 * Touched only under its class's lock; ids are handed out under the page lock. */
struct zspage {
    uint64_t freeobj; /* arena offset of the first free object (0: none) */
    uint64_t fresh;   /* arena offset of the next never-used object */
    uint32_t first;   /* first frame of the chain */
    uint32_t prev;    /* fullness list neighbours; `next` also threads free ids */
    uint32_t next;
    uint16_t inuse;      /* live objects */
    uint16_t fresh_left; /* never-used objects left */
};

struct size_class {
    pthread_mutex_t lock;
    /* guarded by lock */
    uint32_t fullness_list[NR_FULLNESS_GROUPS]; /* first zspage of each group (0: empty) */
    uint64_t nr_zspages[NR_FULLNESS_GROUPS];    /* zspages in each group */
    uint32_t fullness_mask; /* bit g set while list g is non-empty */
    int64_t *handles;       /* location (>= 0) or -1 - next free entry */
    int64_t **chunks;       /* a locked pool's table instead: 512-entry chunks (table_entry) */
    uint64_t max_chunks;    /* ... and the room in its directory */
    uint64_t nr_handles;    /* entries in use, entry 0 included */
    uint64_t max_handles;   /* entries allocated */
    uint64_t free_entry;     /* first free entry (0: none) */
    uint64_t obj_allocated;
    uint64_t obj_used;
    /* constant */
    struct zs_class_spec spec;
    bool huge;
} __attribute__((aligned(64))); /* no false sharing between classes */

struct zs_pool {
    /* constant after creation */
    unsigned char *arena; /* frame f at f << PAGE_SHIFT; frame 0 is a guard */
    uint32_t *links;      /* per frame: next frame of its zspage, or of the free list */
    struct zspage *zspages;
    uint32_t max_frames;  /* frames the pool may use, frame 0 included (locked: the cap) */
    uint32_t map_frames;  /* frames mapped (the arena, links and zspage reservations) */
    bool locked;          /* zs_lock_frames: set once, before any frame is handed out */
    uint64_t locked_frames;
    int64_t **dir;        /* locked: every class's chunk directory, one locked mapping */
    size_t dir_bytes;
    unsigned release_batch;
    unsigned huge_class_size;
    unsigned nr_classes;
    struct size_class *classes; /* ascending size */
    struct size_class *by_index[HANDLE_CLASS_MASK + 1];
    uint8_t class_of_size[ZS_MAX_ALLOC_SIZE + 1]; /* position in classes */

    pthread_mutex_t page_lock __attribute__((aligned(64)));
    /* guarded by page_lock */
    uint32_t top;       /* frames [1, top) have been handed out at least once */
    uint32_t free_head; /* released free frames, threaded through links */
    uint32_t free_frames;
    uint32_t *cache; /* freed frames still resident, reused first (LIFO) */
    uint32_t nr_cached;
    uint32_t *spare;      /* a cache buffer to swap in while a batch is released */
    uint32_t cache_size;  /* frames each cache buffer holds */
    uint32_t releasing;   /* frames out of the cache on their way through madvise */
    pthread_cond_t released; /* broadcast when a batch joins the free list */
    uint32_t zs_top; /* zspage ids [1, zs_top) have been used */
    uint32_t zs_free;
    uint32_t zs_count;
    uint64_t releases;
    uint64_t table_frames;    /* a locked pool's frames holding handle-table chunks */
    uint64_t pages_allocated; /* written under page_lock, read anywhere (atomic) */
    uint64_t pages_peak;      /* most frames held at once since creation (same rules) */

    pthread_mutex_t compact_lock __attribute__((aligned(64)));
    /* written under compact_lock, read anywhere (atomic) */
    uint64_t pages_compacted;
    uint64_t bytes_moved;
    uint64_t max_slice_ns;
};

#define READ_ONCE(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define WRITE_ONCE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

static void set_fault(struct zs_fault *fault, enum zs_fault_kind kind, uint64_t handle)
{
    if (fault) {
        fault->kind = kind;
        fault->handle = handle;
    }
}

/* -- size classes (zs_create_pool's loop, as size_class.py) ----------------------------------- */

/* calculate_zspage_chain_size: frames per zspage leaving the smallest tail; ties keep the
 * shorter chain, and powers of two tile a frame exactly. */
static unsigned calculate_zspage_chain_size(unsigned class_size, unsigned max_chain)
{
    if ((class_size & (class_size - 1)) == 0)
        return 1;
    unsigned best = 1, best_waste = PAGE_SIZE;
    for (unsigned frames = 1; frames <= max_chain; frames++) {
        unsigned waste = (frames * PAGE_SIZE) % class_size;
        if (waste < best_waste) {
            best_waste = waste;
            best = frames;
        }
    }
    return best;
}

/* get_size_class_index: the class index for an object of `size` bytes, header included. */
static unsigned get_size_class_index(unsigned size)
{
    if (size <= ZS_MIN_ALLOC_SIZE)
        return 0;
    unsigned idx = (size - ZS_MIN_ALLOC_SIZE + ZS_SIZE_CLASS_DELTA - 1) / ZS_SIZE_CLASS_DELTA;
    return idx < ZS_SIZE_CLASSES - 1 ? idx : ZS_SIZE_CLASSES - 1;
}

static int get_fullness_group(const struct size_class *class, unsigned inuse)
{
    unsigned objs = class->spec.objs_per_zspage;
    if (inuse == 0)
        return ZS_INUSE_RATIO_0;
    if (inuse == objs)
        return ZS_INUSE_RATIO_100;
    /* 1 of 127 objects rounds to 0 %, but such a zspage belongs in the 10 % group */
    return 100 * inuse / objs / 10 + 1;
}

static uint64_t class_can_compact(const struct size_class *class)
{
    uint64_t wasted = class->obj_allocated - class->obj_used;
    return wasted / class->spec.objs_per_zspage * class->spec.pages_per_zspage;
}

static int init_classes(struct zs_pool *pool, unsigned chain)
{
    struct zs_class_spec specs[ZS_SIZE_CLASSES];
    unsigned index_pos[ZS_SIZE_CLASSES]; /* class index -> position in specs (built largest first) */
    unsigned nr = 0;
    /* walk from the largest index down, merging neighbours of the same geometry into the
     * larger class; the first class from the top that is not huge bounds the huge ones */
    for (int i = ZS_SIZE_CLASSES - 1; i >= 0; i--) {
        unsigned size = ZS_MIN_ALLOC_SIZE + (unsigned)i * ZS_SIZE_CLASS_DELTA;
        if (size > ZS_MAX_ALLOC_SIZE)
            size = ZS_MAX_ALLOC_SIZE;
        unsigned pages = calculate_zspage_chain_size(size, chain);
        unsigned objs = pages * PAGE_SIZE / size;
        if (pages != 1 && objs != 1 && !pool->huge_class_size)
            pool->huge_class_size = size - (ZS_HANDLE_SIZE - 1);
        if (nr && specs[nr - 1].pages_per_zspage == pages
            && specs[nr - 1].objs_per_zspage == objs) {
            index_pos[i] = nr - 1;
            continue;
        }
        specs[nr] = (struct zs_class_spec){(unsigned)i, size, pages, objs};
        index_pos[i] = nr++;
    }
    pool->classes = aligned_alloc(64, nr * sizeof(struct size_class));
    if (!pool->classes)
        return -ENOMEM;
    memset(pool->classes, 0, nr * sizeof(struct size_class));
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
#ifdef __GLIBC__
    /* critical sections are a few hundred ns: spin briefly before sleeping */
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    for (unsigned k = 0; k < nr; k++) {
        struct size_class *class = &pool->classes[k];
        class->spec = specs[nr - 1 - k]; /* ascending */
        class->huge = class->spec.pages_per_zspage == 1 && class->spec.objs_per_zspage == 1;
        class->nr_handles = 1; /* entry 0 is never used */
        pthread_mutex_init(&class->lock, &attr);
        pool->by_index[class->spec.index] = class;
    }
    pthread_mutexattr_destroy(&attr);
    pool->nr_classes = nr;
    for (unsigned size = 1; size <= ZS_MAX_ALLOC_SIZE; size++)
        pool->class_of_size[size] =
            (uint8_t)(nr - 1 - index_pos[get_size_class_index(size + ZS_HANDLE_SIZE)]);
    return 0;
}

static struct size_class *size_to_class(struct zs_pool *pool, uint32_t size)
{
    return &pool->classes[pool->class_of_size[size]];
}

/* -- frames (frames.py): under page_lock ----------------------------------------------------- */

static uint64_t frame_offset(uint32_t frame)
{
    return (uint64_t)frame << PAGE_SHIFT;
}

static uint32_t frames_available(const struct zs_pool *pool)
{
    return pool->max_frames - pool->top + pool->free_frames + pool->nr_cached;
}

/* Take `count` frames, chained through their link words; 0 and `*first`, or -ENOSPC with
 * nothing taken. */
static int alloc_chain(struct zs_pool *pool, unsigned count, uint32_t *first,
                       struct zs_fault *fault)
{
    while (frames_available(pool) < count && pool->releasing) /* frames on their way back */
        pthread_cond_wait(&pool->released, &pool->page_lock);
    if (frames_available(pool) < count) {
        if (fault) {
            fault->kind = ZS_FAULT_ARENA_FULL;
            fault->frames_needed = count;
            fault->frames_left = frames_available(pool);
            fault->frames_max = pool->max_frames;
        }
        return -ENOSPC;
    }
    uint32_t prev = 0;
    for (unsigned i = 0; i < count; i++) {
        uint32_t frame;
        if (pool->nr_cached) {
            frame = pool->cache[--pool->nr_cached];
        } else if (pool->free_head) {
            frame = pool->free_head;
            pool->free_head = pool->links[frame];
            pool->free_frames--;
        } else {
            frame = pool->top++;
        }
        if (prev)
            pool->links[prev] = frame;
        else
            *first = frame;
        prev = frame;
    }
    pool->links[prev] = 0;
    WRITE_ONCE(pool->pages_allocated, pool->pages_allocated + count);
    if (pool->pages_allocated > pool->pages_peak)
        WRITE_ONCE(pool->pages_peak, pool->pages_allocated);
    return 0;
}

/* Return `first..last` to the OS. On mlock'ed memory MADV_DONTNEED fails with EINVAL:
 * unlock the run and try again; if that fails too the frames just stay resident. */
static void release_run(struct zs_pool *pool, uint32_t first, uint32_t last)
{
    void *addr = pool->arena + frame_offset(first);
    size_t len = (size_t)(last - first + 1) << PAGE_SHIFT;
    if (madvise(addr, len, MADV_DONTNEED) != 0 && errno == EINVAL && munlock(addr, len) == 0)
        (void)madvise(addr, len, MADV_DONTNEED);
}

static int cmp_frame(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Sort `frames` and release them, one madvise per contiguous run; returns the runs. The
 * frames belong to the caller: in no zspage, cache or free list. */
static uint64_t release_runs(struct zs_pool *pool, uint32_t *frames, uint32_t n)
{
    uint64_t runs = 1;
    qsort(frames, n, sizeof(*frames), cmp_frame);
    uint32_t run = frames[0];
    for (uint32_t i = 1; i < n; i++) {
        if (frames[i] != frames[i - 1] + 1) {
            release_run(pool, run, frames[i - 1]);
            run = frames[i];
            runs++;
        }
    }
    release_run(pool, run, frames[n - 1]);
    return runs;
}

/* Put released frames on the free list in ascending order, so the largest is reused first
 * (as frames.py does). Under page_lock. */
static void push_free_frames(struct zs_pool *pool, const uint32_t *frames, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        pool->links[frames[i]] = pool->free_head;
        pool->free_head = frames[i];
    }
    pool->free_frames += n;
}

/* Release the whole cache with the page lock held: only when a batch cannot wait. */
static void release_cached_locked(struct zs_pool *pool)
{
    if (!pool->nr_cached)
        return;
    pool->releases += release_runs(pool, pool->cache, pool->nr_cached);
    push_free_frames(pool, pool->cache, pool->nr_cached);
    pool->nr_cached = 0;
}

/*
 * Return the cached frames to the OS once there are at least `min` (the release batch; 1 to
 * flush the cache). Called with no lock held: the batch leaves the cache under the page lock
 * (a spare buffer takes its place), goes through madvise with no lock held, and joins the
 * free list under the page lock again. Meanwhile its frames count as `releasing`, and an
 * allocation that needs them waits (alloc_chain). Single-threaded, nothing happens between
 * the free that fills the cache and this call, so frames are reused in pool.py's order.
 */
static void release_frames(struct zs_pool *pool, uint32_t min)
{
    pthread_mutex_lock(&pool->page_lock);
    uint32_t n = pool->nr_cached;
    if (!n || n < min) {
        pthread_mutex_unlock(&pool->page_lock);
        return;
    }
    uint32_t *batch = pool->cache;
    uint32_t *fresh = pool->spare ? pool->spare : malloc(pool->cache_size * sizeof(*fresh));
    if (!fresh) { /* out of memory for another buffer: release with the lock held */
        release_cached_locked(pool);
        pthread_mutex_unlock(&pool->page_lock);
        return;
    }
    pool->spare = NULL;
    pool->cache = fresh;
    pool->nr_cached = 0;
    pool->releasing += n;
    pthread_mutex_unlock(&pool->page_lock);

    uint64_t runs = release_runs(pool, batch, n);

    pthread_mutex_lock(&pool->page_lock);
    push_free_frames(pool, batch, n);
    pool->releasing -= n;
    pool->releases += runs;
    if (!pool->spare)
        pool->spare = batch;
    else
        free(batch);
    pthread_cond_broadcast(&pool->released);
    pthread_mutex_unlock(&pool->page_lock);
}

/* Give back every frame of the chain at `first` to the cache (under page_lock); true when
 * the cache holds a batch to release (the caller calls release_frames once it holds no
 * lock). */
static bool free_chain(struct zs_pool *pool, uint32_t first)
{
    if (pool->locked) { /* locked frames stay resident: straight onto the free list */
        unsigned count = 0;
        for (uint32_t frame = first, next; frame; frame = next) {
            next = pool->links[frame];
            pool->links[frame] = pool->free_head;
            pool->free_head = frame;
            count++;
        }
        pool->free_frames += count;
        WRITE_ONCE(pool->pages_allocated, pool->pages_allocated - count);
        return false;
    }
    /* Other threads' chains may have filled the cache past its batch before the thread that
     * filled it first got to release_frames: then release it here, so a chain always fits. */
    if (pool->nr_cached + ZS_MAX_CHAIN_SIZE > pool->cache_size)
        release_cached_locked(pool);
    unsigned count = 0;
    for (uint32_t frame = first, next; frame; frame = next) {
        next = pool->links[frame];
        pool->cache[pool->nr_cached++] = frame;
        count++;
    }
    WRITE_ONCE(pool->pages_allocated, pool->pages_allocated - count);
    return pool->nr_cached >= pool->release_batch;
}

/* -- zspages (zspage.py) ----------------------------------------------------------------------- */

/* insert_zspage: file `zid` at the head of the list for `group` (1..10). */
static void insert_zspage(struct zs_pool *pool, struct size_class *class, uint32_t zid,
                          int group)
{
    struct zspage *zspage = &pool->zspages[zid];
    uint32_t head = class->fullness_list[group];
    zspage->prev = 0;
    zspage->next = head;
    if (head)
        pool->zspages[head].prev = zid;
    else
        class->fullness_mask |= 1u << group;
    class->fullness_list[group] = zid;
    class->nr_zspages[group]++;
}

/* remove_zspage: take `zid` off the list for `group`. */
static void remove_zspage(struct zs_pool *pool, struct size_class *class, uint32_t zid,
                          int group)
{
    struct zspage *zspage = &pool->zspages[zid];
    if (zspage->prev) {
        pool->zspages[zspage->prev].next = zspage->next;
    } else {
        class->fullness_list[group] = zspage->next;
        if (!zspage->next)
            class->fullness_mask &= ~(1u << group);
    }
    if (zspage->next)
        pool->zspages[zspage->next].prev = zspage->prev;
    class->nr_zspages[group]--;
}

/* File a zspage that has left group `old` (0: off every list) by its inuse count now; an
 * empty one is not filed (the caller frees it). Returns the new group. */
static int fix_fullness_group(struct zs_pool *pool, struct size_class *class, uint32_t zid,
                              int old)
{
    int group = get_fullness_group(class, pool->zspages[zid].inuse);
    if (group == old)
        return group;
    if (old == ZS_INUSE_RATIO_100)
        class->nr_zspages[ZS_INUSE_RATIO_100]--;
    else if (old)
        remove_zspage(pool, class, zid, old);
    if (group == ZS_INUSE_RATIO_100)
        class->nr_zspages[ZS_INUSE_RATIO_100]++;
    else if (group)
        insert_zspage(pool, class, zid, group);
    return group;
}

static uint64_t *header_word(struct zs_pool *pool, uint64_t off)
{
    return (uint64_t *)(pool->arena + off);
}

/* alloc_zspage: frames and an id for an empty zspage (under class->lock); nothing carved. */
static int alloc_zspage(struct zs_pool *pool, struct size_class *class, uint32_t *zid,
                        struct zs_fault *fault)
{
    uint32_t first = 0;
    pthread_mutex_lock(&pool->page_lock);
    int err = alloc_chain(pool, class->spec.pages_per_zspage, &first, fault);
    if (!err) {
        *zid = pool->zs_free;
        if (*zid)
            pool->zs_free = pool->zspages[*zid].next;
        else
            *zid = pool->zs_top++;
        pool->zs_count++;
    }
    pthread_mutex_unlock(&pool->page_lock);
    if (err)
        return err;
    struct zspage *zspage = &pool->zspages[*zid];
    zspage->first = first;
    zspage->inuse = 0;
    zspage->freeobj = 0;
    zspage->fresh = frame_offset(first);
    zspage->fresh_left = (uint16_t)class->spec.objs_per_zspage;
    class->obj_allocated += class->spec.objs_per_zspage;
    return 0;
}

/* free_zspage: an empty, unlisted zspage's frames and id back to the page allocator; true
 * when a batch of frames is due for release_frames. */
static bool free_zspage(struct zs_pool *pool, struct size_class *class, uint32_t zid)
{
    uint32_t first = pool->zspages[zid].first;
    class->obj_allocated -= class->spec.objs_per_zspage;
    pthread_mutex_lock(&pool->page_lock);
    pool->zspages[zid].next = pool->zs_free;
    pool->zs_free = zid;
    pool->zs_count--;
    bool due = free_chain(pool, first);
    pthread_mutex_unlock(&pool->page_lock);
    return due;
}

/* obj_malloc's first half: a free object's arena offset, from the zspage's free list or
 * past its fresh cursor (the caller checked the zspage is not full and writes the header). */
static uint64_t take_object(struct zs_pool *pool, struct size_class *class, uint32_t zid)
{
    struct zspage *zspage = &pool->zspages[zid];
    uint64_t off = zspage->freeobj;
    if (off) {
        zspage->freeobj = *header_word(pool, off) >> 1;
        return off;
    }
    off = zspage->fresh;
    unsigned size = class->spec.size;
    if (!--zspage->fresh_left)
        zspage->fresh = 0;
    else if ((off & PAGE_MASK) + size < PAGE_SIZE)
        zspage->fresh = off + size;
    else /* the next object starts in the next frame of the chain */
        zspage->fresh = frame_offset(pool->links[off >> PAGE_SHIFT])
                        + ((off & PAGE_MASK) + size - PAGE_SIZE);
    return off;
}

/* obj_free's list half: push the object on its zspage's free list. */
static void put_object(struct zs_pool *pool, uint32_t zid, uint64_t off)
{
    *header_word(pool, off) = pool->zspages[zid].freeobj << 1;
    pool->zspages[zid].freeobj = off;
}

/* -- object bytes ----------------------------------------------------------------------------- */

/* Copy `n` bytes into the arena at `off`, following the chain across a frame boundary (an
 * object is at most a frame long, so it spans at most two frames). */
static void obj_write(struct zs_pool *pool, uint64_t off, const unsigned char *src, size_t n)
{
    size_t first = PAGE_SIZE - (off & PAGE_MASK);
    if (n <= first) {
        memcpy(pool->arena + off, src, n);
        return;
    }
    memcpy(pool->arena + off, src, first);
    memcpy(pool->arena + frame_offset(pool->links[off >> PAGE_SHIFT]), src + first, n - first);
}

static void obj_read(struct zs_pool *pool, uint64_t off, unsigned char *dst, size_t n)
{
    size_t first = PAGE_SIZE - (off & PAGE_MASK);
    if (n <= first) {
        memcpy(dst, pool->arena + off, n);
        return;
    }
    memcpy(dst, pool->arena + off, first);
    memcpy(dst + first, pool->arena + frame_offset(pool->links[off >> PAGE_SHIFT]), n - first);
}

/* -- handles ---------------------------------------------------------------------------------- */

#define HCHUNK_SHIFT (PAGE_SHIFT - 3) /* a locked pool's table chunk: one frame of entries */
#define HCHUNK_MASK ((UINT64_C(1) << HCHUNK_SHIFT) - 1)

/* The handle-table entry of `entry` (entry < max_handles), in either table layout. */
static inline int64_t *table_entry(const struct size_class *class, uint64_t entry)
{
    if (class->chunks)
        return &class->chunks[entry >> HCHUNK_SHIFT][entry & HCHUNK_MASK];
    return &class->handles[entry];
}

static struct size_class *handle_to_class(struct zs_pool *pool, uint64_t handle,
                                          struct zs_fault *fault)
{
    struct size_class *class =
        handle > HANDLE_CLASS_MASK ? pool->by_index[handle & HANDLE_CLASS_MASK] : NULL;
    if (!class)
        set_fault(fault, ZS_FAULT_NOT_A_HANDLE, handle);
    return class;
}

/* handle_to_obj: the live location of `handle` (under class->lock), or -EINVAL. */
static int handle_to_location(struct size_class *class, uint64_t handle, uint64_t *loc,
                              struct zs_fault *fault)
{
    uint64_t entry = handle >> HANDLE_CLASS_BITS;
    if (entry >= class->nr_handles || *table_entry(class, entry) < 0) {
        set_fault(fault, ZS_FAULT_NOT_ALLOCATED, handle);
        return -EINVAL;
    }
    *loc = (uint64_t)*table_entry(class, entry);
    return 0;
}

/* The header of `handle`'s object at `off`, checked to name the handle; or -EIO. */
static int obj_header(struct zs_pool *pool, struct size_class *class, uint64_t handle,
                      uint64_t off, uint64_t *hdr, struct zs_fault *fault)
{
    *hdr = *header_word(pool, off);
    if ((*hdr & HDR_HANDLE_MASK) == (handle << HDR_HANDLE_SHIFT | OBJ_ALLOCATED_TAG))
        return 0;
    if (fault) {
        set_fault(fault, ZS_FAULT_BAD_HEADER, handle);
        fault->offset = off;
        fault->header = *hdr;
        fault->obj_size = class->spec.size;
    }
    return -EIO;
}

/* A locked pool's table grows by a chunk: a frame of the reserve (under class->lock; takes
 * the page lock). -ENOSPC when the reserve has no frame left. */
static int grow_chunks(struct zs_pool *pool, struct size_class *class, struct zs_fault *fault)
{
    uint64_t k = class->max_handles >> HCHUNK_SHIFT;
    if (k >= class->max_chunks) { /* the directory covers every object the reserve can hold */
        set_fault(fault, ZS_FAULT_NO_HANDLE, 0);
        if (fault)
            fault->obj_size = class->spec.size;
        return -ENOSPC;
    }
    uint32_t frame;
    pthread_mutex_lock(&pool->page_lock);
    if (!frames_available(pool)) {
        pthread_mutex_unlock(&pool->page_lock);
        if (fault) {
            fault->kind = ZS_FAULT_ARENA_FULL;
            fault->frames_needed = 1;
            fault->frames_left = 0;
            fault->frames_max = pool->max_frames;
        }
        return -ENOSPC;
    }
    if (pool->free_head) {
        frame = pool->free_head;
        pool->free_head = pool->links[frame];
        pool->free_frames--;
    } else {
        frame = pool->top++;
    }
    pool->table_frames++;
    pthread_mutex_unlock(&pool->page_lock);
    class->chunks[k] = (int64_t *)(pool->arena + frame_offset(frame));
    if (!k)
        class->chunks[0][0] = 0;
    class->max_handles += UINT64_C(1) << HCHUNK_SHIFT;
    return 0;
}

/* A free handle-table entry, growing the table as CPython's array does (1/16 more; a locked
 * pool's by a chunk), or -ENOSPC / -ENOMEM with nothing changed. */
static int reserve_entry(struct zs_pool *pool, struct size_class *class, struct zs_fault *fault)
{
    if (class->free_entry)
        return 0;
    if (!class->huge && (class->nr_handles << HANDLE_CLASS_BITS | class->spec.index) > MAX_HANDLE) {
        set_fault(fault, ZS_FAULT_NO_HANDLE, 0);
        if (fault)
            fault->obj_size = class->spec.size;
        return -ENOSPC;
    }
    if (class->nr_handles < class->max_handles)
        return 0;
    if (class->chunks)
        return grow_chunks(pool, class, fault);
    uint64_t max = class->max_handles + (class->max_handles >> 4) + 8;
    int64_t *handles = realloc(class->handles, max * sizeof(*handles));
    if (!handles) {
        set_fault(fault, ZS_FAULT_NO_MEMORY, 0);
        return -ENOMEM;
    }
    if (!class->handles)
        handles[0] = 0;
    class->handles = handles;
    class->max_handles = max;
    return 0;
}

/* record_obj for a new object: a handle-table entry for location `loc` (reserved before). */
static uint64_t alloc_handle(struct size_class *class, uint64_t loc)
{
    uint64_t entry = class->free_entry;
    if (entry) {
        class->free_entry = (uint64_t)(-1 - *table_entry(class, entry));
    } else {
        entry = class->nr_handles++;
    }
    *table_entry(class, entry) = (int64_t)loc;
    return entry << HANDLE_CLASS_BITS | class->spec.index;
}

static void free_handle(struct size_class *class, uint64_t handle)
{
    uint64_t entry = handle >> HANDLE_CLASS_BITS;
    *table_entry(class, entry) = -1 - (int64_t)class->free_entry;
    class->free_entry = entry;
}

/* -- allocation and free (under class->lock) --------------------------------------------------- */

/* obj_malloc: an object of `size` bytes and its handle; `*off` is where its payload starts.
 * Takes from the fullest non-full zspage, and carves a new one only when none has room. */
static int obj_malloc(struct zs_pool *pool, struct size_class *class, uint32_t size,
                      uint64_t *handle, uint64_t *payload, struct zs_fault *fault)
{
    int err = reserve_entry(pool, class, fault);
    if (err)
        return err;
    uint64_t off, loc;
    if (class->huge) {
        uint32_t frame = 0;
        pthread_mutex_lock(&pool->page_lock);
        err = alloc_chain(pool, 1, &frame, fault);
        pthread_mutex_unlock(&pool->page_lock);
        if (err)
            return err;
        off = frame_offset(frame);
        loc = (uint64_t)size << LOC_SHIFT | off;
        class->nr_zspages[ZS_INUSE_RATIO_100]++;
        class->obj_allocated++;
        *handle = alloc_handle(class, loc);
        *payload = off;
    } else {
        uint32_t zid;
        int group = 0;
        if (class->fullness_mask) {
            group = 31 - __builtin_clz(class->fullness_mask);
            zid = class->fullness_list[group];
        } else if ((err = alloc_zspage(pool, class, &zid, fault)) != 0) {
            return err;
        }
        off = take_object(pool, class, zid);
        pool->zspages[zid].inuse++;
        fix_fullness_group(pool, class, zid, group);
        loc = (uint64_t)zid << LOC_SHIFT | off;
        *handle = alloc_handle(class, loc);
        *header_word(pool, off) = (uint64_t)size << HDR_SIZE_SHIFT
                                  | *handle << HDR_HANDLE_SHIFT | OBJ_ALLOCATED_TAG;
        *payload = off + ZS_HANDLE_SIZE;
    }
    class->obj_used++;
    return 0;
}

/* obj_free + fix_fullness_group: -EINVAL / -EIO with nothing changed. `*due`: a batch of
 * frames is to be released (release_frames, once the class lock is dropped). */
static int obj_free(struct zs_pool *pool, struct size_class *class, uint64_t handle,
                    struct zs_fault *fault, bool *due)
{
    uint64_t loc, hdr;
    int err = handle_to_location(class, handle, &loc, fault);
    if (err)
        return err;
    uint64_t off = loc & LOC_OFF_MASK;
    if (class->huge) {
        free_handle(class, handle);
        class->nr_zspages[ZS_INUSE_RATIO_100]--;
        class->obj_allocated--;
        class->obj_used--;
        pthread_mutex_lock(&pool->page_lock);
        *due = free_chain(pool, (uint32_t)(off >> PAGE_SHIFT));
        pthread_mutex_unlock(&pool->page_lock);
        return 0;
    }
    if ((err = obj_header(pool, class, handle, off, &hdr, fault)) != 0)
        return err;
    free_handle(class, handle);
    uint32_t zid = (uint32_t)(loc >> LOC_SHIFT);
    put_object(pool, zid, off);
    int group = get_fullness_group(class, pool->zspages[zid].inuse--);
    class->obj_used--;
    if (fix_fullness_group(pool, class, zid, group) == ZS_INUSE_RATIO_0)
        *due = free_zspage(pool, class, zid);
    return 0;
}

/* Copy the object at `off` to `payload` (at least ZS_MAX_ALLOC_SIZE bytes); its size, or
 * -EINVAL / -EIO. */
static int obj_load(struct zs_pool *pool, struct size_class *class, uint64_t handle,
                    unsigned char *dst, struct zs_fault *fault)
{
    uint64_t loc, hdr;
    int err = handle_to_location(class, handle, &loc, fault);
    if (err)
        return err;
    uint64_t off = loc & LOC_OFF_MASK;
    if (class->huge) {
        uint32_t size = (uint32_t)(loc >> LOC_SHIFT);
        memcpy(dst, pool->arena + off, size);
        return (int)size;
    }
    if ((err = obj_header(pool, class, handle, off, &hdr, fault)) != 0)
        return err;
    uint32_t size = (uint32_t)(hdr >> HDR_SIZE_SHIFT);
    obj_read(pool, off + ZS_HANDLE_SIZE, dst, size);
    return (int)size;
}

/* A batch's class lock: switched only when the class changes. */
static void switch_class(struct size_class **locked, struct size_class *class)
{
    if (*locked == class)
        return;
    if (*locked)
        pthread_mutex_unlock(&(*locked)->lock);
    if (class)
        pthread_mutex_lock(&class->lock);
    *locked = class;
}

static int bad_size(uint32_t size, struct zs_fault *fault)
{
    if (size >= 1 && size <= ZS_MAX_ALLOC_SIZE)
        return 0;
    set_fault(fault, ZS_FAULT_BAD_SIZE, 0);
    if (fault)
        fault->size = size;
    return -EINVAL;
}

/* -- the API ---------------------------------------------------------------------------------- */

int zs_store_many(struct zs_pool *pool, size_t n, const unsigned char *const *src,
                  const uint32_t *size, uint64_t *handles, struct zs_fault *fault)
{
    struct size_class *locked = NULL;
    size_t i;
    int err = 0;
    for (i = 0; i < n; i++) {
        if ((err = bad_size(size[i], fault)) != 0)
            break;
        struct size_class *class = size_to_class(pool, size[i]);
        uint64_t payload;
        switch_class(&locked, class);
        if ((err = obj_malloc(pool, class, size[i], &handles[i], &payload, fault)) != 0)
            break;
        obj_write(pool, payload, src[i], size[i]);
    }
    switch_class(&locked, NULL);
    if (!err)
        return 0;
    if (fault)
        fault->index = i;
    zs_free_many(pool, i, handles, NULL); /* all or nothing */
    return err;
}

int zs_malloc(struct zs_pool *pool, uint32_t size, uint64_t *handle, struct zs_fault *fault)
{
    int err = bad_size(size, fault);
    if (err)
        return err;
    struct size_class *class = size_to_class(pool, size);
    uint64_t payload;
    pthread_mutex_lock(&class->lock);
    err = obj_malloc(pool, class, size, handle, &payload, fault);
    pthread_mutex_unlock(&class->lock);
    return err;
}

int zs_write(struct zs_pool *pool, uint64_t handle, const void *src, uint32_t n,
             struct zs_fault *fault)
{
    struct size_class *class = handle_to_class(pool, handle, fault);
    if (!class)
        return -EINVAL;
    uint64_t loc, hdr;
    pthread_mutex_lock(&class->lock);
    int err = handle_to_location(class, handle, &loc, fault);
    if (err)
        goto out;
    uint64_t off = loc & LOC_OFF_MASK;
    uint32_t size;
    if (class->huge) {
        size = (uint32_t)(loc >> LOC_SHIFT);
    } else {
        if ((err = obj_header(pool, class, handle, off, &hdr, fault)) != 0)
            goto out;
        size = (uint32_t)(hdr >> HDR_SIZE_SHIFT);
        off += ZS_HANDLE_SIZE;
    }
    if (n > size) {
        set_fault(fault, ZS_FAULT_TOO_LONG, handle);
        if (fault) {
            fault->size = n;
            fault->obj_size = size;
        }
        err = -E2BIG;
        goto out;
    }
    obj_write(pool, off, src, n);
out:
    pthread_mutex_unlock(&class->lock);
    return err;
}

int zs_load_many(struct zs_pool *pool, size_t n, const uint64_t *handles,
                 unsigned char *const *dst, uint32_t *size, struct zs_fault *fault)
{
    struct size_class *locked = NULL;
    int got = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        struct size_class *class = handle_to_class(pool, handles[i], fault);
        if (!class) {
            got = -EINVAL;
            break;
        }
        switch_class(&locked, class);
        if ((got = obj_load(pool, class, handles[i], dst[i], fault)) < 0)
            break;
        size[i] = (uint32_t)got;
    }
    switch_class(&locked, NULL);
    if (fault)
        fault->index = i;
    return got < 0 ? got : 0;
}

int zs_load(struct zs_pool *pool, uint64_t handle, unsigned char *dst, struct zs_fault *fault)
{
    uint32_t size;
    int err = zs_load_many(pool, 1, &handle, &dst, &size, fault);
    return err ? err : (int)size;
}

int zs_free_many(struct zs_pool *pool, size_t n, const uint64_t *handles,
                 struct zs_fault *fault)
{
    struct size_class *locked = NULL;
    int err = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        struct size_class *class = handle_to_class(pool, handles[i], fault);
        if (!class) {
            err = -EINVAL;
            break;
        }
        switch_class(&locked, class);
        bool due = false;
        if ((err = obj_free(pool, class, handles[i], fault, &due)) != 0)
            break;
        if (due) { /* never madvise under a lock */
            switch_class(&locked, NULL);
            release_frames(pool, pool->release_batch);
        }
    }
    switch_class(&locked, NULL);
    if (fault)
        fault->index = i;
    return err;
}

int zs_object_size(struct zs_pool *pool, uint64_t handle, struct zs_fault *fault)
{
    struct size_class *class = handle_to_class(pool, handle, fault);
    if (!class)
        return -EINVAL;
    uint64_t loc, hdr;
    pthread_mutex_lock(&class->lock);
    int ret = handle_to_location(class, handle, &loc, fault);
    if (!ret) {
        if (class->huge)
            ret = (int)(loc >> LOC_SHIFT);
        else if ((ret = obj_header(pool, class, handle, loc & LOC_OFF_MASK, &hdr, fault)) == 0)
            ret = (int)(hdr >> HDR_SIZE_SHIFT);
    }
    pthread_mutex_unlock(&class->lock);
    return ret;
}

int zs_locate(struct zs_pool *pool, uint64_t handle, uint32_t *zspage, uint64_t *offset,
              struct zs_fault *fault)
{
    struct size_class *class = handle_to_class(pool, handle, fault);
    if (!class)
        return -EINVAL;
    uint64_t loc;
    pthread_mutex_lock(&class->lock);
    int err = handle_to_location(class, handle, &loc, fault);
    pthread_mutex_unlock(&class->lock);
    if (err)
        return err;
    *zspage = class->huge ? 0 : (uint32_t)(loc >> LOC_SHIFT);
    *offset = loc & LOC_OFF_MASK;
    return 0;
}

uint64_t zs_get_total_pages(struct zs_pool *pool)
{
    return READ_ONCE(pool->pages_allocated);
}

uint64_t zs_get_peak_pages(struct zs_pool *pool)
{
    return READ_ONCE(pool->pages_peak);
}

unsigned zs_huge_class_size(struct zs_pool *pool)
{
    return pool->huge_class_size;
}

int zs_lookup_class_index(struct zs_pool *pool, unsigned size)
{
    if (bad_size(size, NULL))
        return -EINVAL;
    return (int)size_to_class(pool, size)->spec.index;
}

unsigned zs_nr_classes(struct zs_pool *pool)
{
    return pool->nr_classes;
}

const struct zs_class_spec *zs_class_spec(struct zs_pool *pool, unsigned i)
{
    return i < pool->nr_classes ? &pool->classes[i].spec : NULL;
}

/* -- compaction (compaction.py) ----------------------------------------------------------------- */

/* Move `src`'s object at `off` (header included) to a free object of `dst` and repoint its
 * handle: zs_object_copy + record_obj. */
static void migrate_object(struct zs_pool *pool, struct size_class *class, uint64_t off,
                           uint32_t dst)
{
    unsigned char buf[ZS_HANDLE_SIZE + ZS_MAX_ALLOC_SIZE];
    uint64_t hdr = *header_word(pool, off);
    size_t n = ZS_HANDLE_SIZE + (hdr >> HDR_SIZE_SHIFT);
    uint64_t dst_off = take_object(pool, class, dst);
    pool->zspages[dst].inuse++;
    obj_read(pool, off, buf, n);
    obj_write(pool, dst_off, buf, n);
    uint64_t handle = (hdr & HDR_HANDLE_MASK) >> HDR_HANDLE_SHIFT;
    *table_entry(class, handle >> HANDLE_CLASS_BITS) =
        (int64_t)((uint64_t)dst << LOC_SHIFT | dst_off);
    WRITE_ONCE(pool->bytes_moved, pool->bytes_moved + n); /* single flight: one writer */
}

/* migrate_zspage: move `src`'s live objects into `dst` in index order until `dst` is full or
 * `src` empty. Only objects below the fresh cursor have ever been handed out. */
static void migrate_zspage(struct zs_pool *pool, struct size_class *class, uint32_t src,
                           uint32_t dst)
{
    struct zspage *s = &pool->zspages[src], *d = &pool->zspages[dst];
    unsigned size = class->spec.size, objs = class->spec.objs_per_zspage;
    unsigned carved = objs - s->fresh_left;
    uint32_t frame = s->first;
    unsigned co = 0; /* offset of the object in the chain; frame holds [base, base + 4096) */
    unsigned base = 0;
    for (unsigned i = 0; i < carved; i++, co += size) {
        while (co >= base + PAGE_SIZE) {
            frame = pool->links[frame];
            base += PAGE_SIZE;
        }
        uint64_t off = frame_offset(frame) + (co - base);
        if (!(*header_word(pool, off) & OBJ_ALLOCATED_TAG))
            continue;
        migrate_object(pool, class, off, dst);
        put_object(pool, src, off);
        s->inuse--;
        if (d->inuse == objs || !s->inuse)
            break;
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* __zs_compact for one class: one source zspage per slice, the class lock dropped between
 * slices. dst = fullest non-full zspage, src = emptiest; both isolated while objects move. */
static uint64_t compact_class(struct zs_pool *pool, struct size_class *class, bool gentle)
{
    uint64_t freed = 0;
    for (;;) {
        uint64_t t0 = gentle ? now_ns() : 0;
        pthread_mutex_lock(&class->lock);
        if (!class_can_compact(class) || !class->fullness_mask)
            break;
        int dst_group = 31 - __builtin_clz(class->fullness_mask);
        uint32_t dst = class->fullness_list[dst_group];
        remove_zspage(pool, class, dst, dst_group); /* isolate_dst_zspage */
        if (!class->fullness_mask) {
            insert_zspage(pool, class, dst, dst_group);
            break;
        }
        int src_group = __builtin_ctz(class->fullness_mask);
        uint32_t src = class->fullness_list[src_group];
        remove_zspage(pool, class, src, src_group); /* isolate_src_zspage */
        migrate_zspage(pool, class, src, dst);
        /* putback: the source only lost objects, the destination only gained them */
        bool due = false;
        if (fix_fullness_group(pool, class, src, 0) == ZS_INUSE_RATIO_0) {
            due = free_zspage(pool, class, src);
            freed += class->spec.pages_per_zspage;
        }
        fix_fullness_group(pool, class, dst, 0);
        pthread_mutex_unlock(&class->lock);
        if (gentle) {
            uint64_t slice = now_ns() - t0;
            if (slice > pool->max_slice_ns)
                WRITE_ONCE(pool->max_slice_ns, slice);
        }
        if (due)
            release_frames(pool, pool->release_batch);
        if (gentle)
            sched_yield(); /* a waiting thread takes the class now */
    }
    pthread_mutex_unlock(&class->lock);
    return freed;
}

uint64_t zs_compact(struct zs_pool *pool, int gentle)
{
    if (pthread_mutex_trylock(&pool->compact_lock) != 0)
        return 0;
    uint64_t freed = 0;
    for (unsigned i = pool->nr_classes; i-- > 0;) /* largest first: fewest moves per frame */
        if (!pool->classes[i].huge)
            freed += compact_class(pool, &pool->classes[i], gentle);
    WRITE_ONCE(pool->pages_compacted, pool->pages_compacted + freed);
    release_frames(pool, 1); /* all of them: compaction is when RSS should fall */
    pthread_mutex_unlock(&pool->compact_lock);
    return freed;
}

uint64_t zs_can_compact(struct zs_pool *pool)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < pool->nr_classes; i++) {
        struct size_class *class = &pool->classes[i];
        pthread_mutex_lock(&class->lock);
        total += class_can_compact(class);
        pthread_mutex_unlock(&class->lock);
    }
    return total;
}

/* -- statistics and checks ---------------------------------------------------------------------- */

void zs_pool_stats(struct zs_pool *pool, struct zs_pool_stats *stats, struct zs_class_stats *rows)
{
    uint64_t objects = 0, handle_bytes = 0;
    for (unsigned i = 0; i < pool->nr_classes; i++) {
        struct size_class *class = &pool->classes[i];
        pthread_mutex_lock(&class->lock);
        if (rows) {
            struct zs_class_stats *row = &rows[i];
            row->spec = class->spec;
            for (int g = 0; g < ZS_NR_FULLNESS; g++)
                row->fullness[g] = class->nr_zspages[g + 1];
            row->obj_allocated = class->obj_allocated;
            row->obj_used = class->obj_used;
            row->pages_used = class->obj_allocated / class->spec.objs_per_zspage
                              * class->spec.pages_per_zspage;
            row->freeable = class_can_compact(class);
        }
        objects += class->obj_used;
        handle_bytes += class->max_handles * sizeof(int64_t);
        pthread_mutex_unlock(&class->lock);
    }
    pthread_mutex_lock(&pool->page_lock);
    stats->total_pages = pool->pages_allocated;
    stats->frames_cached = pool->nr_cached + pool->releasing;
    stats->frames_reserved = pool->max_frames;
    stats->releases = pool->releases;
    stats->metadata_bytes = handle_bytes + (uint64_t)pool->zs_top * sizeof(struct zspage)
                            + (uint64_t)pool->top * sizeof(*pool->links) + pool->dir_bytes;
    pthread_mutex_unlock(&pool->page_lock);
    stats->pages_compacted = READ_ONCE(pool->pages_compacted);
    stats->bytes_moved = READ_ONCE(pool->bytes_moved);
    stats->max_slice_ns = READ_ONCE(pool->max_slice_ns);
    stats->objects = objects;
    stats->huge_class_size = pool->huge_class_size;
    stats->nr_classes = pool->nr_classes;
}

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            snprintf(msg, len, __VA_ARGS__);                                                   \
            return -EIO;                                                                       \
        }                                                                                      \
    } while (0)

/* The checks of one non-huge class, given its live objects per zspage in `per_zspage`. */
static int check_zspages(struct zs_pool *pool, struct size_class *class, uint32_t *per_zspage,
                         uint8_t *listed, uint32_t zs_top, uint64_t *nr, char *msg, size_t len)
{
    unsigned size = class->spec.size, objs = class->spec.objs_per_zspage;
    uint64_t full = 0;
    for (int group = 1; group <= ZS_INUSE_RATIO_99; group++) {
        uint32_t zid = class->fullness_list[group], prev = 0;
        uint64_t count = 0;
        CHECK(!zid == !(class->fullness_mask & (1u << group)), "class %u: group %d mask bit",
              size, group);
        for (; zid; prev = zid, zid = pool->zspages[zid].next, count++) {
            CHECK(zid < zs_top, "class %u: zspage id %u out of range", size, zid);
            CHECK(pool->zspages[zid].prev == prev, "class %u: broken back link at %u", size, zid);
            CHECK(!listed[zid], "class %u: zspage %u listed twice", size, zid);
            listed[zid] = 1;
            CHECK(get_fullness_group(class, pool->zspages[zid].inuse) == group,
                  "class %u: zspage %u filed in the wrong group", size, zid);
        }
        CHECK(count == class->nr_zspages[group], "class %u: group %d holds %lu, counted %lu",
              size, group, (unsigned long)count, (unsigned long)class->nr_zspages[group]);
    }
    for (uint32_t zid = 1; zid < zs_top; zid++) {
        uint32_t n = per_zspage[zid];
        if (!n) {
            CHECK(!listed[zid], "class %u: empty zspage %u was kept", size, zid);
            continue;
        }
        struct zspage *zspage = &pool->zspages[zid];
        full += n == objs;
        (*nr)++;
        CHECK(zspage->inuse == n, "class %u: zspage %u inuse %u, %u live handles", size, zid,
              zspage->inuse, n);
        CHECK(listed[zid] == (n < objs), "class %u: zspage %u listed wrongly", size, zid);
        unsigned free = 0;
        for (uint64_t off = zspage->freeobj; off; off = *header_word(pool, off) >> 1, free++) {
            CHECK(free < objs, "class %u: zspage %u free list loops", size, zid);
            CHECK(!(*header_word(pool, off) & OBJ_ALLOCATED_TAG),
                  "class %u: allocated object on zspage %u's free list", size, zid);
        }
        CHECK(free + zspage->fresh_left == objs - n, "class %u: zspage %u loses objects", size,
              zid);
        unsigned chain = 0, carved = objs - zspage->fresh_left, allocated = 0;
        uint32_t frame = zspage->first;
        unsigned base = 0, co = 0;
        for (unsigned i = 0; i <= carved; i++, co = i * size) {
            while (co >= base + PAGE_SIZE && frame) {
                frame = pool->links[frame];
                base += PAGE_SIZE;
            }
            CHECK(frame || (i == carved && !zspage->fresh_left), "class %u: zspage %u too short",
                  size, zid);
            if (i == carved) {
                CHECK(!zspage->fresh_left || zspage->fresh == frame_offset(frame) + (co - base),
                      "class %u: zspage %u fresh cursor out of place", size, zid);
                break;
            }
            allocated += *header_word(pool, frame_offset(frame) + (co - base)) & OBJ_ALLOCATED_TAG;
        }
        CHECK(allocated == n, "class %u: zspage %u holds %u tagged objects, %u live", size, zid,
              allocated, n);
        for (frame = zspage->first; frame && chain <= ZS_MAX_CHAIN_SIZE; frame = pool->links[frame])
            chain++;
        CHECK(chain == class->spec.pages_per_zspage, "class %u: zspage %u chains %u frames",
              size, zid, chain);
    }
    CHECK(full == class->nr_zspages[ZS_INUSE_RATIO_100], "class %u: %lu full zspages, counted %lu",
          size, (unsigned long)full, (unsigned long)class->nr_zspages[ZS_INUSE_RATIO_100]);
    CHECK(class->obj_allocated == *nr * objs, "class %u: obj_allocated %lu for %lu zspages",
          size, (unsigned long)class->obj_allocated, (unsigned long)*nr);
    return 0;
}

static int check_class(struct zs_pool *pool, struct size_class *class, uint32_t *per_zspage,
                       uint8_t *listed, uint32_t zs_top, uint64_t *frames, uint64_t *zspages,
                       char *msg, size_t len)
{
    unsigned size = class->spec.size;
    uint64_t live = 0, free = 0;
    for (uint64_t entry = 1; entry < class->nr_handles; entry++) {
        if (*table_entry(class, entry) < 0)
            continue;
        uint64_t loc = (uint64_t)*table_entry(class, entry), off = loc & LOC_OFF_MASK;
        uint64_t handle = entry << HANDLE_CLASS_BITS | class->spec.index;
        live++;
        CHECK(off >> PAGE_SHIFT && off >> PAGE_SHIFT < pool->max_frames,
              "class %u: handle %lu at arena offset %lu", size, (unsigned long)handle,
              (unsigned long)off);
        if (class->huge) {
            CHECK((loc >> LOC_SHIFT) >= 1 && (loc >> LOC_SHIFT) <= ZS_MAX_ALLOC_SIZE,
                  "class %u: huge handle %lu has size %lu", size, (unsigned long)handle,
                  (unsigned long)(loc >> LOC_SHIFT));
            continue;
        }
        uint32_t zid = (uint32_t)(loc >> LOC_SHIFT);
        CHECK(zid && zid < zs_top, "class %u: handle %lu in zspage %u", size,
              (unsigned long)handle, zid);
        uint64_t hdr = *header_word(pool, off);
        CHECK((hdr & HDR_HANDLE_MASK) == (handle << HDR_HANDLE_SHIFT | OBJ_ALLOCATED_TAG),
              "class %u: header %#lx does not name its handle %lu", size, (unsigned long)hdr,
              (unsigned long)handle);
        per_zspage[zid]++;
    }
    for (uint64_t entry = class->free_entry; entry;
         entry = (uint64_t)(-1 - *table_entry(class, entry))) {
        CHECK(entry < class->nr_handles && *table_entry(class, entry) < 0
                  && free < class->nr_handles,
              "class %u: broken free handle list at entry %lu", size, (unsigned long)entry);
        free++;
    }
    CHECK(live + free + 1 == class->nr_handles, "class %u: %lu live + %lu free handles of %lu",
          size, (unsigned long)live, (unsigned long)free, (unsigned long)class->nr_handles);
    CHECK(class->obj_used == live, "class %u: obj_used %lu, %lu live handles", size,
          (unsigned long)class->obj_used, (unsigned long)live);
    if (class->huge) {
        uint64_t listed_zspages = 0;
        for (int g = 0; g < ZS_INUSE_RATIO_100; g++)
            listed_zspages += class->nr_zspages[g];
        CHECK(class->nr_zspages[ZS_INUSE_RATIO_100] == live && class->obj_allocated == live
                  && !listed_zspages && !class->fullness_mask,
              "huge class %u: counters disagree", size);
        *frames += live;
        return 0;
    }
    uint64_t nr = 0;
    int err = check_zspages(pool, class, per_zspage, listed, zs_top, &nr, msg, len);
    *frames += nr * class->spec.pages_per_zspage;
    *zspages += nr;
    return err;
}

int zs_check(struct zs_pool *pool, char *msg, size_t len)
{
    pthread_mutex_lock(&pool->page_lock);
    uint32_t zs_top = pool->zs_top;
    pthread_mutex_unlock(&pool->page_lock);
    uint32_t *per_zspage = calloc(zs_top, sizeof(*per_zspage));
    uint8_t *listed = calloc(zs_top, 1);
    uint64_t frames = 0, zspages = 0;
    int err = 0;
    if (!per_zspage || !listed) {
        snprintf(msg, len, "out of memory");
        err = -ENOMEM;
    }
    for (unsigned i = 0; !err && i < pool->nr_classes; i++) {
        struct size_class *class = &pool->classes[i];
        memset(per_zspage, 0, zs_top * sizeof(*per_zspage));
        memset(listed, 0, zs_top);
        pthread_mutex_lock(&class->lock);
        err = check_class(pool, class, per_zspage, listed, zs_top, &frames, &zspages, msg, len);
        pthread_mutex_unlock(&class->lock);
    }
    free(per_zspage);
    free(listed);
    if (err)
        return err;
    pthread_mutex_lock(&pool->page_lock);
    uint64_t allocated = pool->pages_allocated;
    uint64_t idle = (uint64_t)pool->free_frames + pool->nr_cached + pool->releasing;
    uint32_t top = pool->top, count = pool->zs_count;
    uint64_t tables = pool->table_frames;
    pthread_mutex_unlock(&pool->page_lock);
    uint64_t chunks = 0;
    for (unsigned i = 0; i < pool->nr_classes; i++)
        if (pool->classes[i].chunks)
            chunks += pool->classes[i].max_handles >> HCHUNK_SHIFT;
    CHECK(count == zspages, "%u zspages allocated, %lu found", count, (unsigned long)zspages);
    CHECK(allocated == frames, "total_pages %lu, zspages hold %lu frames",
          (unsigned long)allocated, (unsigned long)frames);
    CHECK(tables == chunks, "%lu frames hold handle tables, %lu chunks found",
          (unsigned long)tables, (unsigned long)chunks);
    CHECK(top - 1 == allocated + idle + tables, "%u frames handed out, %lu held + %lu free + "
          "%lu tables", top - 1, (unsigned long)allocated, (unsigned long)idle,
          (unsigned long)tables);
    return 0;
}

/* -- creation --------------------------------------------------------------------------------- */

static void *reserve(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

struct zs_pool *zs_create_pool(uint64_t max_bytes, int chain, int release_batch)
{
    if (!max_bytes || chain < ZS_MIN_CHAIN_SIZE || chain > ZS_MAX_CHAIN_SIZE
        || max_bytes > (uint64_t)(ZS_MAX_FRAMES - 1) * PAGE_SIZE) {
        errno = EINVAL;
        return NULL;
    }
    struct zs_pool *pool = aligned_alloc(64, sizeof(*pool));
    if (!pool) {
        errno = ENOMEM;
        return NULL;
    }
    memset(pool, 0, sizeof(*pool));
    pool->max_frames = (uint32_t)((max_bytes + PAGE_SIZE - 1) / PAGE_SIZE + 1); /* + guard */
    pool->map_frames = pool->max_frames;
    pool->release_batch = release_batch < 1 ? 1 : (unsigned)release_batch;
    pool->top = 1;
    pool->zs_top = 1;
    pool->arena = reserve((size_t)pool->max_frames << PAGE_SHIFT);
    pool->links = reserve((size_t)pool->max_frames * sizeof(*pool->links));
    pool->zspages = reserve((size_t)pool->max_frames * sizeof(*pool->zspages));
    /* free_chain adds a whole chain before a full cache is released */
    pool->cache_size = pool->release_batch + ZS_MAX_CHAIN_SIZE;
    pool->cache = malloc(pool->cache_size * sizeof(*pool->cache));
    pool->spare = malloc(pool->cache_size * sizeof(*pool->spare));
    if (!pool->arena || !pool->links || !pool->zspages || !pool->cache || !pool->spare
        || init_classes(pool, (unsigned)chain) != 0) {
        zs_destroy_pool(pool);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&pool->page_lock, NULL);
    pthread_cond_init(&pool->released, NULL);
    pthread_mutex_init(&pool->compact_lock, NULL);
    return pool;
}

/* Objects of `class` that `frames` frames can hold: the most handles it can ever need. */
static uint64_t class_capacity(const struct size_class *class, uint64_t frames)
{
    if (class->huge)
        return frames;
    return frames / class->spec.pages_per_zspage * class->spec.objs_per_zspage;
}

int zs_lock_frames(struct zs_pool *pool, uint64_t frames)
{
    if (!frames || frames > (uint64_t)pool->map_frames - 1)
        return -EINVAL;
    pthread_mutex_lock(&pool->page_lock);
    bool fresh = !pool->locked && pool->top == 1;
    pthread_mutex_unlock(&pool->page_lock);
    if (!fresh)
        return -EBUSY;
    /* one directory mapping for every class, sized for all the objects the frames can hold */
    uint64_t total = 0;
    uint64_t room[ZS_MAX_CLASSES];
    for (unsigned i = 0; i < pool->nr_classes; i++) {
        uint64_t entries = class_capacity(&pool->classes[i], frames) + 1; /* + entry 0 */
        room[i] = (entries + HCHUNK_MASK) >> HCHUNK_SHIFT;
        total += room[i];
    }
    size_t dir_bytes = (size_t)total * sizeof(int64_t *);
    int64_t **dir = reserve(dir_bytes);
    if (!dir)
        return -ENOMEM;
    struct {
        void *addr;
        size_t len;
    } part[] = {
        {pool->arena + PAGE_SIZE, (size_t)frames << PAGE_SHIFT},
        {pool->links, (size_t)(frames + 1) * sizeof(*pool->links)},
        {pool->zspages, (size_t)(frames + 1) * sizeof(*pool->zspages)}, /* ids 1..frames */
        {dir, dir_bytes},
    };
    size_t nparts = sizeof(part) / sizeof(part[0]);
    for (size_t k = 0; k < nparts; k++) {
        if (mlock(part[k].addr, part[k].len) == 0) /* faults every page in */
            continue;
        int err = errno;
        while (k-- > 0) { /* give back what was taken: the pool is as it was */
            munlock(part[k].addr, part[k].len);
            (void)madvise(part[k].addr, part[k].len, MADV_DONTNEED);
        }
        munmap(dir, dir_bytes);
        return -err;
    }
    uint64_t at = 0;
    for (unsigned i = 0; i < pool->nr_classes; i++) {
        struct size_class *class = &pool->classes[i];
        pthread_mutex_lock(&class->lock);
        class->chunks = dir + at;
        class->max_chunks = room[i];
        pthread_mutex_unlock(&class->lock);
        at += room[i];
    }
    pthread_mutex_lock(&pool->page_lock);
    pool->dir = dir;
    pool->dir_bytes = dir_bytes;
    pool->max_frames = (uint32_t)(frames + 1);
    WRITE_ONCE(pool->locked_frames, frames);
    pool->locked = true;
    pthread_mutex_unlock(&pool->page_lock);
    return 0;
}

uint64_t zs_locked_frames(struct zs_pool *pool)
{
    return READ_ONCE(pool->locked_frames);
}

void zs_destroy_pool(struct zs_pool *pool)
{
    if (!pool)
        return;
    if (pool->arena)
        munmap(pool->arena, (size_t)pool->map_frames << PAGE_SHIFT);
    if (pool->links)
        munmap(pool->links, (size_t)pool->map_frames * sizeof(*pool->links));
    if (pool->zspages)
        munmap(pool->zspages, (size_t)pool->map_frames * sizeof(*pool->zspages));
    if (pool->dir)
        munmap(pool->dir, pool->dir_bytes);
    if (pool->classes) {
        for (unsigned i = 0; i < pool->nr_classes; i++) {
            free(pool->classes[i].handles);
            pthread_mutex_destroy(&pool->classes[i].lock);
        }
        free(pool->classes);
        pthread_mutex_destroy(&pool->page_lock);
        pthread_cond_destroy(&pool->released);
        pthread_mutex_destroy(&pool->compact_lock);
    }
    free(pool->cache);
    free(pool->spare);
    free(pool);
}

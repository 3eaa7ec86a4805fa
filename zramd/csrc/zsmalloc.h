/*
 * zsmalloc.h: zramd's zsmalloc pool in C, with no Python in it.
 *
 * A port of zramd/pool.py (the reference) that owns its memory and its pthread mutexes, so
 * every call below is safe from many threads at once with no GIL and N threads use N cores.
 * The same sequence of calls on this pool and on pool.py's ZsPool gives the same handles,
 * the same object locations, the same per-class statistics and the same frame count (the
 * differential test holds both to that).
 *
 * Vocabulary (mm/zsmalloc.c's): a *handle* is what a caller holds; it names an entry of its
 * size class's handle table, which records the object's *location* (zspage id and arena
 * offset), so compaction moves objects without the caller's knowledge. A handle is never 0.
 *
 * Errors: functions that can fail return 0 (or a size) on success and a negative errno on
 * failure, and fill the optional `struct zs_fault` (pass NULL if the detail is not needed):
 *
 *   -EINVAL  a size outside 1..ZS_MAX_ALLOC_SIZE, or a handle that is not allocated
 *   -EIO     an object whose header does not name its handle: corruption, nothing done
 *   -ENOSPC  the arena has no frame left (or a class has no handle left)
 *   -ENOMEM  a handle table could not grow (malloc failed)
 *   -E2BIG   zs_write of more bytes than the object holds
 *
 * Locks (taken inside; no caller holds any): a mutex per size class, a leaf page mutex for
 * frames and zspage ids, and a compaction mutex. No function holds two class mutexes, and
 * none calls out while holding one. A batch call switches class mutexes only when the class
 * changes from one element to the next.
 */
#ifndef ZRAMD_ZSMALLOC_H
#define ZRAMD_ZSMALLOC_H

#include <stddef.h>
#include <stdint.h>

#define ZS_PAGE_SHIFT 12
#define ZS_PAGE_SIZE (1u << ZS_PAGE_SHIFT)
#define ZS_MAX_ALLOC_SIZE ZS_PAGE_SIZE /* largest object, in bytes */
#define ZS_MIN_CHAIN_SIZE 4            /* CONFIG_ZSMALLOC_CHAIN_SIZE's range */
#define ZS_MAX_CHAIN_SIZE 16
#define ZS_DEFAULT_CHAIN_SIZE 8
#define ZS_RELEASE_BATCH 64     /* freed frames kept resident before one batched madvise */
#define ZS_MAX_FRAMES (1u << 25) /* 128 GiB of frames: arena offsets fit in 37 bits */
#define ZS_NR_FULLNESS 11        /* reported fullness groups: 10 %, 20 %, ... 99 %, 100 % */
#define ZS_MAX_CLASSES 255

struct zs_pool;

/* Which check failed, with what the caller needs to name it in a message. */
enum zs_fault_kind {
    ZS_FAULT_NONE,
    ZS_FAULT_BAD_SIZE,      /* -EINVAL: .size outside 1..ZS_MAX_ALLOC_SIZE */
    ZS_FAULT_NOT_A_HANDLE,  /* -EINVAL: .handle names no size class (never returned) */
    ZS_FAULT_NOT_ALLOCATED, /* -EINVAL: .handle is free (freed, or never returned) */
    ZS_FAULT_BAD_HEADER,    /* -EIO: header .header at arena .offset, object size .obj_size */
    ZS_FAULT_ARENA_FULL,    /* -ENOSPC: .frames_needed, .frames_left of .frames_max */
    ZS_FAULT_NO_HANDLE,     /* -ENOSPC: class of object size .obj_size has no handle left */
    ZS_FAULT_NO_MEMORY,     /* -ENOMEM: a handle table could not grow */
    ZS_FAULT_TOO_LONG,      /* -E2BIG: .size bytes do not fit .handle's .obj_size bytes */
};

struct zs_fault {
    enum zs_fault_kind kind;
    size_t index;     /* batch calls: the element that failed (= elements done before it) */
    uint64_t handle;  /* the handle concerned */
    uint64_t offset;  /* arena offset of the object (BAD_HEADER) */
    uint64_t header;  /* header word found there (BAD_HEADER) */
    uint32_t size;    /* requested bytes (BAD_SIZE, TOO_LONG) */
    uint32_t obj_size; /* class size (BAD_HEADER, NO_HANDLE) or object size (TOO_LONG) */
    uint32_t frames_needed, frames_left, frames_max; /* ARENA_FULL */
};

/* The geometry of one size class; constant for the pool's life. */
struct zs_class_spec {
    unsigned index;            /* slot 0..254 of the largest size the class serves */
    unsigned size;             /* object size, the 8-byte header included (huge: 4096) */
    unsigned pages_per_zspage; /* frames chained into one zspage */
    unsigned objs_per_zspage;
};

/* One row of zsmalloc's debugfs `classes` table, consistent (taken under the class lock). */
struct zs_class_stats {
    struct zs_class_spec spec;
    uint64_t fullness[ZS_NR_FULLNESS]; /* zspages per group, 10 % .. 99 %, 100 % */
    uint64_t obj_allocated;            /* object slots in all zspages of the class */
    uint64_t obj_used;                 /* live objects */
    uint64_t pages_used;               /* obj_allocated / objs_per_zspage * pages_per_zspage */
    uint64_t freeable;                 /* frames compaction could free now (zs_can_compact) */
};

struct zs_pool_stats {
    uint64_t total_pages;     /* frames held by live zspages */
    uint64_t pages_compacted; /* frames freed by compaction since creation */
    uint64_t bytes_moved;     /* object bytes (headers included) copied by compaction */
    uint64_t max_slice_ns;    /* longest class-lock hold of a gentle compaction slice */
    uint64_t frames_cached;   /* freed frames still resident, awaiting a batched release */
    uint64_t frames_reserved; /* the arena's reservation, in frames (frame 0 included); a
                               * locked pool's cap (zs_lock_frames) */
    uint64_t releases;        /* madvise calls made to return frames */
    uint64_t metadata_bytes;  /* handle tables + zspage descriptors + frame link words */
    uint64_t objects;         /* live objects in all classes */
    unsigned huge_class_size;
    unsigned nr_classes;
};

/*
 * Create a pool of at most `max_bytes` of frames (1 .. (ZS_MAX_FRAMES - 1) * 4096; only
 * address space is reserved up front), with zspages of at most `chain` frames
 * (ZS_MIN_CHAIN_SIZE..ZS_MAX_CHAIN_SIZE), releasing freed frames to the OS in batches of
 * `release_batch` (values below 1 mean 1). Returns NULL with errno EINVAL (bad argument) or
 * ENOMEM (mmap or malloc failed).
 */
struct zs_pool *zs_create_pool(uint64_t max_bytes, int chain, int release_batch);

/* Unmap and free everything. No other call on the pool may be running or follow. */
void zs_destroy_pool(struct zs_pool *pool);

/*
 * Lock the pool into memory (a swap device's pool: no store may ever wait for the kernel to
 * find a page). Faults in and mlocks frames 1..`frames` of the arena with the metadata they
 * can need (their link words, as many zspage descriptors, and a directory of handle-table
 * chunks for every class), and caps the pool at those frames. From then on:
 *   - a store takes only locked frames; beyond them it fails with -ENOSPC at once, touching
 *     no new memory;
 *   - handle tables grow by one frame of the reserve at a time (512 handles), not by malloc;
 *     such frames stay with their class until the pool is destroyed and are not counted in
 *     zs_get_total_pages (as the kernel's handle cache is not);
 *   - freed frames are kept, locked, on the free list: nothing is ever given back to the OS.
 * Call it on a pool that has handed out no frame. 0, or -EINVAL (`frames` 0 or beyond the
 * arena), -EBUSY (already locked, or in use), or mlock's -ENOMEM / -EPERM / -EAGAIN
 * (RLIMIT_MEMLOCK, no CAP_IPC_LOCK, no memory), with the pool unchanged.
 */
int zs_lock_frames(struct zs_pool *pool, uint64_t frames);

/* Frames locked by zs_lock_frames (0: the pool is not locked). */
uint64_t zs_locked_frames(struct zs_pool *pool);

/*
 * Store `n` objects: `size[i]` bytes (1..ZS_MAX_ALLOC_SIZE) from `src[i]`, handles in order
 * into `handles[0..n)`. All or nothing: objects are stored in order, and when one cannot be
 * (-EINVAL bad size, -ENOSPC, -ENOMEM) those already stored are freed again, in order, and
 * `fault->index` names the one that failed.
 */
int zs_store_many(struct zs_pool *pool, size_t n, const unsigned char *const *src,
                  const uint32_t *size, uint64_t *handles, struct zs_fault *fault);

/* Allocate an object of `size` bytes (1..ZS_MAX_ALLOC_SIZE) whose contents are undefined
 * until written; 0 and `*handle`, or -EINVAL / -ENOSPC / -ENOMEM. */
int zs_malloc(struct zs_pool *pool, uint32_t size, uint64_t *handle, struct zs_fault *fault);

/* Write `n` bytes from `src` at the start of the object (at most its size: -E2BIG);
 * -EINVAL / -EIO for a bad handle or header, in which case nothing is written. */
int zs_write(struct zs_pool *pool, uint64_t handle, const void *src, uint32_t n,
             struct zs_fault *fault);

/*
 * Copy `n` objects into `dst[i]` (each at least ZS_MAX_ALLOC_SIZE bytes), their sizes into
 * `size[i]`. Each object is copied under its class lock, so a concurrent compaction never
 * shows a half-moved object. Stops at the first invalid handle (-EINVAL) or corrupt header
 * (-EIO); `fault->index` objects were copied before it.
 */
int zs_load_many(struct zs_pool *pool, size_t n, const uint64_t *handles,
                 unsigned char *const *dst, uint32_t *size, struct zs_fault *fault);

/* One object into `dst` (at least ZS_MAX_ALLOC_SIZE bytes): its size, or -EINVAL / -EIO. */
int zs_load(struct zs_pool *pool, uint64_t handle, unsigned char *dst, struct zs_fault *fault);

/* Free `n` objects in order. Stops at the first invalid handle (-EINVAL) or corrupt header
 * (-EIO), having freed the `fault->index` before it. */
int zs_free_many(struct zs_pool *pool, size_t n, const uint64_t *handles,
                 struct zs_fault *fault);

/* The size an object was allocated with, or -EINVAL / -EIO. */
int zs_object_size(struct zs_pool *pool, uint64_t handle, struct zs_fault *fault);

/* Where an object lives now: zspage id (0 for a huge object, which has a frame of its own)
 * and arena offset (of its header; of its frame for a huge object). 0 or -EINVAL. */
int zs_locate(struct zs_pool *pool, uint64_t handle, uint32_t *zspage, uint64_t *offset,
              struct zs_fault *fault);

/* Frames held by live zspages (zs_get_total_pages). One atomic load, no lock. */
uint64_t zs_get_total_pages(struct zs_pool *pool);
/* The most frames held at once since the pool was created (transient overshoots included). */
uint64_t zs_get_peak_pages(struct zs_pool *pool);

/* The smallest request stored in the huge class (raw, one frame per object). */
unsigned zs_huge_class_size(struct zs_pool *pool);

/* The slot index of the class a zs_malloc(size) lands in, or -EINVAL for a bad size. */
int zs_lookup_class_index(struct zs_pool *pool, unsigned size);

/* Distinct size classes, in ascending size, and the geometry of class `i` (0..nr-1). */
unsigned zs_nr_classes(struct zs_pool *pool);
const struct zs_class_spec *zs_class_spec(struct zs_pool *pool, unsigned i);

/*
 * zs_compact: move objects out of the emptiest zspages into the fullest so whole zspages
 * come free; returns frames freed. Single flight: 0 at once if another compaction runs.
 * Visits classes from the largest down and holds a class lock for one source zspage at a
 * time; `gentle` also yields the CPU between slices and records the longest slice
 * (zs_pool_stats.max_slice_ns). Freed frames go back to the OS before it returns.
 */
uint64_t zs_compact(struct zs_pool *pool, int gentle);

/* Frames compaction could free now, summed over classes (the shrinker's count). */
uint64_t zs_can_compact(struct zs_pool *pool);

/* A snapshot: pool totals into `*stats`, and with `rows` (zs_nr_classes entries) one row
 * per class, each taken under its class lock. */
void zs_pool_stats(struct zs_pool *pool, struct zs_pool_stats *stats,
                   struct zs_class_stats *rows);

/*
 * Walk every structure and cross-check it (fullness lists, free lists, headers, counters,
 * frame accounting). 0 if consistent, else -EIO with a description in `msg` (`len` bytes,
 * NUL-terminated). Exact on an idle pool; under concurrent calls the totals across classes
 * may disagree. For tests: it costs a pass over every object.
 */
int zs_check(struct zs_pool *pool, char *msg, size_t len);

#endif

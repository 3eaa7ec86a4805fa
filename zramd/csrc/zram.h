/* zram.h - the device's data path in C: slot table, stripe locks, per-page loops.
 *
 * The counterpart of drivers/block/zram/zram_drv.[ch] for what runs per request: the table of
 * one entry per 4 KiB page (handle or fill word, size + flags, access time), the locks that
 * guard it, the per-stripe statistics, and the read, write and discard loops that compress,
 * allocate, install and free. Everything cold (lifecycle, which pages to write back or
 * recompress, the backing store itself, formatting statistics) stays in Python, which calls
 * the small slot operations at the end of this header.
 *
 * zramd/core.py is the reference twin of this file: the same contract in Python, used when
 * the extension is not built or ZRAMD_NATIVE=0, and the model every test compares against.
 *
 * Threads: every function may be called from many threads at once, with no GIL. The core
 * never calls into Python itself; the one thing it cannot do in C, reading a written-back
 * page from the backing store, is returned to the caller (ZRAM_NEED_BACKING) with no lock
 * held, and the caller retries with the page's contents.
 *
 * Lock order (outermost first):
 *
 *     gate (a count, not a lock: close() waits for it to drain)
 *       stripe[i]             slot j is guarded by stripe[(j >> STRIPE_SHIFT) & STRIPE_MASK];
 *                             several are taken in ascending index order only
 *         zs_pool locks       class -> page (zsmalloc.h), and its compaction lock
 *         freed_lock          leaf: written-back blocks freed by I/O, waiting to be reclaimed
 *
 * Returns: 0 or a positive count on success, a negative errno on failure:
 *     -EINVAL      request outside the device
 *     -ESHUTDOWN   the core is closed (the device was reset)
 *     -ENOSPC      mem_limit would be exceeded even after direct compaction
 *     -ENOMEM      the pool's arena is exhausted (or a scratch allocation failed)
 *     -EIO         an object's header does not match its handle (corruption)
 *     -EBADMSG     an object failed to decompress
 *     -ENOENT      a slot holds a handle the pool does not know
 *     ZRAM_NEED_BACKING  see zram_write
 */
#ifndef ZRAMD_ZRAM_H
#define ZRAMD_ZRAM_H

#include <stddef.h>
#include <stdint.h>

#define ZRAM_PAGE_SHIFT 12
#define ZRAM_PAGE_SIZE (1u << ZRAM_PAGE_SHIFT)

/* slot flags, numbered as in the 7.0-era kernel (zramd/slots.py) */
#define ZRAM_FLAG_SHIFT 13
#define ZRAM_SIZE_MASK ((1u << ZRAM_FLAG_SHIFT) - 1)
#define ZRAM_SAME (1u << 13)
#define ZRAM_ENTRY_LOCK (1u << 14) /* unused: striped locks */
#define ZRAM_WB (1u << 15)
#define ZRAM_PP_SLOT (1u << 16)
#define ZRAM_HUGE (1u << 17)
#define ZRAM_IDLE (1u << 18)
#define ZRAM_INCOMPRESSIBLE (1u << 19)
#define ZRAM_COMP_PRIORITY_SHIFT 20
#define ZRAM_COMP_PRIORITY_MASK (3u << ZRAM_COMP_PRIORITY_SHIFT)
#define ZRAM_MAX_COMPS 4

/* 32 pages per stripe lock: a 128 KiB request takes one lock. 1024 locks: stripes alias every
 * 128 MiB, so unrelated regions rarely share one. */
#define STRIPE_SHIFT 5
#define NR_STRIPES 1024
#define STRIPE_MASK (NR_STRIPES - 1)

#define ZRAM_NEED_BACKING 1 /* positive: not an error, see zram_write / zram_read */

struct zs_pool;
struct zcomp;
struct zram_core;

/* Per-stripe statistics, changed under the stripe's lock, summed on demand. One cache line
 * each, so threads working on different stripes never share a line. */
struct zram_stripe_stat {
    int64_t stored;      /* slots holding anything: pages_stored */
    int64_t compr;       /* bytes of pool objects: compr_data_size */
    int64_t same;        /* same-filled slots */
    int64_t huge;        /* slots stored raw */
    int64_t huge_since;  /* raw stores since init, never decremented */
    int64_t notify_free; /* pages visited by discard / write-zeroes */
    int64_t pad[2];
};

struct zram_stats {
    int64_t stored, compr, same, huge, huge_since, notify_free;
    uint64_t failed_reads, failed_writes;
    uint64_t direct_runs, direct_freed;
    uint64_t max_pages, limit_pages;
    uint64_t wb_pending; /* freed blocks not yet reclaimed */
};

/* A written-back page the caller must read from the backing store. */
struct zram_wb_page {
    uint64_t index; /* device page */
    uint64_t block; /* backing block */
};

/* The written-back pages a request needs (ZRAM_NEED_BACKING). Each such result holds one pin
 * (`pinned`, to pass to zram_wb_done): until the caller calls zram_wb_done, no block freed
 * meanwhile is handed out again by zram_reclaim_blocks, so the blocks listed can be read
 * safely with no lock held. */
struct zram_wb_need {
    struct zram_wb_page *pages;
    size_t n, cap;
    int pinned; /* the generation this call pinned (1 or 2), 0 for none */
};

/* What the caller fetched for a retried write: the pages a ZRAM_NEED_BACKING result listed,
 * with their contents (n pages of 4096 bytes, in the same order). */
struct zram_wb_have {
    const struct zram_wb_page *pages;
    size_t n;
    const unsigned char *data;
};

/* Create a core for `pages` slots over `pool` (borrowed: it must outlive the core) with the
 * algorithm of each priority (comps[0] required, the others may be NULL). NULL + errno. */
struct zram_core *zram_create(uint64_t pages, struct zs_pool *pool, struct zcomp *const *comps);
/* Refuse new requests, wait for those in flight, free the table. After it every call fails
 * with -ESHUTDOWN; zram_destroy frees the rest. */
void zram_close(struct zram_core *z);
void zram_destroy(struct zram_core *z);

uint64_t zram_pages(const struct zram_core *z);

/* Swap mode: nothing a request touches may need a page from the kernel.
 *
 * zram_lock_table faults in and mlocks the slot table and the core's own structure (stripe
 * locks and statistics); 0 or mlock's negative errno (-ENOMEM, -EPERM, -EAGAIN).
 *
 * zram_prepare_thread, in each thread that will serve requests, before its first: grows the
 * thread's scratch for writes of up to `max_len` bytes and touches every page of it, and has
 * each algorithm keep one warmed stream (a compression and a decompression run once, so lazy
 * library workspaces exist) per prepared thread, and touches the next 128 KiB of the thread's
 * stack. 0, -ENOMEM or -ESHUTDOWN. */
int zram_lock_table(struct zram_core *z);
int zram_prepare_thread(struct zram_core *z, size_t max_len);

/* Data path. `now` is the access time stored in every slot touched (seconds). */

/* Write `len` bytes at `offset` (any alignment: partial pages are read-modify-written). All or
 * nothing: on any error no slot changes. Returns 0, a negative errno, or ZRAM_NEED_BACKING
 * when a partially written page is written back and `have` lacks it: `need` lists it; read
 * it, retry with it in `have`, and call zram_wb_done with need->pinned once per
 * ZRAM_NEED_BACKING received. */
int zram_write(struct zram_core *z, uint64_t offset, const unsigned char *src, size_t len,
               uint32_t now, const struct zram_wb_have *have, struct zram_wb_need *need);
/* Make [offset, offset+len) read as zeros. Whole pages are freed (`hole`) or become
 * same-filled zero pages; partial pages at the edges: see docs/design.md. Same returns as
 * zram_write. Counts notify_free per whole page. */
int zram_zero(struct zram_core *z, uint64_t offset, uint64_t len, int hole, int discard,
              uint32_t now, const struct zram_wb_have *have, struct zram_wb_need *need);
/* Fill `dst` from `offset`. Written-back pages are listed in `need` (their destination is
 * left untouched) and ZRAM_NEED_BACKING is returned; the caller fills them from the store
 * and then calls zram_wb_done with need->pinned. */
int zram_read(struct zram_core *z, uint64_t offset, unsigned char *dst, size_t len, uint32_t now,
              struct zram_wb_need *need);
/* The caller is done with the blocks one ZRAM_NEED_BACKING result listed: drops the pin it
 * took (`pin`: that result's need->pinned). */
void zram_wb_done(struct zram_core *z, int pin);
void zram_wb_need_free(struct zram_wb_need *need);
/* A request failed outside zram.c (reading the backing store): count it like the others. */
void zram_count_failed(struct zram_core *z, int read);

/* Block status: (start page, pages, type) runs from page `first`, at most `max` pages and at
 * most `nruns` runs; type 3 = hole (never written / discarded), 2 = zero fill, 0 = data.
 * Returns the number of runs. */
int zram_extents(struct zram_core *z, uint64_t first, uint64_t stop, uint64_t *runs,
                 int nruns);

/* Limits and counters. */
void zram_set_limit(struct zram_core *z, uint64_t pages);
void zram_reset_max(struct zram_core *z);
void zram_note_peak(struct zram_core *z, uint64_t pages);
void zram_get_stats(struct zram_core *z, struct zram_stats *out);

/* Slot operations for the cold paths (idle marking, writeback, recompression). Each takes the
 * stripe lock it needs and returns with none held. */

/* idle: mark allocated slots (not same-filled, not written back) IDLE; with `cutoff` >= 0
 * only those last accessed before it, clearing IDLE on the others. Returns slots marked. */
int64_t zram_mark_idle(struct zram_core *z, int64_t cutoff);
/* scan_slots_for_*: flag PP_SLOT on slots in [lo, hi) holding a pool object with every `need`
 * flag and none of `skip`, appending (index, flags before the pick) pairs to out (grown with
 * realloc; *n counts words, two per slot). */
int zram_pick(struct zram_core *z, uint64_t lo, uint64_t hi, uint32_t need, uint32_t skip,
              uint64_t **out, size_t *n, size_t *cap);
void zram_unpick(struct zram_core *z, const uint64_t *idx, size_t n);
/* A picked slot's flags, handle and page (decompressed; raw for huge), if still picked.
 * Returns 1 (found), 0 (accessed or freed since), or a negative errno. */
int zram_take_page(struct zram_core *z, uint64_t index, uint32_t *flags, uint64_t *handle,
                   unsigned char *page);
/* Switch a written slot to WB with `block`, unless it changed since zram_take_page; returns 1
 * if switched (its object is freed), 0 if the block went unused. */
int zram_complete_writeback(struct zram_core *z, uint64_t index, uint64_t handle, uint64_t block);
/* No algorithm helped: drop PP_SLOT and IDLE, set INCOMPRESSIBLE if asked. */
void zram_tried(struct zram_core *z, uint64_t index, uint64_t handle, int incompressible);
/* Install a recompressed object (`newh`, `size` bytes, priority `prio`) unless the slot
 * changed; returns 1 (the old object is freed) or 0 (the caller frees newh). */
int zram_complete_recompress(struct zram_core *z, uint64_t index, uint64_t handle, uint64_t newh,
                             uint32_t size, int prio);
/* Written-back blocks freed by I/O that no reader may still be reading. A call retires the
 * blocks freed so far (unless some retired ones are still waiting) and hands out retired ones
 * once every reader in flight when they were retired is done; readers that started later do
 * not hold them back. Returns how many were copied to out (at most max). */
size_t zram_reclaim_blocks(struct zram_core *z, uint64_t *out, size_t max);

/* One slot, for tests and debugging (no lock: a snapshot). */
int zram_slot(struct zram_core *z, uint64_t index, uint64_t *handle, uint32_t *flags,
              uint32_t *actime);

#endif

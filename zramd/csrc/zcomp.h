/*
 * zcomp: the compression front end of zramd's C data path, shaped like the kernel's
 * drivers/block/zram/zcomp.[ch].
 *
 * A struct zcomp is one configured algorithm (name, level, deflate window, dictionary),
 * created once and used by any number of threads at once. The work happens on streams: each
 * stream owns its backend's context (a ZSTD_CCtx/DCtx pair, an lz4 state, a zlib z_stream
 * pair, LZO work memory) and a 2 * ZCOMP_PAGE_SIZE output buffer, as the kernel's per-CPU
 * streams do. A thread takes a stream with zcomp_stream_get, uses it, and gives it back with
 * zcomp_stream_put. Userspace has no per-CPU data, so the streams are a pool of idle ones:
 * get pops one (or makes a new one when none is idle) and never waits for another thread;
 * put pushes it back. The pool therefore holds as many streams as were ever in use at once
 * (at most ZCOMP_MAX_IDLE are kept idle; more are freed on put).
 *
 * Formats are the Python backends' (zramd/compress/), so objects move freely between the
 * C and Python paths: lz4 and lz4hc blocks with no size prefix, zstd frames with the content
 * size and neither checksum nor dictionary ID, deflate as zlib makes it for the window given
 * (raw by default), LZO1X-1. Parameters mean what they mean to the kernel's backends and the
 * Python twins (zcomp.c's table), dictionaries included.
 *
 * Nothing here touches Python: the same files build the extension module and the plain C
 * stress harness (tests/c/stress_zcomp.c).
 */
#ifndef ZRAMD_ZCOMP_H
#define ZRAMD_ZCOMP_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#define ZCOMP_PAGE_SIZE 4096
/* a level or window that was not given: the backend's default applies (the kernel's value
 * for it, so algorithm_params' level=-2147483648 means the default here too) */
#define ZCOMP_PARAM_NOT_SET INT_MIN
/* idle streams a zcomp keeps; a burst of more concurrent users frees the extra on put */
#define ZCOMP_MAX_IDLE 64
/* the largest input zcomp_compress_buf / zcomp_decompress_buf take (lz4 counts in int) */
#define ZCOMP_MAX_BUF (1 << 30)

/*
 * Immutable backend parameters, shared by every stream of a zcomp. zcomp_create fills level
 * (the default when not given) and deflate.winbits (deflate only); setup_params maps the level
 * as the kernel's backend does (lz4hc's 0 is 9, for example) and may attach private data
 * (drv_data: a zstd CDict/DDict pair, a preloaded lz4 dictionary state); nothing changes them
 * afterwards. dict is set only for the backends that use a dictionary (zstd, lz4, lz4hc).
 */
struct zcomp_params {
    const void *dict; /* owned by the zcomp; NULL when dict_sz == 0 */
    size_t dict_sz;
    int level;
    struct {
        int winbits;
    } deflate;
    void *drv_data;
};

/* A stream's backend state: scratch memory, library contexts. One thread at a time. */
struct zcomp_ctx {
    void *context;
};

/* One request: src_len bytes in; dst_len is the room in dst on entry to compress and the
 * compressed length on return; for decompress it is the exact expected output size. */
struct zcomp_req {
    const unsigned char *src;
    size_t src_len;
    unsigned char *dst;
    size_t dst_len;
};

/*
 * A backend (backend_*.c), as the kernel's struct zcomp_ops. Return values are 0 or a
 * negative errno:
 *   compress        -ENOSPC when dst is too small, -EINVAL on a library failure.
 *   decompress      0 only when src decodes to exactly dst_len bytes; -EINVAL otherwise
 *                   (corrupt, truncated, too short or too long). Never writes past
 *                   dst + dst_len, whatever src holds.
 *   create_ctx      -ENOMEM (ctx->context is left NULL or fully torn down).
 *   destroy_ctx     accepts a ctx that create_ctx failed to fill.
 *   setup_params    called once per zcomp after the registry's table resolved the values;
 *                   -ENOMEM or -EINVAL (a dictionary the library rejects).
 *   release_params  frees what setup_params attached.
 *   compress_bound  the largest output compress can produce for src_len bytes.
 */
struct zcomp_ops {
    int (*compress)(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                    struct zcomp_req *req);
    int (*decompress)(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                      struct zcomp_req *req);
    int (*create_ctx)(const struct zcomp_params *params, struct zcomp_ctx *ctx);
    void (*destroy_ctx)(struct zcomp_ctx *ctx);
    int (*setup_params)(struct zcomp_params *params);
    void (*release_params)(struct zcomp_params *params);
    size_t (*compress_bound)(const struct zcomp_params *params, size_t src_len);
    const char *name;
};

extern const struct zcomp_ops backend_lzo;
extern const struct zcomp_ops backend_lz4;
extern const struct zcomp_ops backend_lz4hc;
extern const struct zcomp_ops backend_zstd;
extern const struct zcomp_ops backend_deflate;

/* A stream: the caller owns it between zcomp_stream_get and zcomp_stream_put. */
struct zcomp_strm {
    unsigned char *buffer; /* 2 * ZCOMP_PAGE_SIZE: zcomp_compress writes here */
    struct zcomp_ctx ctx;
    struct zcomp_strm *next; /* the idle list (zcomp.c) */
};

struct zcomp; /* opaque: zcomp.c */

/* Why zcomp_create failed: a negative errno and a message naming the bad value. */
struct zcomp_error {
    int code; /* -EINVAL bad name or parameter, -EOPNOTSUPP unavailable, -ENOMEM */
    char msg[192];
};

/* The registry, in the kernel's order (lzo-rle lzo lz4 lz4hc zstd deflate 842), unavailable
 * entries included: index 0..zcomp_nr_backends()-1. */
int zcomp_nr_backends(void);
const char *zcomp_backend_name(int i);
/* NULL when the backend is available here, else why it is not */
const char *zcomp_backend_unavailable(int i);
bool zcomp_available_algorithm(const char *alg);
/* whether alg names a backend that ignores a level / deflate.winbits: whatever is given for
 * it, even a value beyond 32 bits, means nothing (false for unknown names) */
bool zcomp_ignores_level(const char *alg);
bool zcomp_ignores_winbits(const char *alg);

/*
 * A configured algorithm, or NULL with *err filled. level and winbits (deflate.winbits) are
 * a value or ZCOMP_PARAM_NOT_SET; dict (dict_sz > 0) is copied for the backends that use one
 * and ignored by the others. As the kernel's backends, every backend takes every value and
 * makes of it what the registry's table (zcomp.c) says: a level it has no use for or outside
 * the library's range acts as the kernel's backend makes it act. Errors: -EINVAL for an
 * unknown name, a deflate level outside -1..9 or a deflate.winbits outside -15..-9 and
 * 9..15, a dictionary zstd cannot use; -EOPNOTSUPP for an unavailable algorithm; -ENOMEM.
 */
struct zcomp *zcomp_create(const char *alg, int level, int winbits, const void *dict,
                           size_t dict_sz, struct zcomp_error *err);
/* Frees the zcomp and its idle streams; every stream must have been put back. */
void zcomp_destroy(struct zcomp *comp);

const char *zcomp_name(const struct zcomp *comp);
/* the level as given (the default when none was given; what the backend makes of it may
 * differ, as lz4hc's 0 acts as 9); ZCOMP_PARAM_NOT_SET for lzo, which has none */
int zcomp_level(const struct zcomp *comp);
/* deflate's window bits as zlib takes them (negative: a raw stream); ZCOMP_PARAM_NOT_SET
 * for the other backends, which ignore them */
int zcomp_winbits(const struct zcomp *comp);
/* streams created and not yet freed, and how many of them are idle (a snapshot) */
void zcomp_stream_counts(struct zcomp *comp, unsigned int *total, unsigned int *idle);

/* An idle stream, or a new one; NULL only when memory runs out. Never blocks on others. */
struct zcomp_strm *zcomp_stream_get(struct zcomp *comp);
void zcomp_stream_put(struct zcomp *comp, struct zcomp_strm *zstrm);
/* Make sure `n` streams exist (at most ZCOMP_MAX_IDLE), each run once through a compression
 * and a decompression so that libraries that allocate their workspace on first use (zstd)
 * have done so; they wait idle. 0 or -ENOMEM. */
int zcomp_reserve_streams(struct zcomp *comp, unsigned int n);

/*
 * Compress the ZCOMP_PAGE_SIZE bytes at src into zstrm->buffer; *dst_len is the compressed
 * length, which may exceed ZCOMP_PAGE_SIZE for incompressible data (the caller then stores
 * the page raw). 0 or a negative errno.
 */
int zcomp_compress(struct zcomp *comp, struct zcomp_strm *zstrm, const void *src,
                   unsigned int *dst_len);
/*
 * Decompress src_len bytes into the ZCOMP_PAGE_SIZE bytes at dst: 0, or -EINVAL when src is
 * corrupt or does not decode to exactly ZCOMP_PAGE_SIZE bytes (dst's contents are then
 * unspecified).
 */
int zcomp_decompress(struct zcomp *comp, struct zcomp_strm *zstrm, const void *src,
                     unsigned int src_len, void *dst);

/* The same for any length up to ZCOMP_MAX_BUF (-EINVAL beyond): compress src_len bytes into
 * dst (dst_cap bytes, at least zcomp_compress_bound), decompress to exactly dst_len bytes. */
size_t zcomp_compress_bound(const struct zcomp *comp, size_t src_len);
int zcomp_compress_buf(struct zcomp *comp, struct zcomp_strm *zstrm, const void *src,
                       size_t src_len, void *dst, size_t dst_cap, size_t *dst_len);
int zcomp_decompress_buf(struct zcomp *comp, struct zcomp_strm *zstrm, const void *src,
                         size_t src_len, void *dst, size_t dst_len);

#endif /* ZRAMD_ZCOMP_H */

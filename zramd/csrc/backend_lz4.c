/*
 * lz4 and lz4hc (liblz4): raw blocks with no size prefix, as python-lz4's
 * block.compress(store_size=False) makes them (zram knows every page's size). Both share the
 * block decoder, as the kernel's backend_lz4.c and backend_lz4hc.c do. Each stream owns its
 * compression state, so no call allocates.
 *
 * Levels, as the kernel's backends pass them to the library: lz4's is the acceleration (below
 * 1 it acts as 1; liblz4 caps it at LZ4_ACCELERATION_MAX), lz4hc's the compression level
 * (below 1 it acts as 9, above 12 as 12). deflate.winbits is ignored.
 *
 * The bytes are python-lz4's (4.x, block.compress), so the C and Python data paths store
 * the same objects and report the same mm_stat. lz4 starts every page from a fresh stream
 * (LZ4_initStream) and compresses with LZ4_compress_fast_continue, python-lz4's two calls;
 * on a fresh stream that indexes 32-bit positions with a 5-byte hash (on 64-bit machines).
 * The kernel's LZ4_compress_fast runs LZ4_compress_fast_extState, which for an input under
 * 64 KiB indexes 16-bit positions with a 4-byte hash: another valid encoding of the page
 * (either decoder takes both). Kernel zram's compr_data_size on a swap-like image matches
 * that routine's total almost to the byte and this one's within 0.3 % (docs/performance.md),
 * at the same speed. lz4hc's LZ4_compress_HC_extStateHC makes the same bytes as python-lz4's
 * LZ4_resetStreamHC + LZ4_compress_HC_continue.
 *
 * Dictionaries (algorithm_params dict=): LZ4 reaches back 64 KiB at most, so only the
 * dictionary's last 64 KiB is used. The encoder starts every page from the state that
 * LZ4_loadDict / LZ4_loadDictHC leave (the kernel's backends and python-lz4 load the
 * dictionary before every page): setup_params loads it once into a template state, and
 * each page copies the template into its stream's state and compresses with
 * LZ4_compress_fast_continue / LZ4_compress_HC_continue, the calls python-lz4 makes after
 * loading, so the bytes are python-lz4's. The decoder is LZ4_decompress_safe_usingDict, the
 * same as python-lz4's and equivalent to the kernel's LZ4_setStreamDecode +
 * LZ4_decompress_safe_continue.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <lz4hc.h>

#include "zcomp.h"

#define LZ4_ACCELERATION_DEFAULT 1 /* the kernel's (lz4.h) */
#define LZ4_DICT_WINDOW (64 << 10) /* LZ4's longest match distance */

/* params->drv_data when there is a dictionary: its last 64 KiB and the state after loading */
struct lz4_dict {
    const char *window; /* into params->dict, which the zcomp owns */
    int window_sz;
    void *loaded; /* an LZ4_stream_t or LZ4_streamHC_t, read-only after setup */
};

static void lz4_release_params(struct zcomp_params *params)
{
    struct lz4_dict *d = params->drv_data;

    params->drv_data = NULL;
    if (!d)
        return;
    free(d->loaded);
    free(d);
}

/* the dictionary's window, or NULL when there is no dictionary; -ENOMEM in *ret */
static struct lz4_dict *dict_new(struct zcomp_params *params, size_t state_sz, int *ret)
{
    struct lz4_dict *d;
    size_t sz = params->dict_sz;

    *ret = 0;
    if (!sz)
        return NULL;
    d = calloc(1, sizeof(*d));
    /* the states want 8-byte alignment (LZ4_initStream checks); malloc gives 16 */
    if (d)
        d->loaded = malloc(state_sz);
    if (!d || !d->loaded) {
        free(d);
        *ret = -ENOMEM;
        return NULL;
    }
    if (sz > LZ4_DICT_WINDOW)
        sz = LZ4_DICT_WINDOW;
    d->window = (const char *)params->dict + (params->dict_sz - sz);
    d->window_sz = (int)sz;
    params->drv_data = d;
    return d;
}

static int lz4_setup_params(struct zcomp_params *params)
{
    struct lz4_dict *d;
    int ret;

    if (params->level < 1) /* the kernel's backend leaves this to LZ4_compress_fast */
        params->level = LZ4_ACCELERATION_DEFAULT;
    d = dict_new(params, sizeof(LZ4_stream_t), &ret);
    if (d) {
        /* LZ4_loadDict starts with a full reset of the state */
        LZ4_loadDict(LZ4_initStream(d->loaded, sizeof(LZ4_stream_t)), d->window,
                     d->window_sz);
    }
    return ret;
}

static int lz4hc_setup_params(struct zcomp_params *params)
{
    struct lz4_dict *d;
    int ret;

    /* what LZ4_setCompressionLevel makes of it, and the kernel's backend with it */
    if (params->level < 1)
        params->level = LZ4HC_CLEVEL_DEFAULT;
    if (params->level > LZ4HC_CLEVEL_MAX)
        params->level = LZ4HC_CLEVEL_MAX;
    d = dict_new(params, sizeof(LZ4_streamHC_t), &ret);
    if (d) {
        /* python-lz4's LZ4_resetStreamHC(state, level) (a full reset and the level; on a
         * fresh state the fast reset only sets the level), then LZ4_loadDictHC, which keeps
         * the level through its own full reset */
        LZ4_streamHC_t *hc = LZ4_initStreamHC(d->loaded, sizeof(LZ4_streamHC_t));
        LZ4_resetStreamHC_fast(hc, params->level);
        LZ4_loadDictHC(hc, d->window, d->window_sz);
    }
    return ret;
}

static size_t lz4_compress_bound(const struct zcomp_params *params, size_t src_len)
{
    return src_len + src_len / 255 + 16; /* LZ4_COMPRESSBOUND */
}

static void lz4_destroy(struct zcomp_ctx *ctx)
{
    free(ctx->context);
    ctx->context = NULL;
}

static int lz4_create(const struct zcomp_params *params, struct zcomp_ctx *ctx)
{
    ctx->context = malloc(sizeof(LZ4_stream_t));
    return ctx->context ? 0 : -ENOMEM;
}

static int lz4hc_create(const struct zcomp_params *params, struct zcomp_ctx *ctx)
{
    ctx->context = malloc(sizeof(LZ4_streamHC_t));
    return ctx->context ? 0 : -ENOMEM;
}

/* the library's int sizes: a capacity beyond INT_MAX is INT_MAX */
static int dst_cap(const struct zcomp_req *req)
{
    return req->dst_len > INT_MAX ? INT_MAX : (int)req->dst_len;
}

static int lz4_result(struct zcomp_req *req, int ret)
{
    if (ret > 0) {
        req->dst_len = (size_t)ret;
        return 0;
    }
    /* 0 means the output did not fit (the bound always fits) */
    return req->dst_len < lz4_compress_bound(NULL, req->src_len) ? -ENOSPC : -EINVAL;
}

static int lz4_compress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                        struct zcomp_req *req)
{
    const struct lz4_dict *d = params->drv_data;
    const char *src = (const char *)req->src;
    int ret;

    if (req->src_len > LZ4_MAX_INPUT_SIZE)
        return -EINVAL;
    /* a fresh state, or the one LZ4_loadDict leaves, then python-lz4's call */
    if (d)
        memcpy(ctx->context, d->loaded, sizeof(LZ4_stream_t));
    else
        LZ4_initStream(ctx->context, sizeof(LZ4_stream_t));
    ret = LZ4_compress_fast_continue(ctx->context, src, (char *)req->dst, (int)req->src_len,
                                     dst_cap(req), params->level);
    return lz4_result(req, ret);
}

static int lz4hc_compress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                          struct zcomp_req *req)
{
    const struct lz4_dict *d = params->drv_data;
    const char *src = (const char *)req->src;
    int ret;

    if (req->src_len > LZ4_MAX_INPUT_SIZE)
        return -EINVAL;
    if (d) {
        memcpy(ctx->context, d->loaded, sizeof(LZ4_streamHC_t));
        ret = LZ4_compress_HC_continue(ctx->context, src, (char *)req->dst, (int)req->src_len,
                                       dst_cap(req));
    } else {
        ret = LZ4_compress_HC_extStateHC(ctx->context, src, (char *)req->dst,
                                         (int)req->src_len, dst_cap(req), params->level);
    }
    return lz4_result(req, ret);
}

static int lz4_decompress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                          struct zcomp_req *req)
{
    const struct lz4_dict *d = params->drv_data;
    int ret;

    if (req->src_len > INT_MAX || req->dst_len > INT_MAX)
        return -EINVAL;
    /* the safe decoders never read past src_len nor write past dst_len; a block that
     * decodes to fewer bytes returns its length, so a short object fails the check too */
    if (d)
        ret = LZ4_decompress_safe_usingDict((const char *)req->src, (char *)req->dst,
                                            (int)req->src_len, (int)req->dst_len, d->window,
                                            d->window_sz);
    else
        ret = LZ4_decompress_safe((const char *)req->src, (char *)req->dst, (int)req->src_len,
                                  (int)req->dst_len);
    return ret >= 0 && (size_t)ret == req->dst_len ? 0 : -EINVAL;
}

const struct zcomp_ops backend_lz4 = {
    .compress = lz4_compress,
    .decompress = lz4_decompress,
    .create_ctx = lz4_create,
    .destroy_ctx = lz4_destroy,
    .setup_params = lz4_setup_params,
    .release_params = lz4_release_params,
    .compress_bound = lz4_compress_bound,
    .name = "lz4",
};

const struct zcomp_ops backend_lz4hc = {
    .compress = lz4hc_compress,
    .decompress = lz4_decompress,
    .create_ctx = lz4hc_create,
    .destroy_ctx = lz4_destroy,
    .setup_params = lz4hc_setup_params,
    .release_params = lz4_release_params,
    .compress_bound = lz4_compress_bound,
    .name = "lz4hc",
};

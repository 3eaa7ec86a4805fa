/*
 * lz4 and lz4hc (liblz4): raw blocks with no size prefix, as python-lz4's
 * block.compress(store_size=False) makes them (zram knows every page's size). lz4's level is
 * the acceleration; lz4hc's is its compression level. Both share the block decoder, as the
 * kernel's backend_lz4.c and backend_lz4hc.c do. Each stream owns its compression state, so
 * no call allocates.
 *
 * lz4 compresses with LZ4_compress_fast_extState, which is what the kernel's
 * LZ4_compress_fast(..., wrkmem) runs: for an input under 64 KiB it indexes 16-bit positions
 * with a 4-byte hash. python-lz4 goes through the streaming entry point (32-bit positions, a
 * 5-byte hash on 64-bit machines), so the two make different bytes of the same format:
 * either decodes the other's blocks, and their sizes differ by a fraction of a percent on a
 * swap-like image (docs/performance.md). lz4hc's bytes are the same as python-lz4's.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include <lz4.h>
#include <lz4hc.h>

#include "zcomp.h"

static int lz4_setup_params(struct zcomp_params *params)
{
    return 0;
}

static void lz4_release_params(struct zcomp_params *params)
{
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
    ctx->context = malloc((size_t)LZ4_sizeofState());
    return ctx->context ? 0 : -ENOMEM;
}

static int lz4hc_create(const struct zcomp_params *params, struct zcomp_ctx *ctx)
{
    ctx->context = malloc((size_t)LZ4_sizeofStateHC());
    return ctx->context ? 0 : -ENOMEM;
}

/* the library's int sizes: a capacity beyond INT_MAX is INT_MAX */
static int dst_cap(const struct zcomp_req *req)
{
    return req->dst_len > INT_MAX ? INT_MAX : (int)req->dst_len;
}

static int lz4_result(const struct zcomp_req *req, int ret)
{
    if (ret > 0)
        return 0;
    /* 0 means the output did not fit (the bound always fits) */
    return req->dst_len < lz4_compress_bound(NULL, req->src_len) ? -ENOSPC : -EINVAL;
}

static int lz4_compress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                        struct zcomp_req *req)
{
    int ret;

    if (req->src_len > LZ4_MAX_INPUT_SIZE)
        return -EINVAL;
    ret = LZ4_compress_fast_extState(ctx->context, (const char *)req->src, (char *)req->dst,
                                     (int)req->src_len, dst_cap(req), params->level);
    if (lz4_result(req, ret))
        return lz4_result(req, ret);
    req->dst_len = (size_t)ret;
    return 0;
}

static int lz4hc_compress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                          struct zcomp_req *req)
{
    int ret;

    if (req->src_len > LZ4_MAX_INPUT_SIZE)
        return -EINVAL;
    ret = LZ4_compress_HC_extStateHC(ctx->context, (const char *)req->src, (char *)req->dst,
                                     (int)req->src_len, dst_cap(req), params->level);
    if (lz4_result(req, ret))
        return lz4_result(req, ret);
    req->dst_len = (size_t)ret;
    return 0;
}

static int lz4_decompress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                          struct zcomp_req *req)
{
    int ret;

    if (req->src_len > INT_MAX || req->dst_len > INT_MAX)
        return -EINVAL;
    /* the safe decoder never reads past src_len nor writes past dst_len; a block that
     * decodes to fewer bytes returns its length, so a short object fails the check too */
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
    .setup_params = lz4_setup_params,
    .release_params = lz4_release_params,
    .compress_bound = lz4_compress_bound,
    .name = "lz4hc",
};

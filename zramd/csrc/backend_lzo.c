/*
 * lzo (liblzo2): LZO1X-1 compression and the bounds-checking LZO1X decoder, the kernel's
 * "lzo" and python-lzo's compress(data, 1, False). LZO1X-1 has no level and no dictionary:
 * like the kernel's lzo backend, this one takes every parameter and uses none (zcomp.c's
 * table drops them). Each stream owns the compressor's work memory. The kernel's "lzo-rle" is a different bitstream that liblzo2 does not implement;
 * the registry lists it as unavailable.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include <lzo/lzo1x.h>

#include "zcomp.h"

static pthread_once_t lzo_once = PTHREAD_ONCE_INIT;
static int lzo_init_result;

static void lzo_init_once(void)
{
    lzo_init_result = lzo_init();
}

static int lzo_setup_params(struct zcomp_params *params)
{
    /* lzo_init checks that the library matches this build; once per process */
    pthread_once(&lzo_once, lzo_init_once);
    return lzo_init_result == LZO_E_OK ? 0 : -EINVAL;
}

static void lzo_release_params(struct zcomp_params *params)
{
}

static size_t lzo_compress_bound(const struct zcomp_params *params, size_t src_len)
{
    return src_len + src_len / 16 + 64 + 3; /* lzo1x_worst_compress */
}

static int lzo_create(const struct zcomp_params *params, struct zcomp_ctx *ctx)
{
    ctx->context = malloc(LZO1X_1_MEM_COMPRESS);
    return ctx->context ? 0 : -ENOMEM;
}

static void lzo_destroy(struct zcomp_ctx *ctx)
{
    free(ctx->context);
    ctx->context = NULL;
}

static int lzo_compress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                        struct zcomp_req *req)
{
    lzo_uint out = 0;
    int ret;

    /* lzo1x_1_compress takes no output limit: refuse a buffer below the worst case */
    if (req->dst_len < lzo_compress_bound(params, req->src_len))
        return -ENOSPC;
    ret = lzo1x_1_compress(req->src, req->src_len, req->dst, &out, ctx->context);
    if (ret != LZO_E_OK)
        return -EINVAL;
    req->dst_len = out;
    return 0;
}

static int lzo_decompress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                          struct zcomp_req *req)
{
    lzo_uint out = req->dst_len;
    int ret;

    /* LZO_E_INPUT_NOT_CONSUMED (trailing bytes) is an error too, as in python-lzo */
    ret = lzo1x_decompress_safe(req->src, req->src_len, req->dst, &out, NULL);
    return ret == LZO_E_OK && out == req->dst_len ? 0 : -EINVAL;
}

const struct zcomp_ops backend_lzo = {
    .compress = lzo_compress,
    .decompress = lzo_decompress,
    .create_ctx = lzo_create,
    .destroy_ctx = lzo_destroy,
    .setup_params = lzo_setup_params,
    .release_params = lzo_release_params,
    .compress_bound = lzo_compress_bound,
    .name = "lzo",
};

/*
 * deflate (zlib): memLevel 9 and deflate.winbits passed to zlib as given, as the kernel's
 * backend_deflate.c passes them: negative for a raw stream of window 2^-winbits (the
 * default, -11), positive for a zlib-wrapped one (a 2-byte header and an Adler-32 trailer),
 * the Python twin's zlib.compressobj parameters. The dictionary is kept unused, as the
 * kernel's deflate keeps it. Each stream keeps a deflate and an inflate z_stream and resets
 * them per page (deflateReset / inflateReset), as the kernel's backend does, instead of
 * allocating them per page.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include <zlib.h>

#include "zcomp.h"

#define DEFLATE_DEF_MEMLEVEL 9 /* MAX_MEM_LEVEL: the kernel backend's */

struct deflate_ctx {
    z_stream cctx;
    z_stream dctx;
    bool c_init, d_init;
};

static int deflate_setup_params(struct zcomp_params *params)
{
    return 0;
}

static void deflate_release_params(struct zcomp_params *params)
{
}

static size_t deflate_compress_bound(const struct zcomp_params *params, size_t src_len)
{
    /* deflateBound's conservative form (any window and memLevel), plus the zlib wrapper's
     * 6 bytes when there is one */
    return src_len + ((src_len + 7) >> 3) + ((src_len + 63) >> 6) + 5 +
           (params->deflate.winbits > 0 ? 6 : 0);
}

static void deflate_destroy(struct zcomp_ctx *ctx)
{
    struct deflate_ctx *zctx = ctx->context;

    if (!zctx)
        return;
    if (zctx->c_init)
        deflateEnd(&zctx->cctx);
    if (zctx->d_init)
        inflateEnd(&zctx->dctx);
    free(zctx);
    ctx->context = NULL;
}

static int deflate_create(const struct zcomp_params *params, struct zcomp_ctx *ctx)
{
    struct deflate_ctx *zctx = calloc(1, sizeof(*zctx));
    int winbits = params->deflate.winbits;

    ctx->context = zctx;
    if (!zctx)
        return -ENOMEM;
    zctx->c_init = deflateInit2(&zctx->cctx, params->level, Z_DEFLATED, winbits,
                                DEFLATE_DEF_MEMLEVEL, Z_DEFAULT_STRATEGY) == Z_OK;
    zctx->d_init = zctx->c_init && inflateInit2(&zctx->dctx, winbits) == Z_OK;
    if (!zctx->d_init) {
        deflate_destroy(ctx);
        return -ENOMEM;
    }
    return 0;
}

static int deflate_compress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                            struct zcomp_req *req)
{
    struct deflate_ctx *zctx = ctx->context;
    z_stream *deflater = &zctx->cctx;
    int ret;

    if (deflateReset(deflater) != Z_OK || req->src_len > UINT_MAX)
        return -EINVAL;
    deflater->next_in = (Bytef *)req->src;
    deflater->avail_in = (uInt)req->src_len;
    deflater->next_out = req->dst;
    deflater->avail_out = req->dst_len > UINT_MAX ? UINT_MAX : (uInt)req->dst_len;
    ret = deflate(deflater, Z_FINISH);
    if (ret == Z_STREAM_END) {
        req->dst_len = deflater->total_out;
        return 0;
    }
    /* Z_OK / Z_BUF_ERROR: input left, no room to finish */
    return ret == Z_OK || ret == Z_BUF_ERROR ? -ENOSPC : -EINVAL;
}

static int deflate_decompress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                              struct zcomp_req *req)
{
    struct deflate_ctx *zctx = ctx->context;
    z_stream *inflater = &zctx->dctx;
    int ret;

    if (inflateReset(inflater) != Z_OK || req->src_len > UINT_MAX || req->dst_len > UINT_MAX)
        return -EINVAL;
    inflater->next_in = (Bytef *)req->src;
    inflater->avail_in = (uInt)req->src_len;
    inflater->next_out = req->dst;
    inflater->avail_out = (uInt)req->dst_len;
    /* one call: the stream must end within src and fill dst exactly (Z_BUF_ERROR when the
     * input is truncated or the output would be longer, Z_DATA_ERROR when corrupt) */
    ret = inflate(inflater, Z_FINISH);
    return ret == Z_STREAM_END && inflater->total_out == req->dst_len ? 0 : -EINVAL;
}

const struct zcomp_ops backend_deflate = {
    .compress = deflate_compress,
    .decompress = deflate_decompress,
    .create_ctx = deflate_create,
    .destroy_ctx = deflate_destroy,
    .setup_params = deflate_setup_params,
    .release_params = deflate_release_params,
    .compress_bound = deflate_compress_bound,
    .name = "deflate",
};

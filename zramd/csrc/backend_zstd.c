/*
 * zstd (libzstd): one frame per page with the content size, no checksum and no dictionary
 * ID, as python-zstandard's ZstdCompressor(write_checksum=False, write_dict_id=False) writes
 * them. Each stream owns a ZSTD_CCtx and a ZSTD_DCtx whose parameters are set once.
 *
 * Levels, as the kernel's zstd_get_params makes them: 0 is the default (3), above
 * ZSTD_maxCLevel() the maximum, negative levels trade ratio for speed down to
 * ZSTD_minCLevel() (lower acts as that). deflate.winbits is ignored.
 *
 * Dictionaries: built once per zcomp, as the kernel's backend_zstd.c builds them (a CDict
 * with the parameters zstd picks for a page-sized input and this dictionary, and a DDict,
 * both loaded with ZSTD_dct_auto: a zstd-format dictionary brings its entropy tables, any
 * other bytes are raw content). python-zstandard's ZstdCompressionDict loads with the same
 * rule by default, and neither side writes the dictionary ID, so a frame made with the same
 * dictionary bytes on either side decodes on the other.
 */
#include <errno.h>
#include <stdlib.h>

#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_createCDict_advanced, ZSTD_getCParams */
#include <zstd.h>
#include <zstd_errors.h>

#include "zcomp.h"

struct zstd_params {
    ZSTD_CDict *cdict;
    ZSTD_DDict *ddict;
};

struct zstd_ctx {
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
};

static void zstd_release_params(struct zcomp_params *params)
{
    struct zstd_params *zp = params->drv_data;

    params->drv_data = NULL;
    if (!zp)
        return;
    ZSTD_freeCDict(zp->cdict);
    ZSTD_freeDDict(zp->ddict);
    free(zp);
}

static int zstd_setup_params(struct zcomp_params *params)
{
    ZSTD_compressionParameters cparams;
    struct zstd_params *zp;

    if (params->level == 0)
        params->level = ZSTD_CLEVEL_DEFAULT;
    else if (params->level > ZSTD_maxCLevel())
        params->level = ZSTD_maxCLevel();
    else if (params->level < ZSTD_minCLevel())
        params->level = ZSTD_minCLevel();
    if (!params->dict_sz)
        return 0;
    zp = calloc(1, sizeof(*zp));
    if (!zp)
        return -ENOMEM;
    params->drv_data = zp;
    /* by reference: the zcomp owns params->dict for as long as the dictionaries live */
    cparams = ZSTD_getCParams(params->level, ZCOMP_PAGE_SIZE, params->dict_sz);
    zp->cdict = ZSTD_createCDict_advanced(params->dict, params->dict_sz, ZSTD_dlm_byRef,
                                          ZSTD_dct_auto, cparams, ZSTD_defaultCMem);
    zp->ddict = ZSTD_createDDict_advanced(params->dict, params->dict_sz, ZSTD_dlm_byRef,
                                          ZSTD_dct_auto, ZSTD_defaultCMem);
    if (!zp->cdict || !zp->ddict) {
        zstd_release_params(params);
        return -EINVAL;
    }
    return 0;
}

static size_t zstd_compress_bound(const struct zcomp_params *params, size_t src_len)
{
    return ZSTD_COMPRESSBOUND(src_len);
}

static void zstd_destroy(struct zcomp_ctx *ctx)
{
    struct zstd_ctx *zctx = ctx->context;

    if (!zctx)
        return;
    ZSTD_freeCCtx(zctx->cctx);
    ZSTD_freeDCtx(zctx->dctx);
    free(zctx);
    ctx->context = NULL;
}

static int zstd_create(const struct zcomp_params *params, struct zcomp_ctx *ctx)
{
    const struct zstd_params *zp = params->drv_data;
    struct zstd_ctx *zctx = calloc(1, sizeof(*zctx));
    size_t err = 0;

    ctx->context = zctx;
    if (!zctx)
        return -ENOMEM;
    zctx->cctx = ZSTD_createCCtx();
    zctx->dctx = ZSTD_createDCtx();
    if (!zctx->cctx || !zctx->dctx) {
        zstd_destroy(ctx);
        return -ENOMEM;
    }
    /* sticky across ZSTD_compress2 calls, which reset only the session */
    err |= ZSTD_isError(ZSTD_CCtx_setParameter(zctx->cctx, ZSTD_c_compressionLevel,
                                               params->level));
    err |= ZSTD_isError(ZSTD_CCtx_setParameter(zctx->cctx, ZSTD_c_contentSizeFlag, 1));
    err |= ZSTD_isError(ZSTD_CCtx_setParameter(zctx->cctx, ZSTD_c_checksumFlag, 0));
    err |= ZSTD_isError(ZSTD_CCtx_setParameter(zctx->cctx, ZSTD_c_dictIDFlag, 0));
    if (zp) {
        err |= ZSTD_isError(ZSTD_CCtx_refCDict(zctx->cctx, zp->cdict));
        err |= ZSTD_isError(ZSTD_DCtx_refDDict(zctx->dctx, zp->ddict));
    }
    if (err) {
        zstd_destroy(ctx);
        return -ENOMEM;
    }
    return 0;
}

static int zstd_compress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                         struct zcomp_req *req)
{
    struct zstd_ctx *zctx = ctx->context;
    size_t ret;

    ret = ZSTD_compress2(zctx->cctx, req->dst, req->dst_len, req->src, req->src_len);
    if (ZSTD_isError(ret)) {
        /* a failed call can leave the session mid-frame: start the next one clean */
        ZSTD_CCtx_reset(zctx->cctx, ZSTD_reset_session_only);
        return ZSTD_getErrorCode(ret) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EINVAL;
    }
    req->dst_len = ret;
    return 0;
}

static int zstd_decompress(const struct zcomp_params *params, struct zcomp_ctx *ctx,
                           struct zcomp_req *req)
{
    struct zstd_ctx *zctx = ctx->context;
    size_t ret;

    /* uses the DDict referenced at creation, if any */
    ret = ZSTD_decompressDCtx(zctx->dctx, req->dst, req->dst_len, req->src, req->src_len);
    if (ZSTD_isError(ret)) {
        ZSTD_DCtx_reset(zctx->dctx, ZSTD_reset_session_only);
        return -EINVAL;
    }
    return ret == req->dst_len ? 0 : -EINVAL;
}

const struct zcomp_ops backend_zstd = {
    .compress = zstd_compress,
    .decompress = zstd_decompress,
    .create_ctx = zstd_create,
    .destroy_ctx = zstd_destroy,
    .setup_params = zstd_setup_params,
    .release_params = zstd_release_params,
    .compress_bound = zstd_compress_bound,
    .name = "zstd",
};

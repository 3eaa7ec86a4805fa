/*
 * zcomp: the registry of backends, parameter validation, and the pool of streams (see
 * zcomp.h for the model and the contracts).
 */
#include "zcomp.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The one table of backends and what each makes of the parameters algorithm_params stores,
 * in the kernel's order. As in the kernel, every backend accepts every parameter: a value
 * the backend has no use for is ignored (lzo's level, deflate.winbits for all but deflate, a
 * dictionary for lzo and deflate), and a level outside the library's range acts as its
 * nearest sensible value (the backend's setup_params applies the kernel's rules). Only
 * deflate refuses values: levels outside -1..9 and windows zlib cannot take. It mirrors the
 * Python backends (zramd/compress/) rule for rule, so a device configured on either path
 * behaves the same; change a rule here and there together.
 */
struct zcomp_backend {
    const char *name;
    const struct zcomp_ops *ops; /* NULL: unavailable, for the reason in why */
    const char *why;
    bool uses_level; /* false: a given level is ignored and the level reads as not set */
    int level_default;
    bool level_checked; /* true: outside level_min..level_max is an error */
    int level_min, level_max;
    bool uses_winbits; /* deflate.winbits: only deflate's window; checked (deflate_winbits_ok) */
    int winbits_default;
    bool uses_dict; /* false: a given dictionary is kept unused */
};

#define IGNORES_LEVEL false, ZCOMP_PARAM_NOT_SET, false, 0, 0
#define LEVEL(def) true, (def), false, 0, 0
#define IGNORES_WINBITS false, ZCOMP_PARAM_NOT_SET

static const struct zcomp_backend backends[] = {
    {"lzo-rle", NULL, "no library implements the kernel's lzo-rle format", IGNORES_LEVEL,
     IGNORES_WINBITS, false},
    {"lzo", &backend_lzo, NULL, IGNORES_LEVEL, IGNORES_WINBITS, false},
    /* the acceleration, LZ4_ACCELERATION_DEFAULT 1 */
    {"lz4", &backend_lz4, NULL, LEVEL(1), IGNORES_WINBITS, true},
    /* LZ4HC_DEFAULT_CLEVEL 9 */
    {"lz4hc", &backend_lz4hc, NULL, LEVEL(9), IGNORES_WINBITS, true},
    /* ZSTD_CLEVEL_DEFAULT 3 */
    {"zstd", &backend_zstd, NULL, LEVEL(3), IGNORES_WINBITS, true},
    /* Z_DEFAULT_COMPRESSION (-1) .. 9; a raw stream with a 2^11-byte window, as the kernel
     * backend (a page is 4 KiB: a larger window buys little) */
    {"deflate", &backend_deflate, NULL, true, -1, true, -1, 9, true, -11, false},
    {"842", NULL, "no userspace library implements the 842 compressor", IGNORES_LEVEL,
     IGNORES_WINBITS, false},
};

#define NR_BACKENDS ((int)(sizeof(backends) / sizeof(backends[0])))

struct zcomp {
    const struct zcomp_backend *be;
    /* the level and deflate window as given (or the backend's default), what zcomp_level
     * and zcomp_winbits report; params holds what the backend makes of them */
    int level, winbits;
    struct zcomp_params params;
    pthread_mutex_t lock; /* protects idle, nr_idle, nr_total */
    struct zcomp_strm *idle;
    unsigned int nr_idle, nr_total;
};

int zcomp_nr_backends(void)
{
    return NR_BACKENDS;
}

const char *zcomp_backend_name(int i)
{
    return i >= 0 && i < NR_BACKENDS ? backends[i].name : NULL;
}

const char *zcomp_backend_unavailable(int i)
{
    if (i < 0 || i >= NR_BACKENDS)
        return "no such backend";
    return backends[i].ops ? NULL : backends[i].why;
}

static const struct zcomp_backend *lookup_backend(const char *alg)
{
    for (int i = 0; i < NR_BACKENDS; i++)
        if (strcmp(alg, backends[i].name) == 0)
            return &backends[i];
    return NULL;
}

bool zcomp_available_algorithm(const char *alg)
{
    const struct zcomp_backend *be = lookup_backend(alg);
    return be && be->ops;
}

bool zcomp_ignores_level(const char *alg)
{
    const struct zcomp_backend *be = lookup_backend(alg);
    return be && !be->uses_level;
}

bool zcomp_ignores_winbits(const char *alg)
{
    const struct zcomp_backend *be = lookup_backend(alg);
    return be && !be->uses_winbits;
}

static void set_error(struct zcomp_error *err, int code, const char *fmt, ...)
{
    va_list ap;

    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
}

/* zlib's window sizes: -15..-9 a raw stream, 9..15 a zlib-wrapped one (zlib refuses a raw
 * 8 and makes a wrapped 8 a 9 its inflate then rejects; the Python twin refuses both) */
static bool deflate_winbits_ok(int winbits)
{
    return (winbits >= 9 && winbits <= 15) || (winbits >= -15 && winbits <= -9);
}

/*
 * Fill comp->level/winbits (as given, else the default; NOT_SET where unused) and the
 * backend's params (the same values, which setup_params then maps as the kernel's backends
 * do). false with *err filled for the only values refused: deflate's.
 */
static bool validate(struct zcomp *comp, int level, int winbits, struct zcomp_error *err)
{
    const struct zcomp_backend *be = comp->be;

    if (!be->uses_level)
        level = ZCOMP_PARAM_NOT_SET;
    else if (level == ZCOMP_PARAM_NOT_SET)
        level = be->level_default;
    if (be->level_checked && (level < be->level_min || level > be->level_max)) {
        set_error(err, -EINVAL, "%s level %d outside %d..%d", be->name, level, be->level_min,
                  be->level_max);
        return false;
    }
    if (!be->uses_winbits)
        winbits = ZCOMP_PARAM_NOT_SET;
    else if (winbits == ZCOMP_PARAM_NOT_SET)
        winbits = be->winbits_default;
    if (be->uses_winbits && !deflate_winbits_ok(winbits)) {
        set_error(err, -EINVAL,
                  "%s.winbits %d outside -15..-9 (raw) and 9..15 (zlib stream)", be->name,
                  winbits);
        return false;
    }
    comp->level = comp->params.level = level;
    comp->winbits = comp->params.deflate.winbits = winbits;
    return true;
}

struct zcomp *zcomp_create(const char *alg, int level, int winbits, const void *dict,
                           size_t dict_sz, struct zcomp_error *err)
{
    const struct zcomp_backend *be = lookup_backend(alg);
    struct zcomp *comp;
    size_t used_dict_sz;
    int ret;

    err->code = 0;
    err->msg[0] = '\0';
    if (!be) {
        char names[128] = "";
        size_t n = 0;
        for (int i = 0; i < NR_BACKENDS; i++)
            if (backends[i].ops && n < sizeof(names))
                n += (size_t)snprintf(names + n, sizeof(names) - n, "%s%s", n ? " " : "",
                                      backends[i].name);
        set_error(err, -EINVAL, "unknown comp_algorithm '%.32s'; available: %s", alg, names);
        return NULL;
    }
    if (!be->ops) {
        set_error(err, -EOPNOTSUPP, "comp_algorithm '%s' is unavailable: %s", be->name,
                  be->why);
        return NULL;
    }
    comp = calloc(1, sizeof(*comp));
    if (!comp)
        goto nomem;
    comp->be = be;
    if (!validate(comp, level, winbits, err)) {
        free(comp);
        return NULL;
    }
    if (dict_sz && be->uses_dict) {
        void *copy = malloc(dict_sz);
        if (!copy) {
            free(comp);
            goto nomem;
        }
        memcpy(copy, dict, dict_sz);
        comp->params.dict = copy;
        comp->params.dict_sz = dict_sz;
    }
    used_dict_sz = comp->params.dict_sz;
    ret = be->ops->setup_params(&comp->params);
    if (ret) {
        free((void *)comp->params.dict);
        free(comp);
        if (ret == -ENOMEM)
            goto nomem;
        if (used_dict_sz)
            set_error(err, ret, "%s: the dictionary is not usable (%zu bytes)", be->name,
                      used_dict_sz);
        else
            set_error(err, ret, "%s: the library failed to initialise", be->name);
        return NULL;
    }
    if (pthread_mutex_init(&comp->lock, NULL)) {
        be->ops->release_params(&comp->params);
        free((void *)comp->params.dict);
        free(comp);
        goto nomem;
    }
    return comp;

nomem:
    set_error(err, -ENOMEM, "%s: out of memory", be->name);
    return NULL;
}

static void strm_free(struct zcomp *comp, struct zcomp_strm *zstrm)
{
    comp->be->ops->destroy_ctx(&zstrm->ctx);
    free(zstrm->buffer);
    free(zstrm);
}

static struct zcomp_strm *strm_new(struct zcomp *comp)
{
    struct zcomp_strm *zstrm = calloc(1, sizeof(*zstrm));

    if (!zstrm)
        return NULL;
    /* 2 pages: the compressed page, plus room for when it comes out larger than the input */
    zstrm->buffer = malloc(2 * ZCOMP_PAGE_SIZE);
    if (!zstrm->buffer || comp->be->ops->create_ctx(&comp->params, &zstrm->ctx)) {
        free(zstrm->buffer);
        free(zstrm);
        return NULL;
    }
    return zstrm;
}

void zcomp_destroy(struct zcomp *comp)
{
    struct zcomp_strm *zstrm;

    if (!comp)
        return;
    while ((zstrm = comp->idle)) {
        comp->idle = zstrm->next;
        strm_free(comp, zstrm);
    }
    pthread_mutex_destroy(&comp->lock);
    comp->be->ops->release_params(&comp->params);
    free((void *)comp->params.dict);
    free(comp);
}

const char *zcomp_name(const struct zcomp *comp)
{
    return comp->be->name;
}

int zcomp_level(const struct zcomp *comp)
{
    return comp->level;
}

int zcomp_winbits(const struct zcomp *comp)
{
    return comp->winbits;
}

void zcomp_stream_counts(struct zcomp *comp, unsigned int *total, unsigned int *idle)
{
    pthread_mutex_lock(&comp->lock);
    *total = comp->nr_total;
    *idle = comp->nr_idle;
    pthread_mutex_unlock(&comp->lock);
}

struct zcomp_strm *zcomp_stream_get(struct zcomp *comp)
{
    struct zcomp_strm *zstrm;

    pthread_mutex_lock(&comp->lock);
    zstrm = comp->idle;
    if (zstrm) {
        comp->idle = zstrm->next;
        comp->nr_idle--;
    } else {
        comp->nr_total++; /* counted before it exists, so a concurrent put sees the room */
    }
    pthread_mutex_unlock(&comp->lock);
    if (zstrm) {
        zstrm->next = NULL;
        return zstrm;
    }
    /* every stream is in use: make another (outside the lock: creation allocates) */
    zstrm = strm_new(comp);
    if (!zstrm) {
        pthread_mutex_lock(&comp->lock);
        comp->nr_total--;
        pthread_mutex_unlock(&comp->lock);
    }
    return zstrm;
}

void zcomp_stream_put(struct zcomp *comp, struct zcomp_strm *zstrm)
{
    bool keep;

    pthread_mutex_lock(&comp->lock);
    keep = comp->nr_idle < ZCOMP_MAX_IDLE;
    if (keep) {
        zstrm->next = comp->idle;
        comp->idle = zstrm;
        comp->nr_idle++;
    } else {
        comp->nr_total--;
    }
    pthread_mutex_unlock(&comp->lock);
    if (!keep)
        strm_free(comp, zstrm);
}

int zcomp_reserve_streams(struct zcomp *comp, unsigned int n)
{
    unsigned char page[ZCOMP_PAGE_SIZE], back[ZCOMP_PAGE_SIZE];
    struct zcomp_strm *held = NULL;
    int rc = 0;

    /* a page with matches and literals, so each library runs its whole path */
    for (size_t i = 0; i < sizeof(page); i++)
        page[i] = (unsigned char)(i % 251 < 128 ? i / 64 : i * 7919 >> 3);
    if (n > ZCOMP_MAX_IDLE)
        n = ZCOMP_MAX_IDLE;
    /* hold n at once, so that n exist; those that existed are warmed again, harmlessly */
    for (unsigned int got = 0; got < n; got++) {
        struct zcomp_strm *zstrm = zcomp_stream_get(comp);
        unsigned int len;

        if (!zstrm) {
            rc = -ENOMEM;
            break;
        }
        if (zcomp_compress(comp, zstrm, page, &len) == 0 && len <= ZCOMP_PAGE_SIZE)
            (void)zcomp_decompress(comp, zstrm, zstrm->buffer, len, back);
        zstrm->next = held;
        held = zstrm;
    }
    while (held) {
        struct zcomp_strm *next = held->next;

        zcomp_stream_put(comp, held);
        held = next;
    }
    return rc;
}

size_t zcomp_compress_bound(const struct zcomp *comp, size_t src_len)
{
    return comp->be->ops->compress_bound(&comp->params, src_len);
}

int zcomp_compress_buf(struct zcomp *comp, struct zcomp_strm *zstrm, const void *src,
                       size_t src_len, void *dst, size_t dst_cap, size_t *dst_len)
{
    struct zcomp_req req = {
        .src = src,
        .src_len = src_len,
        .dst = dst,
        .dst_len = dst_cap,
    };
    int ret;

    if (src_len > ZCOMP_MAX_BUF)
        return -EINVAL;
    if (req.dst_len > ZCOMP_MAX_BUF * 2UL)
        req.dst_len = ZCOMP_MAX_BUF * 2UL;
    ret = comp->be->ops->compress(&comp->params, &zstrm->ctx, &req);
    if (!ret)
        *dst_len = req.dst_len;
    return ret;
}

int zcomp_decompress_buf(struct zcomp *comp, struct zcomp_strm *zstrm, const void *src,
                         size_t src_len, void *dst, size_t dst_len)
{
    struct zcomp_req req = {
        .src = src,
        .src_len = src_len,
        .dst = dst,
        .dst_len = dst_len,
    };

    if (src_len > ZCOMP_MAX_BUF || dst_len > ZCOMP_MAX_BUF)
        return -EINVAL;
    return comp->be->ops->decompress(&comp->params, &zstrm->ctx, &req);
}

int zcomp_compress(struct zcomp *comp, struct zcomp_strm *zstrm, const void *src,
                   unsigned int *dst_len)
{
    size_t len;
    int ret;

    /*
     * The buffer is 2 pages because the compressed page can come out larger than the page:
     * every backend's bound for one page fits, so no backend fails for lack of room and the
     * caller sees the real size (and stores the page raw).
     */
    ret = zcomp_compress_buf(comp, zstrm, src, ZCOMP_PAGE_SIZE, zstrm->buffer,
                             2 * ZCOMP_PAGE_SIZE, &len);
    if (!ret)
        *dst_len = (unsigned int)len;
    return ret;
}

int zcomp_decompress(struct zcomp *comp, struct zcomp_strm *zstrm, const void *src,
                     unsigned int src_len, void *dst)
{
    return zcomp_decompress_buf(comp, zstrm, src, src_len, dst, ZCOMP_PAGE_SIZE);
}

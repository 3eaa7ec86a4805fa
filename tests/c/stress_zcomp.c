/*
 * stress_zcomp: zramd/csrc/zcomp.c and its backends from many threads at once, with no Python
 * in the process, so ThreadSanitizer and AddressSanitizer + UBSan see every access.
 * Built and run by scripts/c-stress (plain, tsan, asan):
 *
 *   stress_zcomp [-t THREADS] [-n ROUNDS]
 *
 * For every available algorithm and several parameter sets (levels in and out of the
 * library's range, deflate windows raw and zlib-wrapped, zstd, lz4 and lz4hc dictionaries,
 * parameters a backend ignores), THREADS threads share one zcomp and, ROUNDS times each: compress a page on one
 * stream, decompress it on another and compare; decompress it truncated (must fail) and with
 * a flipped bit (may fail, must not crash); hold two streams at once (they must differ, and the
 * pool must grow rather than wait). Meanwhile other threads create and destroy zcomps of their
 * own. Afterwards every stream must be back in the pool. Exit 0 and "stress_zcomp: ok" when
 * all holds; the first failure prints where and exits 1.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zcomp.h"

#define P ZCOMP_PAGE_SIZE
#define NR_PAGES 64

static unsigned char pages[NR_PAGES][P];
static int nr_threads = 4;
static long rounds = 2000;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "stress_zcomp: %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static uint64_t next_rand(uint64_t *s)
{
    /* xorshift64*: deterministic per seed, no shared state between threads */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

/* A mix like process memory: zero, same-filled, text, pointer arrays, small ints, noise. */
static void make_pages(void)
{
    static const char *words[] = {"the ", "of ", "and ", "zram ", "page ", "swap ", "memory ",
                                  "stream ", "compress ", "kernel "};
    uint64_t s = 0x9E3779B97F4A7C15ULL;

    for (int i = 0; i < NR_PAGES; i++) {
        unsigned char *p = pages[i];
        int kind = i % 8;
        size_t n = 0;

        memset(p, 0, P);
        if (kind == 0)
            continue; /* zero page */
        if (kind == 1) {
            uint64_t w = next_rand(&s);
            for (n = 0; n < P; n += 8)
                memcpy(p + n, &w, 8);
            continue;
        }
        if (kind == 2) {
            for (n = 0; n < P; n += 8) {
                uint64_t w = next_rand(&s);
                memcpy(p + n, &w, 8);
            }
            continue;
        }
        while (n < P) {
            uint64_t r = next_rand(&s);
            size_t len = 16 + r % 400;
            if (len > P - n)
                len = P - n;
            switch ((r >> 20) % 4) {
            case 0:
                for (size_t k = 0; k < len;) {
                    const char *w = words[next_rand(&s) % 10];
                    size_t wl = strlen(w);
                    if (wl > len - k)
                        wl = len - k;
                    memcpy(p + n + k, w, wl);
                    k += wl;
                }
                break;
            case 1: {
                uint64_t base = next_rand(&s) & ~0xFFFFULL;
                for (size_t k = 0; k + 8 <= len; k += 8) {
                    uint64_t w = base + (next_rand(&s) % 256) * 16;
                    memcpy(p + n + k, &w, 8);
                }
                break;
            }
            case 2:
                break; /* zero padding */
            default:
                for (size_t k = 0; k < len; k++)
                    p[n + k] = (unsigned char)next_rand(&s);
            }
            n += len;
        }
    }
}

struct config {
    const char *alg;
    int level, winbits;
    const void *dict;
    size_t dict_sz;
};

struct worker {
    struct zcomp *comp;
    const struct config *cfg;
    uint64_t seed;
    long round_trips;
};

static void round_trip(struct worker *w, uint64_t *s, unsigned char *obj, unsigned char *out)
{
    struct zcomp *comp = w->comp;
    const unsigned char *page = pages[next_rand(s) % NR_PAGES];
    struct zcomp_strm *a, *b;
    unsigned int len = 0;
    int ret;

    a = zcomp_stream_get(comp);
    CHECK(a, "%s: no stream", w->cfg->alg);
    ret = zcomp_compress(comp, a, page, &len);
    CHECK(ret == 0 && len > 0 && len <= 2 * P, "%s: compress ret %d len %u", w->cfg->alg, ret,
          len);
    memcpy(obj, a->buffer, len);

    /* hold a second stream while the first is out: the pool must hand out another */
    b = zcomp_stream_get(comp);
    CHECK(b && b != a, "%s: stream handed out twice", w->cfg->alg);
    ret = zcomp_decompress(comp, b, obj, len, out);
    CHECK(ret == 0, "%s: decompress of a good object: %d", w->cfg->alg, ret);
    CHECK(memcmp(out, page, P) == 0, "%s: round trip changed the page", w->cfg->alg);
    CHECK(memcmp(obj, a->buffer, len) == 0, "%s: another thread wrote our stream's buffer",
          w->cfg->alg);
    zcomp_stream_put(comp, b);

    /* truncated: always an error (every format ends with data it needs) */
    ret = zcomp_decompress(comp, a, obj, len - 1 - (unsigned int)(next_rand(s) % len), out);
    CHECK(ret == -EINVAL, "%s: truncated object decoded (%d)", w->cfg->alg, ret);
    /* a flipped bit: an error or some page, never a crash or an overrun (ASan) */
    obj[next_rand(s) % len] ^= (unsigned char)(1u << (next_rand(s) % 8));
    ret = zcomp_decompress(comp, a, obj, len, out);
    CHECK(ret == 0 || ret == -EINVAL, "%s: corrupt object: %d", w->cfg->alg, ret);
    /* a wrong size: an error */
    ret = zcomp_decompress_buf(comp, a, a->buffer, len, out, P - 1);
    CHECK(ret == -EINVAL, "%s: decoded to a wrong size (%d)", w->cfg->alg, ret);
    zcomp_stream_put(comp, a);
    w->round_trips++;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    unsigned char *obj = malloc(2 * P), *out = malloc(P);
    uint64_t s = w->seed;

    CHECK(obj && out, "out of memory");
    for (long i = 0; i < rounds; i++)
        round_trip(w, &s, obj, out);
    free(obj);
    free(out);
    return NULL;
}

/* Threads that make and free zcomps of their own while the workers run (lzo_init's once,
 * the registry, setup/release_params). */
static void *churn_main(void *arg)
{
    const struct config *cfg = arg;
    struct zcomp_error err;

    for (long i = 0; i < rounds / 20 + 1; i++) {
        struct zcomp *comp = zcomp_create(cfg->alg, cfg->level, cfg->winbits, cfg->dict,
                                          cfg->dict_sz, &err);
        struct zcomp_strm *zs;
        unsigned int len;

        CHECK(comp, "%s: create: %s", cfg->alg, err.msg);
        zs = zcomp_stream_get(comp);
        CHECK(zs && zcomp_compress(comp, zs, pages[i % NR_PAGES], &len) == 0, "%s: churn",
              cfg->alg);
        zcomp_stream_put(comp, zs);
        zcomp_destroy(comp);
    }
    return NULL;
}

static long run_config(const struct config *cfg)
{
    struct zcomp_error err;
    struct zcomp *comp = zcomp_create(cfg->alg, cfg->level, cfg->winbits, cfg->dict,
                                      cfg->dict_sz, &err);
    pthread_t tids[64], churn;
    struct worker workers[64];
    unsigned int total, idle;
    long done = 0;

    CHECK(comp, "%s: create: %s", cfg->alg, err.msg);
    for (int i = 0; i < nr_threads; i++) {
        workers[i] = (struct worker){comp, cfg, 0x1234567ULL * (uint64_t)(i + 1), 0};
        CHECK(pthread_create(&tids[i], NULL, worker_main, &workers[i]) == 0, "pthread_create");
    }
    CHECK(pthread_create(&churn, NULL, churn_main, (void *)cfg) == 0, "pthread_create");
    for (int i = 0; i < nr_threads; i++) {
        pthread_join(tids[i], NULL);
        done += workers[i].round_trips;
    }
    pthread_join(churn, NULL);
    zcomp_stream_counts(comp, &total, &idle);
    /* each worker holds at most two streams at once */
    CHECK(total >= 2 && total <= 2 * (unsigned int)nr_threads && idle == total,
          "%s: %u streams, %u idle after the run", cfg->alg, total, idle);
    zcomp_destroy(comp);
    return done;
}

static void check_bad_parameters(void)
{
    static const struct {
        const char *alg;
        int level, winbits;
        size_t dict_sz;
        int code;
        const char *msg;
    } cases[] = {
        {"snappy", ZCOMP_PARAM_NOT_SET, ZCOMP_PARAM_NOT_SET, 0, -EINVAL, "unknown"},
        {"lzo-rle", ZCOMP_PARAM_NOT_SET, ZCOMP_PARAM_NOT_SET, 0, -EOPNOTSUPP, "unavailable"},
        {"842", ZCOMP_PARAM_NOT_SET, ZCOMP_PARAM_NOT_SET, 0, -EOPNOTSUPP, "unavailable"},
        {"deflate", 10, ZCOMP_PARAM_NOT_SET, 0, -EINVAL, "deflate level 10 outside -1..9"},
        {"deflate", -2, ZCOMP_PARAM_NOT_SET, 0, -EINVAL, "deflate level -2 outside -1..9"},
        {"deflate", ZCOMP_PARAM_NOT_SET, 16, 0, -EINVAL, "deflate.winbits 16 outside"},
        {"deflate", ZCOMP_PARAM_NOT_SET, 8, 0, -EINVAL, "deflate.winbits 8 outside"},
        {"deflate", ZCOMP_PARAM_NOT_SET, -8, 0, -EINVAL, "deflate.winbits -8 outside"},
        {"deflate", ZCOMP_PARAM_NOT_SET, -16, 0, -EINVAL, "deflate.winbits -16 outside"},
        {"zstd", ZCOMP_PARAM_NOT_SET, ZCOMP_PARAM_NOT_SET, 8, -EINVAL,
         "zstd: the dictionary is not usable"},
    };
    struct zcomp_error err;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* the zstd dictionary magic (0xEC30A437), then an ID and no valid tables */
        struct zcomp *comp = zcomp_create(cases[i].alg, cases[i].level, cases[i].winbits,
                                          "\x37\xa4\x30\xec\x01\x02\x03\x04",
                                          cases[i].dict_sz, &err);
        CHECK(!comp, "%s accepted a bad parameter", cases[i].alg);
        CHECK(err.code == cases[i].code && strstr(err.msg, cases[i].msg),
              "%s: got %d \"%s\", want %d \"%s\"", cases[i].alg, err.code, err.msg,
              cases[i].code, cases[i].msg);
    }
}

int main(int argc, char **argv)
{
    static unsigned char dict[8 * P];
    struct config configs[32];
    int nr = 0;
    long total = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc)
            nr_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc)
            rounds = atol(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [-t THREADS] [-n ROUNDS]\n", argv[0]);
            return 2;
        }
    }
    CHECK(nr_threads >= 1 && nr_threads <= 64 && rounds >= 1, "bad arguments");
    make_pages();
    for (int i = 0; i < 8; i++) /* a raw-content zstd dictionary: pages like the data */
        memcpy(dict + (size_t)i * P, pages[3 + i * 5], P);
    check_bad_parameters();

#define NOT_SET ZCOMP_PARAM_NOT_SET
    for (int i = 0; i < zcomp_nr_backends(); i++) {
        const char *alg = zcomp_backend_name(i);
        if (zcomp_backend_unavailable(i))
            continue;
        configs[nr++] = (struct config){alg, NOT_SET, NOT_SET, NULL, 0};
    }
    configs[nr++] = (struct config){"lz4", 8, NOT_SET, NULL, 0};
    configs[nr++] = (struct config){"lz4hc", 1, NOT_SET, NULL, 0};
    configs[nr++] = (struct config){"zstd", -5, NOT_SET, NULL, 0};
    configs[nr++] = (struct config){"zstd", 19, NOT_SET, NULL, 0};
    configs[nr++] = (struct config){"zstd", 3, NOT_SET, dict, sizeof(dict)};
    configs[nr++] = (struct config){"zstd", NOT_SET, NOT_SET, dict, sizeof(dict)};
    configs[nr++] = (struct config){"lz4", -5, 99, dict, sizeof(dict)}; /* acts as 1 */
    configs[nr++] = (struct config){"lz4", 8, NOT_SET, dict + 3 * P, P};
    configs[nr++] = (struct config){"lz4", NOT_SET, NOT_SET, dict, 5}; /* too short to hash */
    configs[nr++] = (struct config){"lz4hc", 0, NOT_SET, dict, sizeof(dict)}; /* acts as 9 */
    configs[nr++] = (struct config){"lz4hc", 100, NOT_SET, dict + 6 * P, 2 * P}; /* 12 */
    configs[nr++] = (struct config){"lzo", 5, -3, dict, sizeof(dict)}; /* all ignored */
    configs[nr++] = (struct config){"zstd", 23, 12, NULL, 0}; /* acts as 22 */
    configs[nr++] = (struct config){"zstd", 0, NOT_SET, dict, sizeof(dict)}; /* acts as 3 */
    configs[nr++] = (struct config){"deflate", 9, -9, NULL, 0};
    configs[nr++] = (struct config){"deflate", 0, -15, NULL, 0};
    configs[nr++] = (struct config){"deflate", 1, 9, NULL, 0};
    configs[nr++] = (struct config){"deflate", NOT_SET, 15, dict, sizeof(dict)}; /* zlib */

    for (int i = 0; i < nr; i++) {
        long n = run_config(&configs[i]);
        char level[16] = "default", winbits[16] = "default";
        if (configs[i].level != NOT_SET)
            snprintf(level, sizeof(level), "%d", configs[i].level);
        if (configs[i].winbits != NOT_SET)
            snprintf(winbits, sizeof(winbits), "%d", configs[i].winbits);
        printf("%-8s level %-7s winbits %-7s dict %5zu B: %ld round trips\n", configs[i].alg,
               level, winbits, configs[i].dict_sz, n);
        total += n;
    }
    printf("stress_zcomp: ok (%d configurations, %d threads, %ld round trips)\n", nr,
           nr_threads, total);
    return 0;
}

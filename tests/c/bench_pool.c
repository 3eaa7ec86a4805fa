/*
 * bench_pool.c: the C pool alone (zramd/csrc/zsmalloc.c), no Python: thread scaling.
 *
 *     bench_pool THREADS BATCH RUNS < objects
 *
 * `objects` is a sequence of (u32 little-endian length, bytes) records: scripts/bench_pool.py
 * writes the realistic compressed pages it measures the Python pools with. Each of THREADS
 * threads stores every object (its own copies) in batches of BATCH, then loads them all, then
 * frees them all; barriers separate the phases. For each run and phase one line:
 *
 *     <phase> <threads> <objects per second of wall time> <objects per CPU-second>
 */
#include "zsmalloc.c"

#include <inttypes.h>

struct bench {
    struct zs_pool *pool;
    const unsigned char *const *src;
    const uint32_t *size;
    size_t nr;
    unsigned batch;
    pthread_barrier_t barrier;
};

static void *bench_thread(void *arg)
{
    struct bench *b = arg;
    uint64_t *handles = malloc(b->nr * sizeof(*handles));
    uint32_t *sizes = malloc(b->batch * sizeof(*sizes));
    unsigned char **dst = malloc(b->batch * sizeof(*dst));
    unsigned char *space = malloc((size_t)b->batch * ZS_MAX_ALLOC_SIZE);
    if (!handles || !sizes || !dst || !space) {
        perror("malloc");
        exit(1);
    }
    for (unsigned i = 0; i < b->batch; i++)
        dst[i] = space + (size_t)i * ZS_MAX_ALLOC_SIZE;
    pthread_barrier_wait(&b->barrier);
    for (size_t i = 0; i < b->nr; i += b->batch) {
        size_t n = b->nr - i < b->batch ? b->nr - i : b->batch;
        if (zs_store_many(b->pool, n, b->src + i, b->size + i, handles + i, NULL) != 0) {
            fprintf(stderr, "bench_pool: zs_store_many failed\n");
            exit(1);
        }
    }
    pthread_barrier_wait(&b->barrier);
    pthread_barrier_wait(&b->barrier);
    for (size_t i = 0; i < b->nr; i += b->batch) {
        size_t n = b->nr - i < b->batch ? b->nr - i : b->batch;
        if (zs_load_many(b->pool, n, handles + i, dst, sizes, NULL) != 0) {
            fprintf(stderr, "bench_pool: zs_load_many failed\n");
            exit(1);
        }
    }
    pthread_barrier_wait(&b->barrier);
    pthread_barrier_wait(&b->barrier);
    for (size_t i = 0; i < b->nr; i += b->batch) {
        size_t n = b->nr - i < b->batch ? b->nr - i : b->batch;
        if (zs_free_many(b->pool, n, handles + i, NULL) != 0) {
            fprintf(stderr, "bench_pool: zs_free_many failed\n");
            exit(1);
        }
    }
    pthread_barrier_wait(&b->barrier);
    free(handles);
    free(sizes);
    free(dst);
    free(space);
    return NULL;
}

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bench_pool THREADS BATCH RUNS < objects\n");
        return 2;
    }
    unsigned threads = (unsigned)atoi(argv[1]), batch = (unsigned)atoi(argv[2]);
    int runs = atoi(argv[3]);
    size_t nr = 0, cap = 1024;
    unsigned char **src = malloc(cap * sizeof(*src));
    uint32_t *size = malloc(cap * sizeof(*size));
    uint32_t len;
    while (fread(&len, sizeof(len), 1, stdin) == 1) {
        if (nr == cap) {
            cap *= 2;
            src = realloc(src, cap * sizeof(*src));
            size = realloc(size, cap * sizeof(*size));
        }
        if (!src || !size || !len || len > ZS_MAX_ALLOC_SIZE || !(src[nr] = malloc(len))
            || fread(src[nr], 1, len, stdin) != len) {
            fprintf(stderr, "bench_pool: bad object record %zu\n", nr);
            return 1;
        }
        size[nr++] = len;
    }
    static const char *const phases[] = {"store", "load", "free"};
    for (int run = 0; run < runs; run++) {
        struct bench b = {NULL, (const unsigned char *const *)src, size, nr, batch, {{0}}};
        b.pool = zs_create_pool((uint64_t)threads * nr * ZS_PAGE_SIZE * 2, 8, ZS_RELEASE_BATCH);
        pthread_barrier_init(&b.barrier, NULL, threads + 1);
        pthread_t *ids = malloc(threads * sizeof(*ids));
        for (unsigned t = 0; t < threads; t++)
            pthread_create(&ids[t], NULL, bench_thread, &b);
        for (int p = 0; p < 3; p++) {
            pthread_barrier_wait(&b.barrier);
            uint64_t t0 = now_ns(), c0 = cpu_ns();
            pthread_barrier_wait(&b.barrier);
            double wall = (double)(now_ns() - t0) / 1e9, cpu = (double)(cpu_ns() - c0) / 1e9;
            printf("%s %u %.0f %.0f\n", phases[p], threads, (double)(threads * nr) / wall,
                   (double)(threads * nr) / cpu);
        }
        for (unsigned t = 0; t < threads; t++)
            pthread_join(ids[t], NULL);
        if (zs_get_total_pages(b.pool) != 0) {
            fprintf(stderr, "bench_pool: frames left after freeing everything\n");
            return 1;
        }
        pthread_barrier_destroy(&b.barrier);
        zs_destroy_pool(b.pool);
        free(ids);
    }
    return 0;
}

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
 *     <phase> <threads> <objects/s of wall time> <objects per CPU-second>
 *             <share of thread time blocked> <share waiting for a CPU> <objects/s unqueued>
 *
 * From each thread's schedstat (CPU time, time runnable but waiting for a CPU): a thread's
 * phase time is its CPU time, its run-queue wait (other load on the machine) and the rest,
 * time blocked (a mutex, a page fault's sleep). "Unqueued" is the rate the phase would have
 * had if no thread had waited for a CPU: all threads' objects over the longest CPU + blocked
 * time. It says what the pool does with free cores on a machine that has none to spare.
 */
#include "zsmalloc.c"

#include <inttypes.h>

/* One thread's account of one phase, in ns: its own clocks, so that the phase is timed by
 * the threads doing it, not by a main thread that may itself be waiting for a CPU. */
struct account {
    uint64_t start, end, cpu, queued;
};

struct bench {
    struct zs_pool *pool;
    const unsigned char *const *src;
    const uint32_t *size;
    size_t nr;
    unsigned batch;
    pthread_barrier_t barrier;
    struct account *account; /* [thread * 3 + phase] */
    unsigned next_id;
};

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Time this thread has spent runnable but waiting for a CPU (schedstat's run_delay: exact as
 * of the thread's last switch-in, which is when it runs this). */
static uint64_t queued_ns(void)
{
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    unsigned long long cpu = 0, queued = 0;
    if (!f || fscanf(f, "%llu %llu", &cpu, &queued) != 2) {
        fprintf(stderr, "bench_pool: /proc/thread-self/schedstat unreadable\n");
        exit(1);
    }
    fclose(f);
    return queued;
}

/* Wait for phase `p` to start, run `work`, and account for it. */
#define PHASE(b, id, p, work)                                                                  \
    do {                                                                                       \
        pthread_barrier_wait(&(b)->barrier);                                                   \
        uint64_t q0_ = queued_ns(), t0_ = now_ns(), c0_ = thread_cpu_ns();                     \
        work;                                                                                  \
        uint64_t c1_ = thread_cpu_ns(), t1_ = now_ns(), q1_ = queued_ns();                     \
        (b)->account[(id) * 3 + (p)] = (struct account){t0_, t1_, c1_ - c0_, q1_ - q0_};      \
        pthread_barrier_wait(&(b)->barrier);                                                   \
    } while (0)

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
    unsigned id = __atomic_fetch_add(&b->next_id, 1, __ATOMIC_RELAXED);
    PHASE(b, id, 0, for (size_t i = 0; i < b->nr; i += b->batch) {
        size_t n = b->nr - i < b->batch ? b->nr - i : b->batch;
        if (zs_store_many(b->pool, n, b->src + i, b->size + i, handles + i, NULL) != 0) {
            fprintf(stderr, "bench_pool: zs_store_many failed\n");
            exit(1);
        }
    });
    PHASE(b, id, 1, for (size_t i = 0; i < b->nr; i += b->batch) {
        size_t n = b->nr - i < b->batch ? b->nr - i : b->batch;
        if (zs_load_many(b->pool, n, handles + i, dst, sizes, NULL) != 0) {
            fprintf(stderr, "bench_pool: zs_load_many failed\n");
            exit(1);
        }
    });
    PHASE(b, id, 2, for (size_t i = 0; i < b->nr; i += b->batch) {
        size_t n = b->nr - i < b->batch ? b->nr - i : b->batch;
        if (zs_free_many(b->pool, n, handles + i, NULL) != 0) {
            fprintf(stderr, "bench_pool: zs_free_many failed\n");
            exit(1);
        }
    });
    free(handles);
    free(sizes);
    free(dst);
    free(space);
    return NULL;
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
        struct bench b = {NULL, (const unsigned char *const *)src, size, nr, batch, {{0}},
                          calloc(threads * 3, sizeof(struct account)), 0};
        b.pool = zs_create_pool((uint64_t)threads * nr * ZS_PAGE_SIZE * 2, 8, ZS_RELEASE_BATCH);
        pthread_barrier_init(&b.barrier, NULL, threads + 1);
        pthread_t *ids = malloc(threads * sizeof(*ids));
        for (unsigned t = 0; t < threads; t++)
            pthread_create(&ids[t], NULL, bench_thread, &b);
        for (int p = 0; p < 3; p++) {
            pthread_barrier_wait(&b.barrier);
            pthread_barrier_wait(&b.barrier);
            uint64_t start = UINT64_MAX, end = 0, cpu = 0, sum_wall = 0, sum_blocked = 0,
                     sum_queued = 0, longest = 1;
            for (unsigned t = 0; t < threads; t++) {
                const struct account *a = &b.account[t * 3 + p];
                uint64_t wall = a->end - a->start, busy = a->cpu + a->queued;
                uint64_t blocked = wall > busy ? wall - busy : 0;
                start = a->start < start ? a->start : start;
                end = a->end > end ? a->end : end;
                cpu += a->cpu;
                sum_wall += wall;
                sum_blocked += blocked;
                sum_queued += a->queued;
                if (a->cpu + blocked > longest)
                    longest = a->cpu + blocked;
            }
            double objects = (double)threads * (double)nr;
            printf("%s %u %.0f %.0f %.3f %.3f %.0f\n", phases[p], threads,
                   objects / ((double)(end - start) / 1e9), objects / ((double)cpu / 1e9),
                   (double)sum_blocked / (double)sum_wall, (double)sum_queued / (double)sum_wall,
                   objects / ((double)longest / 1e9));
        }
        for (unsigned t = 0; t < threads; t++)
            pthread_join(ids[t], NULL);
        if (zs_get_total_pages(b.pool) != 0) {
            fprintf(stderr, "bench_pool: frames left after freeing everything\n");
            return 1;
        }
        pthread_barrier_destroy(&b.barrier);
        free(b.account);
        zs_destroy_pool(b.pool);
        free(ids);
    }
    return 0;
}

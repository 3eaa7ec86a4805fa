/* core_object.c - zramd._zram.Core: the Python face of zram.c.
 *
 * The contract is zramd/core.py's ZramCore, the pure-Python twin: same methods, same results,
 * same exceptions. Each method takes its arguments with the GIL, releases it once for the
 * whole operation in zram.c, and takes it back to build the result. The one thing done with
 * the GIL held in between is reading written-back pages, through the `backing_read` callable
 * the device gave: zram.c returns ZRAM_NEED_BACKING with no lock held, this file reads the
 * blocks and retries (writes) or copies them in (reads), then drops the pin.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <time.h>

#include "codec_object.h"
#include "module.h"
#include "zram.h"

typedef struct {
    PyObject_HEAD
    struct zram_core *z;
    uint64_t pages;
    PyObject *pool;         /* keeps the zs_pool alive */
    PyObject *comps;        /* tuple of 4: Codec or None */
    PyObject *backing_read; /* callable(list[int]) -> list[bytes], or None */
    PyObject *clock;        /* callable() -> seconds, or None for CLOCK_MONOTONIC */
    int pinned;             /* holds a pin on the pool (zram_pool_get) */
    int closed;             /* close() was called: errors name a device of 0 bytes */
} CoreObject;

static PyObject *InvalidIOError, *MemLimitError, *PoolExhaustedError, *CorruptionError,
    *CompressionError, *InvalidHandleError, *MemoryLockError, *CoreStats;

#define EXTENT_PAGES_MAX (1u << 16) /* one extents() call describes at most 256 MiB */

static int now_seconds(CoreObject *self, uint32_t *now)
{
    if (self->clock == Py_None) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        *now = (uint32_t)ts.tv_sec;
        return 0;
    }
    PyObject *r = PyObject_CallNoArgs(self->clock);
    if (!r)
        return -1;
    double t = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    *now = (uint32_t)(int64_t)t;
    return 0;
}

/* Raise the twin's exception for a negative result of zram.c. */
static PyObject *raise_rc(CoreObject *self, int rc, const char *what, uint64_t offset,
                          uint64_t len)
{
    switch (-rc) {
    case EINVAL:
    case ESHUTDOWN: {
        uint64_t size = rc == -ESHUTDOWN || self->closed ? 0 : self->pages << ZRAM_PAGE_SHIFT;
        PyErr_Format(InvalidIOError,
                     "%s of %llu bytes at offset %llu is outside the device (%llu bytes)", what,
                     (unsigned long long)len, (unsigned long long)offset,
                     (unsigned long long)size);
        break;
    }
    case ENOSPC: {
        struct zram_stats st;
        zram_get_stats(self->z, &st);
        PyErr_Format(MemLimitError,
                     "write refused: the pool would go over mem_limit (%llu pages) even after "
                     "compaction",
                     (unsigned long long)st.limit_pages);
        break;
    }
    case ENOMEM:
        PyErr_SetString(PoolExhaustedError,
                        "write refused: the pool's arena has no frame left even after compaction");
        break;
    case EBADMSG:
        PyErr_Format(CompressionError, "%s: a stored object failed to decompress", what);
        break;
    case ENOENT:
        PyErr_Format(InvalidHandleError, "%s: a slot holds a handle the pool does not know",
                     what);
        break;
    default:
        PyErr_Format(CorruptionError, "%s: %s", what, strerror(-rc));
    }
    return NULL;
}

/* -- arguments ------------------------------------------------------------------------------
 * Integers are taken whole, never truncated to 64 bits: an offset, length or index that does
 * not fit is outside the device, as it is for the twin. */

/* An integer argument as a u64: 0; 1 when it is negative or too big (no exception set); -1
 * with an exception when it is not an integer. */
static int u64_arg(PyObject *o, uint64_t *v)
{
    PyObject *n = PyNumber_Index(o);
    if (!n)
        return -1;
    *v = PyLong_AsUnsignedLongLong(n);
    Py_DECREF(n);
    if (*v == (uint64_t)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* An integer argument clamped to a u64: negative -> `low`, too big -> UINT64_MAX. An index
 * clamped with low = UINT64_MAX is one no device has, as a handle is one no slot holds. */
static int clamped_arg(PyObject *o, uint64_t low, uint64_t *v)
{
    int r = u64_arg(o, v);
    if (r <= 0)
        return r;
    PyObject *zero = PyLong_FromLong(0);
    if (!zero)
        return -1;
    int neg = PyObject_RichCompareBool(o, zero, Py_LT);
    Py_DECREF(zero);
    if (neg < 0)
        return -1;
    *v = neg ? low : UINT64_MAX;
    return 0;
}

/* The twin's InvalidIOError for a request whose offset or length does not fit 64 bits. */
static PyObject *refuse_request(CoreObject *self, const char *what, PyObject *offset,
                                PyObject *length)
{
    unsigned long long size = self->closed ? 0 : self->pages << ZRAM_PAGE_SHIFT;
    PyErr_Format(InvalidIOError, "%s of %S bytes at offset %S is outside the device (%llu bytes)",
                 what, length, offset, size);
    return NULL;
}

/* offset and length of a request: 0, or -1 with the exception raised. */
static int request_args(CoreObject *self, const char *what, PyObject *o, PyObject *l,
                        uint64_t *offset, uint64_t *length)
{
    int r1 = u64_arg(o, offset);
    if (r1 < 0)
        return -1;
    int r2 = u64_arg(l, length);
    if (r2 < 0)
        return -1;
    if (r1 || r2) {
        refuse_request(self, what, o, l);
        return -1;
    }
    return 0;
}

/* The twin's InvalidIOError for a slot operation zram.c refused, or for an index that does
 * not fit 64 bits (rc -EINVAL). */
static PyObject *refuse_slot(CoreObject *self, int rc, const char *what, PyObject *index)
{
    if (rc == -ESHUTDOWN || self->closed)
        PyErr_Format(InvalidIOError, "%s: the device was reset", what);
    else if (rc == -EINVAL)
        PyErr_Format(InvalidIOError, "%s: page %S is outside the device (%llu pages)", what, index,
                     (unsigned long long)self->pages);
    else
        raise_rc(self, rc, what, 0, 0);
    return NULL;
}

/* A count of frames (set_mem_limit, note_peak): 0, or -1 with ValueError / TypeError. */
static int frames_arg(const char *what, PyObject *o, uint64_t *pages)
{
    int r = u64_arg(o, pages);
    if (r > 0)
        PyErr_Format(PyExc_ValueError, "%s: %S pages is out of range", what, o);
    return r ? -1 : 0;
}

/* MemoryLockError for mlock's negative errno `rc`, naming what and how many MiB. */
static PyObject *raise_lock_error(int rc, const char *what, unsigned long long mib)
{
    PyObject *e = PyObject_CallFunction(MemoryLockError, "Ni",
                                        PyUnicode_FromFormat("%s (%llu MiB) failed: %s", what,
                                                             mib, strerror(-rc)),
                                        -rc);
    if (e) {
        PyErr_SetObject(MemoryLockError, e);
        Py_DECREF(e);
    }
    return NULL;
}

/* Read the blocks `need` lists through backing_read: a bytes object of n pages, or NULL. */
static PyObject *fetch_blocks(CoreObject *self, const struct zram_wb_need *need)
{
    if (self->backing_read == Py_None) {
        PyErr_SetString(CorruptionError, "a slot is written back but no backing store is set");
        return NULL;
    }
    PyObject *blocks = PyList_New((Py_ssize_t)need->n);
    if (!blocks)
        return NULL;
    for (size_t k = 0; k < need->n; k++) {
        PyObject *b = PyLong_FromUnsignedLongLong(need->pages[k].block);
        if (!b) {
            Py_DECREF(blocks);
            return NULL;
        }
        PyList_SET_ITEM(blocks, (Py_ssize_t)k, b);
    }
    PyObject *pages = PyObject_CallOneArg(self->backing_read, blocks);
    Py_DECREF(blocks);
    if (!pages)
        return NULL;
    PyObject *joined = NULL;
    PyObject *seq = PySequence_Fast(pages, "backing_read must return a sequence of pages");
    Py_DECREF(pages);
    if (!seq)
        return NULL;
    if ((size_t)PySequence_Fast_GET_SIZE(seq) != need->n) {
        PyErr_SetString(CorruptionError, "backing_read returned the wrong number of pages");
        goto out;
    }
    joined = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(need->n * ZRAM_PAGE_SIZE));
    if (!joined)
        goto out;
    for (size_t k = 0; k < need->n; k++) {
        Py_buffer b;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)k), &b, PyBUF_SIMPLE))
            goto bad;
        int ok = b.len == ZRAM_PAGE_SIZE;
        if (ok)
            memcpy(PyBytes_AS_STRING(joined) + k * ZRAM_PAGE_SIZE, b.buf, ZRAM_PAGE_SIZE);
        PyBuffer_Release(&b);
        if (!ok) {
            PyErr_SetString(CorruptionError, "backing_read returned a page not 4096 bytes long");
            goto bad;
        }
    }
    goto out;
bad:
    Py_CLEAR(joined);
out:
    Py_DECREF(seq);
    return joined;
}

/* -- construction --------------------------------------------------------------------------- */

static int core_init(CoreObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"pages", "pool", "comps", "backing_read", "clock", NULL};
    uint64_t pages;
    PyObject *pages_obj, *pool, *comps, *backing_read = Py_None, *clock = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$OO:Core", kwlist, &pages_obj, &pool, &comps,
                                     &backing_read, &clock))
        return -1;
    if (self->z) {
        PyErr_SetString(PyExc_RuntimeError, "Core is already initialised");
        return -1;
    }
    int r = u64_arg(pages_obj, &pages);
    if (r < 0)
        return -1;
    if (r || pages > (UINT64_MAX >> ZRAM_PAGE_SHIFT)) {
        PyErr_Format(PyExc_ValueError, "pages %S outside 0..%llu", pages_obj,
                     (unsigned long long)(UINT64_MAX >> ZRAM_PAGE_SHIFT));
        return -1;
    }
    PyObject *t = PySequence_Tuple(comps);
    if (!t)
        return -1;
    struct zcomp *zc[ZRAM_MAX_COMPS] = {0};
    if (PyTuple_GET_SIZE(t) > ZRAM_MAX_COMPS || PyTuple_GET_SIZE(t) < 1 ||
        PyTuple_GET_ITEM(t, 0) == Py_None) {
        PyErr_SetString(PyExc_ValueError,
                        "comps: one to four codecs by priority, the primary required");
        goto fail;
    }
    for (Py_ssize_t p = 0; p < PyTuple_GET_SIZE(t); p++) {
        PyObject *c = PyTuple_GET_ITEM(t, p);
        if (c == Py_None)
            continue;
        zc[p] = zram_codec_get(c);
        if (!zc[p])
            goto fail;
    }
    struct zs_pool *zp = zram_pool_get(pool); /* pinned until close */
    if (!zp)
        goto fail;
    struct zram_core *z;
    Py_BEGIN_ALLOW_THREADS
    z = zram_create(pages, zp, zc);
    Py_END_ALLOW_THREADS
    if (!z) {
        zram_pool_put(pool);
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    self->z = z;
    self->pages = pages;
    Py_INCREF(pool);
    self->pool = pool;
    self->pinned = 1;
    self->comps = t;
    Py_INCREF(backing_read);
    self->backing_read = backing_read;
    Py_INCREF(clock);
    self->clock = clock;
    return 0;
fail:
    Py_DECREF(t);
    return -1;
}

/* The core is done with the pool: drop the pin so that Pool.close() may go ahead. */
static void unpin(CoreObject *self)
{
    if (self->pinned) {
        self->pinned = 0;
        zram_pool_put(self->pool);
    }
}

static int core_traverse(CoreObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pool);
    Py_VISIT(self->comps);
    Py_VISIT(self->backing_read);
    Py_VISIT(self->clock);
    return 0;
}

static int core_clear(CoreObject *self)
{
    Py_CLEAR(self->backing_read);
    Py_CLEAR(self->clock);
    return 0;
}

static void core_dealloc(CoreObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->z) {
        Py_BEGIN_ALLOW_THREADS
        zram_destroy(self->z);
        Py_END_ALLOW_THREADS
    }
    unpin(self);
    Py_CLEAR(self->pool);
    Py_CLEAR(self->comps);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(CoreObject *self)
{
    if (!self->z) {
        PyErr_SetString(PyExc_RuntimeError, "Core is not initialised");
        return 0;
    }
    return 1;
}

/* -- data path ------------------------------------------------------------------------------ */

/* A write-like request: data to write, or zeros (hole: free whole pages; discard: leave
 * partial pages alone). run_update reads the written-back pages it must patch and retries. */
struct upd {
    const unsigned char *src;
    int hole, discard;
};

static int run_update(CoreObject *self, uint64_t offset, uint64_t len, const struct upd *u,
                      const char *what)
{
    uint32_t now;
    if (now_seconds(self, &now))
        return -1;
    struct zram_wb_need need = {0};
    struct zram_wb_have have = {0};
    struct zram_wb_page *have_pages = NULL;
    PyObject *data = NULL, *have_data = NULL;
    int pins[2] = {0, 0}, rc; /* ZRAM_NEED_BACKING results, by the generation they pinned */
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (u->src)
            rc = zram_write(self->z, offset, u->src, len, now, have.n ? &have : NULL, &need);
        else
            rc = zram_zero(self->z, offset, len, u->hole, u->discard, now,
                           have.n ? &have : NULL, &need);
        Py_END_ALLOW_THREADS
        if (rc != ZRAM_NEED_BACKING)
            break;
        pins[need.pinned - 1]++;
        Py_XDECREF(data);
        data = fetch_blocks(self, &need);
        if (!data) {
            rc = -1;
            break;
        }
        /* what was fetched before stays: an edge's page may change between tries */
        struct zram_wb_page *more = realloc(have_pages, (have.n + need.n) * sizeof *more);
        PyObject *joined = more ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((have.n + need.n)
                                                                            * ZRAM_PAGE_SIZE))
                                : PyErr_NoMemory();
        if (more)
            have_pages = more;
        if (!joined) {
            rc = -1;
            break;
        }
        if (have.n)
            memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(have_data),
                   have.n * ZRAM_PAGE_SIZE);
        memcpy(PyBytes_AS_STRING(joined) + have.n * ZRAM_PAGE_SIZE, PyBytes_AS_STRING(data),
               need.n * ZRAM_PAGE_SIZE);
        memcpy(have_pages + have.n, need.pages, need.n * sizeof *have_pages);
        Py_XSETREF(have_data, joined);
        have.pages = have_pages;
        have.n += need.n;
        have.data = (const unsigned char *)PyBytes_AS_STRING(have_data);
    }
    for (int g = 0; g < 2; g++)
        while (pins[g]--)
            zram_wb_done(self->z, g + 1);
    Py_XDECREF(data);
    Py_XDECREF(have_data);
    free(have_pages);
    zram_wb_need_free(&need);
    if (rc == -1 && PyErr_Occurred()) {
        zram_count_failed(self->z, 0);
        return -1;
    }
    if (rc < 0) {
        raise_rc(self, rc, what, offset, len);
        return -1;
    }
    return 0;
}

static PyObject *core_write(CoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t offset;
    Py_buffer b;
    if (!ready(self))
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write(offset, data)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &b, PyBUF_SIMPLE))
        return NULL;
    int rc = u64_arg(args[0], &offset);
    if (rc > 0) {
        PyObject *len = PyLong_FromSsize_t(b.len);
        if (len) {
            refuse_request(self, "write", args[0], len);
            Py_DECREF(len);
        }
        rc = -1;
    }
    /* an empty write too goes through zram.c: outside the device or closed, it fails */
    struct upd u = {b.buf ? b.buf : (const unsigned char *)"", 0, 0};
    if (!rc)
        rc = run_update(self, offset, (uint64_t)b.len, &u, "write");
    PyBuffer_Release(&b);
    if (rc)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *zero_like(CoreObject *self, PyObject *o, PyObject *l, int hole, int discard,
                           const char *what)
{
    uint64_t offset, length;
    if (!ready(self) || request_args(self, what, o, l, &offset, &length))
        return NULL;
    struct upd u = {NULL, hole, discard};
    if (run_update(self, offset, length, &u, what))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *core_discard(CoreObject *self, PyObject *args)
{
    PyObject *o, *l;
    if (!PyArg_ParseTuple(args, "OO:discard", &o, &l))
        return NULL;
    return zero_like(self, o, l, 1, 1, "discard");
}

static PyObject *core_write_zeroes(CoreObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"offset", "length", "may_trim", NULL};
    PyObject *o, *l;
    int may_trim = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$p:write_zeroes", kwlist, &o, &l, &may_trim))
        return NULL;
    return zero_like(self, o, l, may_trim, 0, "write_zeroes");
}

static PyObject *core_read_into(CoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b;
    if (!ready(self))
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_into(offset, buf)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &b, PyBUF_WRITABLE))
        return NULL;
    uint64_t offset;
    int r = u64_arg(args[0], &offset);
    if (r) {
        PyObject *len = r > 0 ? PyLong_FromSsize_t(b.len) : NULL;
        if (len) {
            refuse_request(self, "read", args[0], len);
            Py_DECREF(len);
        }
        PyBuffer_Release(&b);
        return NULL;
    }
    uint32_t now;
    if (now_seconds(self, &now)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    struct zram_wb_need need = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = zram_read(self->z, offset, b.buf, (size_t)b.len, now, &need);
    Py_END_ALLOW_THREADS
    if (rc == ZRAM_NEED_BACKING) {
        PyObject *data = fetch_blocks(self, &need);
        if (data) {
            /* copy each page's part of the request */
            uint64_t end = offset + (uint64_t)b.len;
            for (size_t k = 0; k < need.n; k++) {
                uint64_t start = need.pages[k].index << ZRAM_PAGE_SHIFT;
                uint64_t lo = offset > start ? offset - start : 0;
                uint64_t hi = end < start + ZRAM_PAGE_SIZE ? end - start : ZRAM_PAGE_SIZE;
                memcpy((unsigned char *)b.buf + (start + lo - offset),
                       PyBytes_AS_STRING(data) + k * ZRAM_PAGE_SIZE + lo, hi - lo);
            }
            Py_DECREF(data);
            rc = 0;
        } else {
            zram_count_failed(self->z, 1);
            rc = -1;
        }
        zram_wb_done(self->z, need.pinned);
    }
    zram_wb_need_free(&need);
    PyBuffer_Release(&b);
    if (rc == -1)
        return NULL;
    if (rc < 0)
        return raise_rc(self, rc, "read", offset, (uint64_t)b.len);
    Py_RETURN_NONE;
}

static PyObject *core_extents(CoreObject *self, PyObject *args)
{
    PyObject *o, *l;
    uint64_t offset, length;
    if (!ready(self) || !PyArg_ParseTuple(args, "OO:extents", &o, &l) ||
        request_args(self, "extents", o, l, &offset, &length))
        return NULL;
    uint64_t size = self->pages << ZRAM_PAGE_SHIFT;
    if (offset > size || length > size - offset)
        return raise_rc(self, -EINVAL, "extents", offset, length);
    uint64_t first = offset >> ZRAM_PAGE_SHIFT;
    uint64_t stop = (offset + (length ? length : 1) + ZRAM_PAGE_SIZE - 1) >> ZRAM_PAGE_SHIFT;
    if (stop > first + EXTENT_PAGES_MAX)
        stop = first + EXTENT_PAGES_MAX;
    if (stop > self->pages) /* an empty request at the end: no page to describe */
        stop = self->pages;
    int cap = (int)(stop - first);
    uint64_t *runs = PyMem_Malloc((size_t)(cap ? cap : 1) * 3 * sizeof *runs);
    if (!runs)
        return PyErr_NoMemory();
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = zram_extents(self->z, first, stop, runs, cap);
    Py_END_ALLOW_THREADS
    if (n < 0) {
        PyMem_Free(runs);
        return raise_rc(self, n, "extents", offset, length);
    }
    PyObject *out = PyList_New(n);
    for (int k = 0; out && k < n; k++) {
        PyObject *t = Py_BuildValue("(KKi)", (unsigned long long)(runs[3 * k] << ZRAM_PAGE_SHIFT),
                                    (unsigned long long)(runs[3 * k + 1] << ZRAM_PAGE_SHIFT),
                                    (int)runs[3 * k + 2]);
        if (!t)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, k, t);
    }
    PyMem_Free(runs);
    return out;
}

/* -- slot operations ------------------------------------------------------------------------ */

static PyObject *u64_list(const uint64_t *v, size_t n)
{
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t k = 0; out && k < n; k++) {
        PyObject *x = PyLong_FromUnsignedLongLong(v[k]);
        if (!x)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, (Py_ssize_t)k, x);
    }
    return out;
}

static PyObject *core_mark_idle(CoreObject *self, PyObject *args)
{
    PyObject *cut = Py_None;
    if (!ready(self) || !PyArg_ParseTuple(args, "|O", &cut))
        return NULL;
    long long cutoff = -1;
    if (cut != Py_None) {
        int overflow;
        cutoff = PyLong_AsLongLongAndOverflow(cut, &overflow);
        if (cutoff == -1 && PyErr_Occurred())
            return NULL;
        if (overflow > 0)
            cutoff = -1; /* everything was accessed before it: as with no cutoff */
        else if (cutoff < 0 || overflow < 0)
            cutoff = 0; /* nothing was accessed before it: every slot is newer */
    }
    int64_t n;
    Py_BEGIN_ALLOW_THREADS
    n = zram_mark_idle(self->z, cutoff);
    Py_END_ALLOW_THREADS
    if (n < 0)
        return refuse_slot(self, (int)n, "idle", Py_None);
    return PyLong_FromLongLong(n);
}

static PyObject *core_pick(CoreObject *self, PyObject *args)
{
    PyObject *lo_obj, *hi_obj, *need_obj, *skip_obj;
    uint64_t lo, hi, need, skip;
    if (!ready(self) ||
        !PyArg_ParseTuple(args, "OOOO:pick", &lo_obj, &hi_obj, &need_obj, &skip_obj) ||
        clamped_arg(lo_obj, 0, &lo) || clamped_arg(hi_obj, 0, &hi))
        return NULL;
    int r1 = u64_arg(need_obj, &need), r2 = r1 < 0 ? 0 : u64_arg(skip_obj, &skip);
    if (r1 < 0 || r2 < 0)
        return NULL;
    if (r1 || r2 || need > UINT32_MAX || skip > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "pick: flags %S / %S are not 32-bit", need_obj, skip_obj);
        return NULL;
    }
    uint64_t *idx = NULL;
    size_t n = 0, cap = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = zram_pick(self->z, lo, hi, (uint32_t)need, (uint32_t)skip, &idx, &n, &cap);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (rc) {
        for (size_t k = 0; k < n / 2; k++) /* the indices, packed in place */
            idx[k] = idx[2 * k];
        zram_unpick(self->z, idx, n / 2);
        refuse_slot(self, rc, "pick", Py_None);
    } else {
        out = PyList_New((Py_ssize_t)(n / 2));
        for (size_t k = 0; out && k < n / 2; k++) {
            PyObject *t = Py_BuildValue("(KI)", (unsigned long long)idx[2 * k],
                                        (unsigned int)idx[2 * k + 1]);
            if (!t)
                Py_CLEAR(out);
            else
                PyList_SET_ITEM(out, (Py_ssize_t)k, t);
        }
        if (!out) {
            for (size_t k = 0; k < n / 2; k++)
                idx[k] = idx[2 * k];
            zram_unpick(self->z, idx, n / 2);
        }
    }
    free(idx);
    return out;
}

static int u64_array(PyObject *seq_in, uint64_t **out, size_t *n)
{
    PyObject *seq = PySequence_Fast(seq_in, "expected a sequence of integers");
    if (!seq)
        return -1;
    *n = (size_t)PySequence_Fast_GET_SIZE(seq);
    *out = PyMem_Malloc((*n ? *n : 1) * sizeof **out);
    if (!*out) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t k = 0; k < *n; k++) {
        if (clamped_arg(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)k), UINT64_MAX, &(*out)[k])) {
            PyMem_Free(*out);
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

static PyObject *core_unpick(CoreObject *self, PyObject *arg)
{
    uint64_t *idx;
    size_t n;
    if (!ready(self) || u64_array(arg, &idx, &n))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    zram_unpick(self->z, idx, n);
    Py_END_ALLOW_THREADS
    PyMem_Free(idx);
    Py_RETURN_NONE;
}

static PyObject *core_take_page(CoreObject *self, PyObject *arg)
{
    uint64_t index;
    if (!ready(self) || clamped_arg(arg, UINT64_MAX, &index))
        return NULL;
    PyObject *page = PyBytes_FromStringAndSize(NULL, ZRAM_PAGE_SIZE);
    if (!page)
        return NULL;
    uint32_t flags = 0;
    uint64_t handle = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = zram_take_page(self->z, index, &flags, &handle, (unsigned char *)PyBytes_AS_STRING(page));
    Py_END_ALLOW_THREADS
    if (rc <= 0) {
        Py_DECREF(page);
        if (rc < 0)
            return refuse_slot(self, rc, "take_page", arg);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(IKN)", flags, (unsigned long long)handle, page);
}

static PyObject *core_complete_writeback(CoreObject *self, PyObject *args)
{
    PyObject *index_obj, *handle_obj, *block_obj;
    uint64_t index, handle, block;
    if (!ready(self) ||
        !PyArg_ParseTuple(args, "OOO:complete_writeback", &index_obj, &handle_obj, &block_obj))
        return NULL;
    int r = u64_arg(block_obj, &block);
    if (r > 0)
        PyErr_Format(PyExc_ValueError, "complete_writeback: block %S is out of range", block_obj);
    if (r || clamped_arg(index_obj, UINT64_MAX, &index) ||
        clamped_arg(handle_obj, UINT64_MAX, &handle))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = zram_complete_writeback(self->z, index, handle, block);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return refuse_slot(self, rc, "writeback", index_obj);
    return PyBool_FromLong(rc);
}

static PyObject *core_tried(CoreObject *self, PyObject *args)
{
    PyObject *index_obj, *handle_obj;
    uint64_t index, handle;
    int incompressible;
    if (!ready(self) ||
        !PyArg_ParseTuple(args, "OOp:tried", &index_obj, &handle_obj, &incompressible) ||
        clamped_arg(index_obj, UINT64_MAX, &index) ||
        clamped_arg(handle_obj, UINT64_MAX, &handle))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    zram_tried(self->z, index, handle, incompressible);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *core_complete_recompress(CoreObject *self, PyObject *args)
{
    PyObject *index_obj, *handle_obj, *new_obj, *size_obj, *prio_obj;
    uint64_t index, handle, newh, size, prio;
    if (!ready(self) || !PyArg_ParseTuple(args, "OOOOO:complete_recompress", &index_obj,
                                          &handle_obj, &new_obj, &size_obj, &prio_obj))
        return NULL;
    int r = u64_arg(size_obj, &size);
    if (r > 0 || (!r && (!size || size > ZRAM_PAGE_SIZE)))
        return PyErr_Format(PyExc_ValueError, "complete_recompress: size %S outside 1..%u",
                            size_obj, ZRAM_PAGE_SIZE);
    if (r < 0 || (r = u64_arg(prio_obj, &prio)) < 0)
        return NULL;
    /* a priority with no codec would leave the page unreadable */
    if (r || prio >= (uint64_t)PyTuple_GET_SIZE(self->comps) ||
        PyTuple_GET_ITEM(self->comps, (Py_ssize_t)prio) == Py_None)
        return PyErr_Format(PyExc_ValueError, "complete_recompress: priority %S has no codec",
                            prio_obj);
    if ((r = u64_arg(new_obj, &newh)) < 0)
        return NULL;
    if (r || !newh)
        return PyErr_Format(PyExc_ValueError, "complete_recompress: handle %S is out of range",
                            new_obj);
    if (clamped_arg(index_obj, UINT64_MAX, &index) ||
        clamped_arg(handle_obj, UINT64_MAX, &handle))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = zram_complete_recompress(self->z, index, handle, newh, (uint32_t)size, (int)prio);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return refuse_slot(self, rc, "recompress", index_obj);
    return PyBool_FromLong(rc);
}

static PyObject *core_reclaim_blocks(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!ready(self))
        return NULL;
    /* each call hands out the newest blocks left: the parts are joined oldest first, so the
     * blocks come back in the order they were freed, as the twin's do */
    PyObject *parts = PyList_New(0);
    uint64_t buf[256];
    size_t n;
    while (parts && (n = zram_reclaim_blocks(self->z, buf, 256)) > 0) {
        PyObject *part = u64_list(buf, n);
        if (!part || PyList_Append(parts, part))
            Py_CLEAR(parts);
        Py_XDECREF(part);
        if (n < 256)
            break;
    }
    if (!parts)
        return NULL;
    PyObject *out = PyList_New(0);
    for (Py_ssize_t k = PyList_GET_SIZE(parts) - 1; out && k >= 0; k--)
        if (PyList_SetSlice(out, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, PyList_GET_ITEM(parts, k)))
            Py_CLEAR(out);
    Py_DECREF(parts);
    return out;
}

/* -- limits and statistics ------------------------------------------------------------------ */

static PyObject *core_set_mem_limit(CoreObject *self, PyObject *arg)
{
    uint64_t pages;
    if (!ready(self) || frames_arg("set_mem_limit", arg, &pages))
        return NULL;
    zram_set_limit(self->z, pages);
    Py_RETURN_NONE;
}

static PyObject *core_reset_max(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!ready(self))
        return NULL;
    zram_reset_max(self->z);
    Py_RETURN_NONE;
}

static PyObject *core_note_peak(CoreObject *self, PyObject *arg)
{
    uint64_t pages;
    if (!ready(self) || frames_arg("note_peak", arg, &pages))
        return NULL;
    zram_note_peak(self->z, pages);
    Py_RETURN_NONE;
}

static PyObject *core_stats(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!ready(self))
        return NULL;
    struct zram_stats s;
    Py_BEGIN_ALLOW_THREADS
    zram_get_stats(self->z, &s);
    Py_END_ALLOW_THREADS
    return PyObject_CallFunction(CoreStats, "LLLLLLKKKKKKK", (long long)s.stored,
                                 (long long)s.compr, (long long)s.same, (long long)s.huge,
                                 (long long)s.huge_since, (long long)s.notify_free,
                                 (unsigned long long)s.failed_reads,
                                 (unsigned long long)s.failed_writes,
                                 (unsigned long long)s.direct_runs,
                                 (unsigned long long)s.direct_freed,
                                 (unsigned long long)s.max_pages,
                                 (unsigned long long)s.limit_pages,
                                 (unsigned long long)s.wb_pending);
}

static PyObject *core_slot(CoreObject *self, PyObject *arg)
{
    uint64_t index;
    if (!ready(self) || clamped_arg(arg, UINT64_MAX, &index))
        return NULL;
    uint64_t handle;
    uint32_t flags, actime;
    int rc = zram_slot(self->z, index, &handle, &flags, &actime);
    if (rc)
        return refuse_slot(self, rc, "slot", arg);
    return Py_BuildValue("(KII)", (unsigned long long)handle, flags, actime);
}

static PyObject *core_lock_table(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!ready(self))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = zram_lock_table(self->z);
    Py_END_ALLOW_THREADS
    if (rc)
        return raise_lock_error(rc, "lock_table: mlock of the slot table",
                                (self->pages * 16) >> 20);
    Py_RETURN_NONE;
}

static PyObject *core_prepare_thread(CoreObject *self, PyObject *arg)
{
    if (!ready(self))
        return NULL;
    Py_ssize_t max_len = PyLong_AsSsize_t(arg);
    if (max_len == -1 && PyErr_Occurred())
        return NULL;
    if (max_len < 0)
        return PyErr_Format(PyExc_ValueError, "prepare_thread(%zd): a negative length", max_len);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = zram_prepare_thread(self->z, (size_t)max_len);
    Py_END_ALLOW_THREADS
    if (rc == -ENOMEM)
        return PyErr_NoMemory();
    if (rc)
        return raise_rc(self, rc, "prepare_thread", 0, 0);
    Py_RETURN_NONE;
}

static PyObject *core_close(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->z) {
        self->closed = 1;
        Py_BEGIN_ALLOW_THREADS
        zram_close(self->z);
        Py_END_ALLOW_THREADS
        unpin(self);
    }
    Py_RETURN_NONE;
}

static PyObject *core_get_pages(CoreObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->pages);
}

static PyObject *core_get_pool(CoreObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->pool ? self->pool : Py_None);
}

/* Docstrings start with the signature (inspect.signature reads it): the same parameters as
 * zramd/core.py's ZramCore, which tests/test_core_api.py checks against CoreAPI. */
static PyMethodDef core_methods[] = {
    {"write", (PyCFunction)(void (*)(void))core_write, METH_FASTCALL,
     "write($self, offset, data, /)\n--\n\nStore data at offset; all or nothing."},
    {"read_into", (PyCFunction)(void (*)(void))core_read_into, METH_FASTCALL,
     "read_into($self, offset, buf, /)\n--\n\nFill buf from offset."},
    {"discard", (PyCFunction)core_discard, METH_VARARGS,
     "discard($self, offset, length, /)\n--\n\nFree the whole pages in the range."},
    {"write_zeroes", (PyCFunction)(void (*)(void))core_write_zeroes, METH_VARARGS | METH_KEYWORDS,
     "write_zeroes($self, offset, length, *, may_trim=True)\n--\n\n"
     "Make the range read as zeros."},
    {"extents", (PyCFunction)core_extents, METH_VARARGS,
     "extents($self, offset, length, /)\n--\n\n"
     "NBD block status: [(offset, length, type)] from offset."},
    {"mark_idle", (PyCFunction)core_mark_idle, METH_VARARGS,
     "mark_idle($self, cutoff=None, /)\n--\n\nMark stored objects IDLE; how many."},
    {"pick", (PyCFunction)core_pick, METH_VARARGS,
     "pick($self, lo, hi, need, skip, /)\n--\n\n"
     "Flag PP_SLOT on the candidates in [lo, hi); [(index, flags before)]."},
    {"unpick", (PyCFunction)core_unpick, METH_O,
     "unpick($self, picked, /)\n--\n\nDrop PP_SLOT from these slots."},
    {"take_page", (PyCFunction)core_take_page, METH_O,
     "take_page($self, index, /)\n--\n\n(flags, handle, page) of a slot still picked, or None."},
    {"complete_writeback", (PyCFunction)core_complete_writeback, METH_VARARGS,
     "complete_writeback($self, index, handle, block, /)\n--\n\n"
     "Switch a picked slot to WB with block unless it changed."},
    {"tried", (PyCFunction)core_tried, METH_VARARGS,
     "tried($self, index, handle, incompressible, /)\n--\n\n"
     "No algorithm improved the slot: drop PP_SLOT and IDLE."},
    {"complete_recompress", (PyCFunction)core_complete_recompress, METH_VARARGS,
     "complete_recompress($self, index, handle, new, size, prio, /)\n--\n\n"
     "Install a recompressed object unless the slot changed."},
    {"reclaim_blocks", (PyCFunction)core_reclaim_blocks, METH_NOARGS,
     "reclaim_blocks($self, /)\n--\n\nBlocks freed by I/O, safe to reuse."},
    {"set_mem_limit", (PyCFunction)core_set_mem_limit, METH_O,
     "set_mem_limit($self, pages, /)\n--\n\nThe pool's limit in frames (0: none)."},
    {"reset_max", (PyCFunction)core_reset_max, METH_NOARGS,
     "reset_max($self, /)\n--\n\nmem_used_max := the pool's current frames."},
    {"note_peak", (PyCFunction)core_note_peak, METH_O,
     "note_peak($self, pages, /)\n--\n\nRaise mem_used_max to pages if higher."},
    {"stats", (PyCFunction)core_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nThe counters (CoreStats)."},
    {"slot", (PyCFunction)core_slot, METH_O,
     "slot($self, index, /)\n--\n\n(handle, flags, actime) of one slot."},
    {"lock_table", (PyCFunction)core_lock_table, METH_NOARGS,
     "lock_table($self, /)\n--\n\nFault in and mlock the slot table (swap mode); MemoryLockError."},
    {"prepare_thread", (PyCFunction)core_prepare_thread, METH_O,
     "prepare_thread($self, max_bytes, /)\n--\n\n"
     "Ready the calling thread to serve writes of up to max_bytes with no allocation\n"
     "(swap mode)."},
    {"close", (PyCFunction)core_close, METH_NOARGS,
     "close($self, /)\n--\n\nWait for requests in flight; then every call fails."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef core_getset[] = {
    {"pages", (getter)core_get_pages, NULL, "slots in the table", NULL},
    {"pool", (getter)core_get_pool, NULL, "the pool the objects live in", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zramd._zram.Core",
    .tp_basicsize = sizeof(CoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Core(pages, pool, comps, *, backing_read=None, clock=None)\n--\n\n"
              "The slot table and per-request loops of one initialised device (zram.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_getset = core_getset,
};

static int import_names(void)
{
    PyObject *errors = PyImport_ImportModule("zramd.errors");
    if (!errors)
        return -1;
    struct {
        PyObject **dst;
        const char *name;
    } names[] = {
        {&InvalidIOError, "InvalidIOError"},         {&MemLimitError, "MemLimitError"},
        {&PoolExhaustedError, "PoolExhaustedError"}, {&CorruptionError, "CorruptionError"},
        {&CompressionError, "CompressionError"},     {&InvalidHandleError, "InvalidHandleError"},
        {&MemoryLockError, "MemoryLockError"},
    };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        *names[k].dst = PyObject_GetAttrString(errors, names[k].name);
        if (!*names[k].dst) {
            Py_DECREF(errors);
            return -1;
        }
    }
    Py_DECREF(errors);
    PyObject *stats = PyImport_ImportModule("zramd.stats");
    if (!stats)
        return -1;
    CoreStats = PyObject_GetAttrString(stats, "CoreStats");
    Py_DECREF(stats);
    return CoreStats ? 0 : -1;
}

int zram_register_core(PyObject *module)
{
    if (import_names() || PyType_Ready(&CoreType))
        return -1;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(module, "Core", (PyObject *)&CoreType)) {
        Py_DECREF(&CoreType);
        return -1;
    }
    return 0;
}

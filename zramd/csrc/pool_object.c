/*
 * pool_object.c: zramd._zram.Pool, the Python face of zsmalloc.c.
 *
 * Its contract is ZsPool's (zramd/pool.py; zramd/pool_api.py lists it and a test holds both
 * to it): the same methods, results and exceptions. A call converts its arguments with the
 * GIL held, releases the GIL once for the whole batch while zsmalloc.c works under its own
 * mutexes, and takes the GIL back to build the results. zsmalloc.c never calls into Python,
 * and no pool mutex is held while Python code runs.
 *
 * close() against calls in flight: every call holds `gate` for reading from start to end;
 * close() raises `closing` (new calls are refused from then on, so a stream of calls cannot
 * starve it) and takes the gate for writing, with the GIL released, before it unmaps. No
 * thread blocks on the gate while holding the GIL (tryrdlock, else wait with the GIL
 * released), so a call that waits for the GIL to finish never waits behind one that waits
 * for the gate.
 */
#define PY_SSIZE_T_CLEAN
#include "module.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "zsmalloc.h"

/* public names of the Python half, imported once by zram_register_pool */
static PyObject *InvalidHandleError, *CorruptionError, *PoolExhaustedError, *MemoryLockError;
static PyObject *ClassStat, *PoolStats, *ClassSpec, *ClassTable;

typedef struct {
    PyObject_HEAD
    struct zs_pool *pool;   /* NULL once closed */
    pthread_rwlock_t gate;  /* read: a call in flight; write: close() */
    int closing;            /* set (atomically) when close() starts */
    PyObject *class_table;  /* zramd.size_class.ClassTable of this pool's classes */
    PyObject *by_index;     /* class_table.by_index: ClassSpec per class index */
    unsigned huge_class_size;
    Py_ssize_t users;       /* device cores working on this pool (zram_pool_get) */
} PoolObject;

static int pool_enter(PoolObject *self)
{
    if (__atomic_load_n(&self->closing, __ATOMIC_ACQUIRE))
        goto closed;
    if (pthread_rwlock_tryrdlock(&self->gate) != 0) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_rwlock_rdlock(&self->gate);
        Py_END_ALLOW_THREADS
        if (rc) {
            errno = rc;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    if (self->pool)
        return 0;
    pthread_rwlock_unlock(&self->gate);
closed:
    PyErr_SetString(PyExc_ValueError, "the pool is closed");
    return -1;
}

static void pool_leave(PoolObject *self)
{
    pthread_rwlock_unlock(&self->gate);
}

/* Run `call` with the GIL released inside the gate; `err` gets its result. */
#define WITHOUT_GIL(self, err, call)                                                           \
    do {                                                                                       \
        if (pool_enter(self) < 0)                                                              \
            goto fail;                                                                         \
        PyThreadState *save_ = PyEval_SaveThread();                                            \
        (err) = (call);                                                                        \
        PyEval_RestoreThread(save_);                                                           \
        pool_leave(self);                                                                      \
    } while (0)

/* The exception ZsPool raises for the same condition, with its message. */
static PyObject *raise_fault(int err, const struct zs_fault *f)
{
    switch (f->kind) {
    case ZS_FAULT_BAD_SIZE:
        return PyErr_Format(PyExc_ValueError, "object size %u outside 1..%u", f->size,
                            ZS_MAX_ALLOC_SIZE);
    case ZS_FAULT_NOT_A_HANDLE:
        return PyErr_Format(InvalidHandleError, "handle %llu was not returned by malloc",
                            (unsigned long long)f->handle);
    case ZS_FAULT_NOT_ALLOCATED:
        return PyErr_Format(InvalidHandleError,
                            "handle %llu is not allocated (freed, or never returned)",
                            (unsigned long long)f->handle);
    case ZS_FAULT_BAD_HEADER: {
        char hdr[24];
        snprintf(hdr, sizeof(hdr), "0x%llx", (unsigned long long)f->header);
        return PyErr_Format(CorruptionError,
                            "object at arena offset %llu has header %s, expected handle %llu "
                            "(class %u)",
                            (unsigned long long)f->offset, hdr, (unsigned long long)f->handle,
                            f->obj_size);
    }
    case ZS_FAULT_ARENA_FULL:
        return PyErr_Format(PoolExhaustedError, "arena exhausted: need %u frames, %u of %u left",
                            f->frames_needed, f->frames_left, f->frames_max);
    case ZS_FAULT_NO_HANDLE:
        return PyErr_Format(PoolExhaustedError, "class %u has no handle left", f->obj_size);
    case ZS_FAULT_NO_MEMORY:
        return PyErr_NoMemory();
    case ZS_FAULT_TOO_LONG:
        return PyErr_Format(PyExc_ValueError, "%u bytes do not fit object %llu of %u bytes",
                            f->size, (unsigned long long)f->handle, f->obj_size);
    case ZS_FAULT_NONE:
        break;
    }
    errno = -err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static int to_handle(PyObject *obj, uint64_t *handle)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "a handle must be an int, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *handle = PyLong_AsUnsignedLongLong(obj);
    if (*handle == (uint64_t)-1 && PyErr_Occurred()) { /* negative, or above 2**64 */
        PyErr_Clear();
        PyErr_Format(InvalidHandleError, "handle %S was not returned by malloc", obj);
        return -1;
    }
    return 0;
}

/* A size for malloc / class_for_size: 1..ZS_MAX_ALLOC_SIZE, else ValueError as ZsPool. */
static int to_size(PyObject *obj, uint32_t *size)
{
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        v = -1;
    }
    if (v < 1 || v > ZS_MAX_ALLOC_SIZE) {
        PyErr_Format(PyExc_ValueError, "object size %S outside 1..%u", obj, ZS_MAX_ALLOC_SIZE);
        return -1;
    }
    *size = (uint32_t)v;
    return 0;
}

/* Per-call arrays: on the stack for small batches (a device request), else on the heap. */
typedef struct {
    union {
        char bytes[4096];
        max_align_t align;
    } stack;
    void *heap;
} Scratch;

static void *scratch_get(Scratch *s, size_t bytes)
{
    if (bytes <= sizeof(s->stack))
        return s->stack.bytes;
    s->heap = PyMem_Malloc(bytes);
    if (!s->heap)
        PyErr_NoMemory();
    return s->heap;
}

static void scratch_put(Scratch *s)
{
    PyMem_Free(s->heap);
}

/* An exception put aside while the batch runs on the elements before it. */
typedef struct {
    PyObject *type, *value, *tb;
} Saved;

static void saved_clear(Saved *saved)
{
    Py_CLEAR(saved->type);
    Py_CLEAR(saved->value);
    Py_CLEAR(saved->tb);
}

/* Convert up to n handles; returns how many converted. When fewer than n, the conversion
 * error goes to *saved (raised after the batch: ZsPool acts on the handles before it). */
static Py_ssize_t to_handles(PyObject *const *items, Py_ssize_t n, uint64_t *handles,
                             Saved *saved)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (to_handle(items[i], &handles[i]) < 0) {
            PyErr_Fetch(&saved->type, &saved->value, &saved->tb);
            return i;
        }
    }
    return n;
}

/* Raise the batch's fault if there is one, else the saved conversion error; NULL. */
static PyObject *raise_batch(int err, const struct zs_fault *f, Saved *saved)
{
    if (err) {
        saved_clear(saved);
        return raise_fault(err, f);
    }
    PyErr_Restore(saved->type, saved->value, saved->tb);
    *saved = (Saved){NULL, NULL, NULL};
    return NULL;
}

/* -- store / load / free --------------------------------------------------------------------- */

static PyObject *store_items(PoolObject *self, Py_ssize_t n, PyObject *const *items, int single)
{
    Scratch s = {.heap = NULL};
    size_t per = sizeof(Py_buffer) + sizeof(unsigned char *) + sizeof(uint64_t) + sizeof(uint32_t);
    char *mem = scratch_get(&s, (size_t)n * per);
    if (!mem)
        return NULL;
    Py_buffer *views = (Py_buffer *)mem;
    const unsigned char **src = (const unsigned char **)(views + n);
    uint64_t *handles = (uint64_t *)(src + n);
    uint32_t *size = (uint32_t *)(handles + n);
    PyObject *result = NULL;
    Py_ssize_t got = 0;
    for (; got < n; got++) {
        if (PyObject_GetBuffer(items[got], &views[got], PyBUF_SIMPLE) < 0)
            goto fail;
        src[got] = views[got].buf;
        size[got] = views[got].len > UINT32_MAX ? UINT32_MAX : (uint32_t)views[got].len;
    }
    struct zs_fault f = {.kind = ZS_FAULT_NONE};
    int err;
    WITHOUT_GIL(self, err, zs_store_many(self->pool, (size_t)n, src, size, handles, &f));
    if (err) {
        if (f.kind == ZS_FAULT_BAD_SIZE)
            PyErr_Format(PyExc_ValueError, "object size %zd outside 1..%u", views[f.index].len,
                         ZS_MAX_ALLOC_SIZE);
        else
            raise_fault(err, &f);
        goto fail;
    }
    if (single) {
        result = PyLong_FromUnsignedLongLong(handles[0]);
    } else if ((result = PyList_New(n)) != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *h = PyLong_FromUnsignedLongLong(handles[i]);
            if (!h) {
                Py_CLEAR(result);
                break;
            }
            PyList_SET_ITEM(result, i, h);
        }
    }
    if (!result && pool_enter(self) == 0) { /* out of memory: the objects go back */
        Py_BEGIN_ALLOW_THREADS
        zs_free_many(self->pool, (size_t)n, handles, NULL);
        Py_END_ALLOW_THREADS
        pool_leave(self);
    }
fail:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    scratch_put(&s);
    return result;
}

static PyObject *load_items(PoolObject *self, Py_ssize_t n, PyObject *const *items, int single)
{
    Scratch s = {.heap = NULL};
    size_t per = sizeof(uint64_t) + sizeof(unsigned char *) + sizeof(PyObject *) + sizeof(uint32_t);
    char *mem = scratch_get(&s, (size_t)n * per);
    if (!mem)
        return NULL;
    uint64_t *handles = (uint64_t *)mem;
    unsigned char **dst = (unsigned char **)(handles + n);
    PyObject **out = (PyObject **)(dst + n);
    uint32_t *size = (uint32_t *)(out + n);
    Saved saved = {NULL, NULL, NULL};
    PyObject *result = NULL;
    Py_ssize_t k = to_handles(items, n, handles, &saved), made = 0;
    for (; made < k; made++) { /* the objects land in their bytes directly, resized after */
        if (!(out[made] = PyBytes_FromStringAndSize(NULL, ZS_MAX_ALLOC_SIZE)))
            goto fail;
        dst[made] = (unsigned char *)PyBytes_AS_STRING(out[made]);
    }
    struct zs_fault f = {.kind = ZS_FAULT_NONE};
    int err;
    WITHOUT_GIL(self, err, zs_load_many(self->pool, (size_t)k, handles, dst, size, &f));
    if (err || k < n) {
        raise_batch(err, &f, &saved);
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (size[i] != ZS_MAX_ALLOC_SIZE && _PyBytes_Resize(&out[i], size[i]) < 0) {
            out[i] = Py_NewRef(Py_None); /* keeps the cleanup loop uniform */
            goto fail;
        }
    if (single) {
        result = out[0];
        made = 0;
    } else if ((result = PyList_New(n)) != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            PyList_SET_ITEM(result, i, out[i]);
        made = 0;
    }
fail:
    saved_clear(&saved);
    for (Py_ssize_t i = 0; i < made; i++)
        Py_DECREF(out[i]);
    scratch_put(&s);
    return result;
}

static PyObject *free_items(PoolObject *self, Py_ssize_t n, PyObject *const *items)
{
    Scratch s = {.heap = NULL};
    uint64_t *handles = scratch_get(&s, (size_t)n * sizeof(uint64_t));
    if (!handles)
        return NULL;
    Saved saved = {NULL, NULL, NULL};
    PyObject *result = NULL;
    Py_ssize_t k = to_handles(items, n, handles, &saved);
    struct zs_fault f = {.kind = ZS_FAULT_NONE};
    int err;
    WITHOUT_GIL(self, err, zs_free_many(self->pool, (size_t)k, handles, &f));
    if (err || k < n)
        raise_batch(err, &f, &saved);
    else
        result = Py_NewRef(Py_None);
fail:
    saved_clear(&saved);
    scratch_put(&s);
    return result;
}

/* The batch methods take any iterable, as ZsPool's do. */
#define WITH_SEQUENCE(arg, what, call)                                                         \
    do {                                                                                       \
        PyObject *seq_ = PySequence_Fast(arg, what);                                           \
        if (!seq_)                                                                             \
            return NULL;                                                                       \
        PyObject *const *items = PySequence_Fast_ITEMS(seq_);                                  \
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq_);                                         \
        PyObject *r_ = (call);                                                                 \
        Py_DECREF(seq_);                                                                       \
        return r_;                                                                             \
    } while (0)

static PyObject *Pool_store_many(PoolObject *self, PyObject *objs)
{
    WITH_SEQUENCE(objs, "store_many() takes a sequence of bytes-like objects",
                  store_items(self, n, items, 0));
}

static PyObject *Pool_load_many(PoolObject *self, PyObject *handles)
{
    WITH_SEQUENCE(handles, "load_many() takes an iterable of handles",
                  load_items(self, n, items, 0));
}

static PyObject *Pool_free_many(PoolObject *self, PyObject *handles)
{
    WITH_SEQUENCE(handles, "free_many() takes an iterable of handles", free_items(self, n, items));
}

static PyObject *Pool_store(PoolObject *self, PyObject *data)
{
    return store_items(self, 1, &data, 1);
}

static PyObject *Pool_read(PoolObject *self, PyObject *handle)
{
    return load_items(self, 1, &handle, 1);
}

static PyObject *Pool_free(PoolObject *self, PyObject *handle)
{
    return free_items(self, 1, &handle);
}

static PyObject *Pool_malloc(PoolObject *self, PyObject *arg)
{
    uint32_t size;
    uint64_t handle;
    struct zs_fault f = {.kind = ZS_FAULT_NONE};
    int err;
    if (to_size(arg, &size) < 0)
        return NULL;
    WITHOUT_GIL(self, err, zs_malloc(self->pool, size, &handle, &f));
    if (err)
        return raise_fault(err, &f);
    return PyLong_FromUnsignedLongLong(handle);
fail:
    return NULL;
}

static PyObject *Pool_write(PoolObject *self, PyObject *args)
{
    PyObject *h, *result = NULL;
    Py_buffer data;
    uint64_t handle;
    struct zs_fault f = {.kind = ZS_FAULT_NONE};
    int err;
    if (!PyArg_ParseTuple(args, "Oy*:write", &h, &data))
        return NULL;
    if (to_handle(h, &handle) < 0)
        goto fail;
    uint32_t n = data.len > UINT32_MAX ? UINT32_MAX : (uint32_t)data.len;
    WITHOUT_GIL(self, err, zs_write(self->pool, handle, data.buf, n, &f));
    if (err) {
        if (f.kind == ZS_FAULT_TOO_LONG)
            PyErr_Format(PyExc_ValueError, "%zd bytes do not fit object %llu of %u bytes",
                         data.len, (unsigned long long)handle, f.obj_size);
        else
            raise_fault(err, &f);
        goto fail;
    }
    result = Py_NewRef(Py_None);
fail:
    PyBuffer_Release(&data);
    return result;
}

static PyObject *Pool_object_size(PoolObject *self, PyObject *h)
{
    uint64_t handle;
    struct zs_fault f = {.kind = ZS_FAULT_NONE};
    int size;
    if (to_handle(h, &handle) < 0)
        return NULL;
    WITHOUT_GIL(self, size, zs_object_size(self->pool, handle, &f));
    if (size < 0)
        return raise_fault(size, &f);
    return PyLong_FromLong(size);
fail:
    return NULL;
}

static PyObject *Pool_locate(PoolObject *self, PyObject *h)
{
    uint64_t handle, offset = 0;
    uint32_t zspage = 0;
    struct zs_fault f = {.kind = ZS_FAULT_NONE};
    int err;
    if (to_handle(h, &handle) < 0)
        return NULL;
    WITHOUT_GIL(self, err, zs_locate(self->pool, handle, &zspage, &offset, &f));
    if (err)
        return raise_fault(err, &f);
    return Py_BuildValue("(IK)", zspage, (unsigned long long)offset);
fail:
    return NULL;
}

static PyObject *Pool_class_for_size(PoolObject *self, PyObject *arg)
{
    uint32_t size;
    if (to_size(arg, &size) < 0 || pool_enter(self) < 0)
        return NULL;
    int index = zs_lookup_class_index(self->pool, size);
    pool_leave(self);
    return Py_NewRef(PyTuple_GET_ITEM(self->by_index, index));
}

/* -- compaction, statistics, lifecycle ------------------------------------------------------- */

static PyObject *Pool_can_compact(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t frames;
    WITHOUT_GIL(self, frames, zs_can_compact(self->pool));
    return PyLong_FromUnsignedLongLong(frames);
fail:
    return NULL;
}

static PyObject *Pool_compact(PoolObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"gentle", NULL};
    int gentle = 0;
    uint64_t freed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$p:compact", kwlist, &gentle))
        return NULL;
    WITHOUT_GIL(self, freed, zs_compact(self->pool, gentle));
    return PyLong_FromUnsignedLongLong(freed);
fail:
    return NULL;
}

static PyObject *class_row(const struct zs_class_stats *row)
{
    PyObject *fullness = PyTuple_New(ZS_NR_FULLNESS);
    if (!fullness)
        return NULL;
    for (int g = 0; g < ZS_NR_FULLNESS; g++) {
        PyObject *v = PyLong_FromUnsignedLongLong(row->fullness[g]);
        if (!v) {
            Py_DECREF(fullness);
            return NULL;
        }
        PyTuple_SET_ITEM(fullness, g, v);
    }
    return PyObject_CallFunction(ClassStat, "IINKKKIK", row->spec.index, row->spec.size,
                                 fullness, (unsigned long long)row->obj_allocated,
                                 (unsigned long long)row->obj_used,
                                 (unsigned long long)row->pages_used, row->spec.pages_per_zspage,
                                 (unsigned long long)row->freeable);
}

static int pool_snapshot(PoolObject *self, struct zs_pool_stats *ps, struct zs_class_stats *rows)
{
    if (pool_enter(self) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    zs_pool_stats(self->pool, ps, rows);
    Py_END_ALLOW_THREADS
    pool_leave(self);
    return 0;
}

static PyObject *Pool_stats(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    struct zs_class_stats *rows = PyMem_Calloc(ZS_MAX_CLASSES, sizeof(*rows));
    struct zs_pool_stats ps;
    PyObject *classes = NULL;
    if (!rows)
        return PyErr_NoMemory();
    if (pool_snapshot(self, &ps, rows) == 0 && (classes = PyTuple_New(ps.nr_classes)) != NULL)
        for (unsigned i = 0; i < ps.nr_classes; i++) {
            PyObject *row = class_row(&rows[i]);
            if (!row) {
                Py_CLEAR(classes);
                break;
            }
            PyTuple_SET_ITEM(classes, i, row);
        }
    PyMem_Free(rows);
    if (!classes)
        return NULL;
    return PyObject_CallFunction(PoolStats, "KKINKKKK", (unsigned long long)ps.total_pages,
                                 (unsigned long long)ps.pages_compacted, ps.huge_class_size,
                                 classes, (unsigned long long)ps.frames_cached,
                                 (unsigned long long)ps.frames_reserved,
                                 (unsigned long long)ps.metadata_bytes,
                                 (unsigned long long)ps.objects);
}

static PyObject *Pool_check(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    char msg[256] = "";
    int err;
    WITHOUT_GIL(self, err, zs_check(self->pool, msg, sizeof(msg)));
    if (err == -ENOMEM)
        return PyErr_NoMemory();
    if (err)
        return PyErr_Format(CorruptionError, "pool check: %s", msg);
    Py_RETURN_NONE;
fail:
    return NULL;
}

static PyObject *Pool_close(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->users) {
        PyErr_SetString(PyExc_RuntimeError, "the pool is in use by a device core; close it first");
        return NULL;
    }
    __atomic_store_n(&self->closing, 1, __ATOMIC_RELEASE);
    Py_BEGIN_ALLOW_THREADS
    pthread_rwlock_wrlock(&self->gate); /* waits for the calls in flight */
    zs_destroy_pool(self->pool);
    self->pool = NULL;
    pthread_rwlock_unlock(&self->gate);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Pool_lock_frames(PoolObject *self, PyObject *arg)
{
    unsigned long long frames = PyLong_AsUnsignedLongLong(arg);
    if (frames == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    int err;
    WITHOUT_GIL(self, err, zs_lock_frames(self->pool, frames));
    if (!err)
        Py_RETURN_NONE;
    if (err == -EINVAL) {
        struct zs_pool_stats ps;
        if (pool_snapshot(self, &ps, NULL) < 0)
            return NULL;
        return PyErr_Format(PyExc_ValueError, "lock_frames(%llu): the arena has 1..%llu frames",
                            frames, (unsigned long long)ps.frames_reserved - 1);
    }
    PyObject *msg;
    if (err == -EBUSY)
        msg = PyUnicode_FromString("lock_frames: the pool is locked already, or in use");
    else
        msg = PyUnicode_FromFormat("lock_frames: mlock of %llu MiB failed: %s (it needs "
                                   "CAP_IPC_LOCK or an RLIMIT_MEMLOCK that large, and the memory)",
                                   (frames + 255) >> 8, strerror(-err));
    PyObject *e = msg ? PyObject_CallFunction(MemoryLockError, "Oi", msg, -err) : NULL;
    Py_XDECREF(msg);
    if (e) {
        PyErr_SetObject(MemoryLockError, e);
        Py_DECREF(e);
    }
    return NULL;
fail:
    return NULL;
}

static PyObject *Pool_get_locked_frames(PoolObject *self, void *Py_UNUSED(closure))
{
    if (pool_enter(self) < 0)
        return NULL;
    uint64_t frames = zs_locked_frames(self->pool);
    pool_leave(self);
    return PyLong_FromUnsignedLongLong(frames);
}

/* A pool counter, read with no class lock. */
static PyObject *counter(PoolObject *self, size_t field)
{
    struct zs_pool_stats ps;
    if (field == offsetof(struct zs_pool_stats, total_pages) || field == (size_t)-1) {
        if (pool_enter(self) < 0)
            return NULL;
        uint64_t pages = field == (size_t)-1 ? zs_get_peak_pages(self->pool)
                                             : zs_get_total_pages(self->pool);
        pool_leave(self);
        return PyLong_FromUnsignedLongLong(pages);
    }
    if (pool_snapshot(self, &ps, NULL) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(*(uint64_t *)((char *)&ps + field));
}

static PyObject *Pool_get_counter(PoolObject *self, void *field)
{
    return counter(self, (size_t)field);
}

static PyObject *Pool_get_native(PoolObject *Py_UNUSED(self), void *Py_UNUSED(closure))
{
    Py_RETURN_TRUE;
}

static PyObject *Pool_get_huge_class_size(PoolObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->huge_class_size);
}

static PyObject *Pool_get_class_table(PoolObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->class_table);
}

/* ClassTable(chain, classes, by_index, huge_class_size) from the C pool's own classes. */
static PyObject *make_class_table(struct zs_pool *pool, int chain)
{
    unsigned nr = zs_nr_classes(pool);
    PyObject *classes = PyTuple_New(nr), *by_index = PyTuple_New(255), *table = NULL;
    if (!classes || !by_index)
        goto out;
    for (unsigned i = 0; i < nr; i++) {
        const struct zs_class_spec *c = zs_class_spec(pool, i);
        PyObject *spec = PyObject_CallFunction(ClassSpec, "IIII", c->index, c->size,
                                               c->pages_per_zspage, c->objs_per_zspage);
        if (!spec)
            goto out;
        PyTuple_SET_ITEM(classes, i, spec);
    }
    /* a merged index belongs to the smallest class at or above it */
    for (unsigned index = 0, i = 0; index < 255; index++) {
        while (zs_class_spec(pool, i)->index < index)
            i++;
        PyTuple_SET_ITEM(by_index, index, Py_NewRef(PyTuple_GET_ITEM(classes, i)));
    }
    table = PyObject_CallFunction(ClassTable, "iOOI", chain, classes, by_index,
                                  zs_huge_class_size(pool));
out:
    Py_XDECREF(classes);
    Py_XDECREF(by_index);
    return table;
}

static PyObject *Pool_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"max_bytes", "chain", "release_batch", NULL};
    PyObject *max_obj;
    int chain = ZS_DEFAULT_CHAIN_SIZE, release_batch = ZS_RELEASE_BATCH;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$ii:Pool", kwlist, &max_obj, &chain,
                                     &release_batch))
        return NULL;
    if (!PyLong_Check(max_obj))
        return PyErr_Format(PyExc_TypeError, "pool size must be an int, not %.100s",
                            Py_TYPE(max_obj)->tp_name);
    const uint64_t limit = (uint64_t)(ZS_MAX_FRAMES - 1) * ZS_PAGE_SIZE;
    int overflow;
    long long max_bytes = PyLong_AsLongLongAndOverflow(max_obj, &overflow);
    if (max_bytes == -1 && PyErr_Occurred())
        return NULL;
    if (overflow < 0 || (!overflow && max_bytes <= 0))
        return PyErr_Format(PyExc_ValueError, "pool size %S must be positive", max_obj);
    if (overflow > 0 || (uint64_t)max_bytes > limit)
        return PyErr_Format(PyExc_ValueError, "pool size %S exceeds %llu bytes", max_obj,
                            (unsigned long long)limit);
    if (chain < ZS_MIN_CHAIN_SIZE || chain > ZS_MAX_CHAIN_SIZE)
        return PyErr_Format(PyExc_ValueError, "chain size %d outside %d..%d", chain,
                            ZS_MIN_CHAIN_SIZE, ZS_MAX_CHAIN_SIZE);
    PoolObject *self = (PoolObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
#ifdef __GLIBC__
    /* calls never nest, so a waiting close() may hold new readers back */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    pthread_rwlock_init(&self->gate, &attr);
    pthread_rwlockattr_destroy(&attr);
    self->pool = zs_create_pool((uint64_t)max_bytes, chain, release_batch);
    if (!self->pool) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    self->huge_class_size = zs_huge_class_size(self->pool);
    self->class_table = make_class_table(self->pool, chain);
    if (!self->class_table
        || !(self->by_index = PyObject_GetAttrString(self->class_table, "by_index"))) {
        Py_DECREF(self);
        return NULL;
    }
    if (!PyTuple_Check(self->by_index) || PyTuple_GET_SIZE(self->by_index) != 255) {
        PyErr_SetString(PyExc_TypeError, "ClassTable.by_index must be a tuple of 255 classes");
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Pool_dealloc(PoolObject *self)
{
    zs_destroy_pool(self->pool); /* no call can be in flight: nothing references self */
    pthread_rwlock_destroy(&self->gate);
    Py_XDECREF(self->class_table);
    Py_XDECREF(self->by_index);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Pool_methods[] = {
    {"store_many", (PyCFunction)Pool_store_many, METH_O,
     "store_many($self, objs, /)\n--\n\n"
     "Store each buffer (1..4096 bytes) as a new object; handles in order. All or nothing:\n"
     "ValueError (bad size) or PoolExhaustedError, and nothing stays stored."},
    {"load_many", (PyCFunction)Pool_load_many, METH_O,
     "load_many($self, handles, /)\n--\n\n"
     "Copies of the objects' bytes, in order, each taken under its class lock.\n"
     "InvalidHandleError / CorruptionError at the first bad handle."},
    {"free_many", (PyCFunction)Pool_free_many, METH_O,
     "free_many($self, handles, /)\n--\n\n"
     "Free every handle; stops at the first invalid one (InvalidHandleError), having freed\n"
     "those before it."},
    {"store", (PyCFunction)Pool_store, METH_O,
     "store($self, data, /)\n--\n\nmalloc(len(data)) and write in one step; the handle."},
    {"read", (PyCFunction)Pool_read, METH_O,
     "read($self, handle, /)\n--\n\nA copy of the object's bytes (its allocated size)."},
    {"free", (PyCFunction)Pool_free, METH_O,
     "free($self, handle, /)\n--\n\nFree an object; InvalidHandleError if not allocated."},
    {"malloc", (PyCFunction)Pool_malloc, METH_O,
     "malloc($self, size, /)\n--\n\n"
     "Allocate an object of size bytes (1..4096; else ValueError) and return its handle;\n"
     "its contents are undefined until written. PoolExhaustedError when the arena is full."},
    {"write", (PyCFunction)Pool_write, METH_VARARGS,
     "write($self, handle, data, /)\n--\n\n"
     "Write data (at most the allocated size, else ValueError) at the start of the object."},
    {"object_size", (PyCFunction)Pool_object_size, METH_O,
     "object_size($self, handle, /)\n--\n\nThe size handle was allocated with."},
    {"locate", (PyCFunction)Pool_locate, METH_O,
     "locate($self, handle, /)\n--\n\n"
     "(zspage id, arena offset) of a live object; zspage 0 for a huge object."},
    {"class_for_size", (PyCFunction)Pool_class_for_size, METH_O,
     "class_for_size($self, size, /)\n--\n\nThe ClassSpec a malloc(size) lands in."},
    {"can_compact", (PyCFunction)Pool_can_compact, METH_NOARGS,
     "can_compact($self, /)\n--\n\nFrames compaction could free now, summed over classes."},
    {"compact", (PyCFunction)(void (*)(void))Pool_compact, METH_VARARGS | METH_KEYWORDS,
     "compact($self, /, *, gentle=False)\n--\n\n"
     "zs_compact: move objects to free whole zspages; returns frames freed. Single flight:\n"
     "0 at once if a compaction is running. gentle: yield the CPU between slices and record\n"
     "the longest slice in max_slice_ns."},
    {"stats", (PyCFunction)Pool_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nA PoolStats snapshot; each class row taken under its lock."},
    {"check", (PyCFunction)Pool_check, METH_NOARGS,
     "check($self, /)\n--\n\n"
     "Walk every structure and cross-check it; CorruptionError naming the first mismatch.\n"
     "Exact on an idle pool. For tests: it visits every object."},
    {"lock_frames", (PyCFunction)Pool_lock_frames, METH_O,
     "lock_frames($self, frames, /)\n--\n\n"
     "Fault in and mlock the first `frames` frames (and their metadata), cap the pool at\n"
     "them and keep freed frames resident (a swap device's pool; zsmalloc.h). Only on a pool\n"
     "that has stored nothing: MemoryLockError (EBUSY) otherwise, or with mlock's errno."},
    {"close", (PyCFunction)Pool_close, METH_NOARGS,
     "close($self, /)\n--\n\n"
     "Unmap everything once calls in flight are done; every handle becomes invalid and\n"
     "later calls raise ValueError. Idempotent."},
    {NULL, NULL, 0, NULL},
};

#define COUNTER(name) ((void *)offsetof(struct zs_pool_stats, name))

static PyGetSetDef Pool_getset[] = {
    {"native", (getter)Pool_get_native, NULL, "Whether the pool runs in C (always).", NULL},
    {"huge_class_size", (getter)Pool_get_huge_class_size, NULL,
     "The smallest request stored raw in a frame of its own.", NULL},
    {"class_table", (getter)Pool_get_class_table, NULL, "The pool's size classes.", NULL},
    {"total_pages", (getter)Pool_get_counter, NULL, "Frames held by live zspages.",
     COUNTER(total_pages)},
    {"peak_pages", (getter)Pool_get_counter, NULL,
     "The most frames held at once since the pool was created.", (void *)(size_t)-1},
    {"pages_compacted", (getter)Pool_get_counter, NULL, "Frames freed by compaction.",
     COUNTER(pages_compacted)},
    {"bytes_moved", (getter)Pool_get_counter, NULL,
     "Object bytes (headers included) copied by compaction.", COUNTER(bytes_moved)},
    {"locked_frames", (getter)Pool_get_locked_frames, NULL,
     "Frames lock_frames locked (0: not locked).", NULL},
    {"max_slice_ns", (getter)Pool_get_counter, NULL,
     "Longest class-lock hold of a gentle compaction slice.", COUNTER(max_slice_ns)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PoolType;

struct zs_pool *zram_pool_get(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &PoolType)) {
        PyErr_Format(PyExc_TypeError, "expected a zramd._zram.Pool, not %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PoolObject *self = (PoolObject *)obj;
    if (!self->pool || __atomic_load_n(&self->closing, __ATOMIC_ACQUIRE)) {
        PyErr_SetString(PyExc_ValueError, "the pool is closed");
        return NULL;
    }
    self->users++;
    return self->pool;
}

void zram_pool_put(PyObject *obj)
{
    ((PoolObject *)obj)->users--;
}

static PyTypeObject PoolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zramd._zram.Pool",
    .tp_basicsize = sizeof(PoolObject),
    .tp_dealloc = (destructor)Pool_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pool(max_bytes, *, chain=8, release_batch=64)\n--\n\n"
              "A zsmalloc pool of at most max_bytes of frames, in C (zramd/csrc/zsmalloc.c).\n"
              "ZsPool's contract (zramd.pool_api.PoolAPI); every call releases the GIL while\n"
              "it works, and all methods are thread-safe.",
    .tp_methods = Pool_methods,
    .tp_getset = Pool_getset,
    .tp_new = Pool_new,
};

static int import_names(const char *module_name, const char *const *names, PyObject **out[])
{
    PyObject *module = PyImport_ImportModule(module_name);
    if (!module)
        return -1;
    for (int i = 0; names[i]; i++)
        if (!(*out[i] = PyObject_GetAttrString(module, names[i]))) {
            Py_DECREF(module);
            return -1;
        }
    Py_DECREF(module);
    return 0;
}

int zram_register_pool(PyObject *module)
{
    static const char *const errors[] = {"InvalidHandleError", "CorruptionError",
                                         "PoolExhaustedError", "MemoryLockError", NULL};
    static const char *const stats[] = {"ClassStat", "PoolStats", NULL};
    static const char *const size_class[] = {"ClassSpec", "ClassTable", NULL};
    PyObject **error_out[] = {&InvalidHandleError, &CorruptionError, &PoolExhaustedError,
                              &MemoryLockError};
    PyObject **stats_out[] = {&ClassStat, &PoolStats};
    PyObject **size_class_out[] = {&ClassSpec, &ClassTable};
    if (import_names("zramd.errors", errors, error_out) < 0
        || import_names("zramd.stats", stats, stats_out) < 0
        || import_names("zramd.size_class", size_class, size_class_out) < 0
        || PyType_Ready(&PoolType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Pool", (PyObject *)&PoolType);
}

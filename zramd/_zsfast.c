/*
 * zramd._zsfast: the per-page and per-object loops of zramd's data path, in C.
 *
 * Why: measured in the serving process, these loops were most of zramd's cost beyond
 * compression itself, all of it interpreter overhead (a dozen array stores per page or object,
 * each a bytecode round trip). The design stays in Python: this module keeps no state of its
 * own, and every function here has a Python twin that is its reference (ZRAMD_NATIVE=0 runs
 * those; the test suite runs both and compares them):
 *
 *   Pool.store_many / load_many / free_many   pool.py  _store_many_py, _load_many_py, ...
 *   encode_pages   same-fill test + compression of a request's pages   device.encode_pages
 *   decode_pages   fill words, raw and compressed pages into a buffer  device.decode_pages
 *   scan_slots     the read side of one stripe of the slot table       device.scan_slots
 *   install_slots  switching slots to new contents, stripe counters    device.install_slots
 *
 * Pool works on the very buffers a ZsPool owns (the arena mmap, the frame link words, the
 * zspage descriptor columns, each class's handle table) and on the SizeClass attributes, with
 * exactly the algorithm of pool.py's _alloc / _free_locked / load loop. The device helpers
 * work on the slot table's columns and take the flag masks as arguments; their callers hold
 * the stripe locks, as for the Python twins.
 *
 * Locking is pool.py's: the class lock (a threading.Lock, acquired through its own method, so
 * a wait releases the GIL) is held around every touch of a class, never two at once. While a
 * class lock is held, its scalar fields (mask, free_slot, obj_used) are cached in C and
 * written back before the lock is dropped; every Python callback made meanwhile
 * (_new_zspage, free_zspage, the error helpers, huge objects) leaves them alone. Rare paths
 * call back into Python rather than duplicate it: new zspages, freeing a zspage, huge
 * objects, and raising InvalidHandleError / CorruptionError with the reference's messages.
 * Nothing here releases the GIL except those lock waits and the callbacks (compression and
 * decompression release it inside their own bindings).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The layout constants of pool.py / zspage.py / size_class.py; pool.py compares them with
 * its own before using this module (CONSTANTS below), so a stale build is never used. */
#define ABI_VERSION 8
#define PAGE_SHIFT 12
#define PAGE_SIZE 4096
#define PAGE_MASK (PAGE_SIZE - 1)
#define ZS_HANDLE_SIZE 8
#define ZS_MAX_ALLOC_SIZE PAGE_SIZE
#define LOC_SHIFT 37
#define LOC_OFF_MASK ((INT64_C(1) << LOC_SHIFT) - 1)
#define HANDLE_CLASS_BITS 8
#define HANDLE_CLASS_MASK ((1 << HANDLE_CLASS_BITS) - 1)
#define HDR_SIZE_SHIFT 48
#define HDR_HANDLE_MASK ((UINT64_C(1) << HDR_SIZE_SHIFT) - 1)
#define MAX_HANDLE ((INT64_C(1) << (HDR_SIZE_SHIFT - 1)) - 1)
#define OBJ_ALLOCATED_TAG 1
#define GROUP_FULL 11
#define NR_CLASS_SLOTS (HANDLE_CLASS_MASK + 1)

typedef struct {
    int valid;
    int huge;
    int64_t size; /* object size, header included */
    int64_t objs; /* objs_per_zspage */
    int64_t index;
    PyObject *cls; /* borrowed: kept alive by Ctx.classes */
    /* new refs, taken once: SizeClass binds these objects in __init__ and never rebinds them */
    PyObject *acquire, *release; /* cls.lock's bound methods */
    PyObject *handles, *heads, *counts;
} ClassInfo;

typedef struct {
    PyObject_HEAD
    PyObject *pool;
    PyObject *classes; /* tuple of every SizeClass (keeps ClassInfo.cls alive) */
    Py_buffer map, links, inuse, freeobj, fresh, fresh_left, first, prev, next;
    int nbuf;     /* buffers held (released in that order by ctx_release) */
    int open;     /* buffers valid */
    int busy;     /* calls in progress (a lock wait releases the GIL) */
    uint8_t *arena;
    uint64_t *words;
    int32_t *lk, *zfirst, *zprev, *znext;
    uint16_t *zinuse, *zfresh_left;
    int64_t *zfreeobj, *zfresh;
    Py_ssize_t nframes, nzspages;
    uint8_t size_index[ZS_MAX_ALLOC_SIZE + 1];
    ClassInfo info[NR_CLASS_SLOTS];
} Ctx;

static PyObject *pool_exhausted; /* zramd.errors.PoolExhaustedError */
static PyObject *s_lock, *s_acquire, *s_release, *s_mask, *s_free_slot, *s_obj_used, *s_heads,
    *s_counts, *s_handles, *s_new_zspage, *s_free_zspage, *s_alloc, *s_location, *s_header,
    *s_class_of, *s_frombytes, *s_free_locked;

/* -- one class, locked ------------------------------------------------------------------------ */

typedef struct {
    ClassInfo *ci;
    int locked;
    PyObject *heads;       /* borrowed from ci (non-huge only) */
    PyObject *counts;
    PyObject *handles;     /* the array object, borrowed from ci */
    Py_buffer hbuf;
    int have_hbuf;
    int64_t *h;
    Py_ssize_t hlen;
    int64_t mask, free_slot, obj_used;
    int64_t mask0, free_slot0, obj_used0;
    int state; /* scalars cached */
} Open;

static int get_i64(PyObject *obj, PyObject *name, int64_t *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int set_i64(PyObject *obj, PyObject *name, int64_t value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (!v)
        return -1;
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

static int handles_acquire(Open *o)
{
    if (PyObject_GetBuffer(o->handles, &o->hbuf, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return -1;
    if (o->hbuf.itemsize != 8 || !o->hbuf.format || strcmp(o->hbuf.format, "q") != 0) {
        PyBuffer_Release(&o->hbuf);
        PyErr_SetString(PyExc_TypeError, "a class's handle table must be array('q')");
        return -1;
    }
    o->have_hbuf = 1;
    o->h = (int64_t *)o->hbuf.buf;
    o->hlen = o->hbuf.len / 8;
    return 0;
}

static void handles_release(Open *o)
{
    if (o->have_hbuf) {
        PyBuffer_Release(&o->hbuf);
        o->have_hbuf = 0;
        o->h = NULL;
    }
}

/* Lock ci's class and, with ``state``, cache its scalars and lists. */
static int class_open(Open *o, ClassInfo *ci, int state)
{
    memset(o, 0, sizeof(*o));
    o->ci = ci;
    PyObject *r = PyObject_CallNoArgs(ci->acquire);
    if (!r)
        return -1;
    Py_DECREF(r);
    o->locked = 1;
    o->handles = ci->handles;
    if (ci->huge)
        return 0;
    if (handles_acquire(o) < 0)
        return -1;
    if (!state)
        return 0;
    if (get_i64(ci->cls, s_mask, &o->mask) < 0 || get_i64(ci->cls, s_free_slot, &o->free_slot) < 0
        || get_i64(ci->cls, s_obj_used, &o->obj_used) < 0)
        return -1;
    o->mask0 = o->mask;
    o->free_slot0 = o->free_slot;
    o->obj_used0 = o->obj_used;
    o->heads = ci->heads;
    o->counts = ci->counts;
    o->state = 1;
    return 0;
}

/* Write the cached scalars back and unlock; keeps a pending exception (returns -1 if one is
 * pending afterwards). Safe on a partly opened class. */
static int class_close(Open *o)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    int failed = et != NULL;
    if (o->state) {
        /* each written back even if another fails (MemoryError only), first error kept */
        int bad = 0;
        bad |= o->mask != o->mask0 && set_i64(o->ci->cls, s_mask, o->mask) < 0;
        if (bad && !failed) {
            PyErr_Fetch(&et, &ev, &tb);
            failed = 1;
        }
        PyErr_Clear();
        bad |= o->free_slot != o->free_slot0 && set_i64(o->ci->cls, s_free_slot, o->free_slot) < 0;
        if (bad && !failed) {
            PyErr_Fetch(&et, &ev, &tb);
            failed = 1;
        }
        PyErr_Clear();
        bad |= o->obj_used != o->obj_used0 && set_i64(o->ci->cls, s_obj_used, o->obj_used) < 0;
        if (bad && !failed) {
            PyErr_Fetch(&et, &ev, &tb);
            failed = 1;
        }
        PyErr_Clear();
        o->state = 0;
    }
    handles_release(o);
    if (o->locked) {
        PyObject *r = PyObject_CallNoArgs(o->ci->release);
        if (r)
            Py_DECREF(r);
        else if (!failed) {
            PyErr_Fetch(&et, &ev, &tb);
            failed = 1;
        } else {
            PyErr_Clear();
        }
        o->locked = 0;
    }
    if (failed)
        PyErr_Restore(et, ev, tb);
    return failed ? -1 : 0;
}

/* -- fullness lists (zspage.py's link / unlink) ---------------------------------------------- */

static inline int group_of(int64_t inuse, int64_t objs)
{
    if (inuse == 0)
        return 0;
    if (inuse == objs)
        return GROUP_FULL;
    return (int)(100 * inuse / objs / 10 + 1);
}

static inline int64_t list_get(PyObject *list, int i)
{
    return PyLong_AsLongLong(PyList_GET_ITEM(list, i));
}

static inline void list_set(PyObject *list, int i, int64_t v)
{
    PyObject *n = PyLong_FromLongLong(v);
    if (n)
        PyList_SetItem(list, i, n);
}

static void zs_link(Ctx *c, Open *o, int64_t zid, int group)
{
    int64_t head = list_get(o->heads, group);
    c->zprev[zid] = 0;
    c->znext[zid] = (int32_t)head;
    if (head)
        c->zprev[head] = (int32_t)zid;
    else
        o->mask |= INT64_C(1) << group;
    list_set(o->heads, group, zid);
    list_set(o->counts, group, list_get(o->counts, group) + 1);
}

static void zs_unlink(Ctx *c, Open *o, int64_t zid, int group)
{
    int64_t prev = c->zprev[zid], nxt = c->znext[zid];
    if (prev)
        c->znext[prev] = (int32_t)nxt;
    else {
        list_set(o->heads, group, nxt);
        if (!nxt)
            o->mask &= ~(INT64_C(1) << group);
    }
    if (nxt)
        c->zprev[nxt] = (int32_t)prev;
    list_set(o->counts, group, list_get(o->counts, group) - 1);
}

/* -- allocation ------------------------------------------------------------------------------ */

/* Append free entries to the handle table, threaded as its free list (free_slot is 0). */
static int handles_grow(Open *o)
{
    Py_ssize_t add = o->hlen >> 4;
    if (add < 16)
        add = 16;
    PyObject *raw = PyBytes_FromStringAndSize(NULL, add * 8);
    if (!raw)
        return -1;
    int64_t *e = (int64_t *)PyBytes_AS_STRING(raw);
    for (Py_ssize_t k = 0; k < add; k++)
        e[k] = -1 - (k + 1 < add ? o->hlen + k + 1 : 0);
    Py_ssize_t base = o->hlen;
    handles_release(o);
    PyObject *r = PyObject_CallMethodOneArg(o->handles, s_frombytes, raw);
    Py_DECREF(raw);
    if (!r)
        return -1;
    Py_DECREF(r);
    if (handles_acquire(o) < 0)
        return -1;
    o->free_slot = base;
    return 0;
}

/* obj_malloc for a non-huge class: returns the object's arena offset (its header) and sets
 * *handle, or -1 with an exception. */
static int64_t alloc_object(Ctx *c, Open *o, int64_t n, int64_t *handle)
{
    ClassInfo *ci = o->ci;
    int64_t zid;
    int group;
    if (!o->free_slot && handles_grow(o) < 0)
        return -1;
    if (((o->free_slot << HANDLE_CLASS_BITS) | ci->index) > MAX_HANDLE) {
        PyErr_Format(pool_exhausted, "class %lld has no handle left", (long long)ci->size);
        return -1;
    }
    if (o->mask) {
        group = 63 - __builtin_clzll((unsigned long long)o->mask);
        zid = list_get(o->heads, group);
    } else {
        PyObject *r = PyObject_CallMethodOneArg(c->pool, s_new_zspage, ci->cls);
        if (!r)
            return -1;
        zid = PyLong_AsLongLong(r);
        Py_DECREF(r);
        if (zid <= 0 || zid >= c->nzspages) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_RuntimeError, "_new_zspage returned id %lld", (long long)zid);
            return -1;
        }
        group = 0;
    }
    /* take_object */
    int64_t off = c->zfreeobj[zid];
    if (off) {
        c->zfreeobj[zid] = (int64_t)(c->words[off >> 3] >> 1);
    } else {
        off = c->zfresh[zid];
        int64_t left = c->zfresh_left[zid] - 1;
        c->zfresh_left[zid] = (uint16_t)left;
        if (!left)
            c->zfresh[zid] = 0;
        else if ((off & PAGE_MASK) + ci->size < PAGE_SIZE)
            c->zfresh[zid] = off + ci->size;
        else
            c->zfresh[zid] = ((int64_t)c->lk[off >> PAGE_SHIFT] << PAGE_SHIFT)
                + ((off & PAGE_MASK) + ci->size - PAGE_SIZE);
    }
    int64_t inuse = (int64_t)c->zinuse[zid] + 1;
    c->zinuse[zid] = (uint16_t)inuse;
    int ng = group_of(inuse, ci->objs);
    if (ng != group) {
        if (group)
            zs_unlink(c, o, zid, group);
        if (ng == GROUP_FULL)
            list_set(o->counts, GROUP_FULL, list_get(o->counts, GROUP_FULL) + 1);
        else
            zs_link(c, o, zid, ng);
    }
    int64_t slot = o->free_slot;
    o->free_slot = -1 - o->h[slot];
    o->h[slot] = (zid << LOC_SHIFT) | off;
    *handle = (slot << HANDLE_CLASS_BITS) | ci->index;
    c->words[off >> 3] = ((uint64_t)n << HDR_SIZE_SHIFT) | ((uint64_t)*handle << 1) | OBJ_ALLOCATED_TAG;
    o->obj_used++;
    return off;
}

/* Copy n bytes to arena offset off, following the chain across a frame boundary. */
static inline void put_bytes(Ctx *c, int64_t off, const uint8_t *src, int64_t n)
{
    int64_t end = (off | PAGE_MASK) + 1;
    if (off + n > end) {
        int64_t first = end - off;
        memcpy(c->arena + off, src, first);
        int64_t nxt = (int64_t)c->lk[off >> PAGE_SHIFT] << PAGE_SHIFT;
        memcpy(c->arena + nxt, src + first, n - first);
    } else {
        memcpy(c->arena + off, src, n);
    }
}

static int ctx_check(Ctx *c)
{
    if (!c->open) {
        PyErr_SetString(PyExc_ValueError, "the pool is closed");
        return -1;
    }
    return 0;
}

static PyObject *free_handles(Ctx *c, PyObject *seq);

/* Every batch call first takes a private tuple of its argument (iterating it may run Python
 * code, and a caller's list could change while a lock wait releases the GIL), then checks the
 * pool is open and counts itself busy with no Python code in between, so close() cannot unmap
 * the buffers under it. */
static PyObject *ctx_store_many(Ctx *c, PyObject *objs)
{
    PyObject *seq = PySequence_Tuple(objs);
    if (!seq)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    PyObject *out = PyList_New(n);
    Py_buffer *bufs = PyMem_Calloc(n ? n : 1, sizeof(Py_buffer));
    Py_ssize_t *nxt = PyMem_Malloc((n ? n : 1) * sizeof(Py_ssize_t));
    int64_t *hv = PyMem_Malloc((n ? n : 1) * sizeof(int64_t));
    char *done_mask = PyMem_Calloc(n ? n : 1, 1);
    Py_ssize_t nbufs = 0, stored = 0;
    Py_ssize_t head[NR_CLASS_SLOTS], tail[NR_CLASS_SLOTS];
    uint8_t order[NR_CLASS_SLOTS];
    int norder = 0;
    int failed = 0;
    if (!out || !bufs || !nxt || !hv || !done_mask) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        failed = 1;
        goto done;
    }
    for (int k = 0; k < NR_CLASS_SLOTS; k++)
        head[k] = -1;
    /* every size is checked before anything is allocated; objects are queued per class */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(items[i], &bufs[i], PyBUF_C_CONTIGUOUS) < 0) {
            failed = 1;
            goto done;
        }
        nbufs++;
        Py_ssize_t size = bufs[i].len;
        if (size <= 0 || size > ZS_MAX_ALLOC_SIZE) {
            PyErr_Format(PyExc_ValueError, "object size %zd outside 1..%d", size, ZS_MAX_ALLOC_SIZE);
            failed = 1;
            goto done;
        }
        int k = c->size_index[size];
        nxt[i] = -1;
        if (head[k] < 0) {
            head[k] = i;
            order[norder++] = (uint8_t)k;
        } else {
            nxt[tail[k]] = i;
        }
        tail[k] = i;
    }
    if (ctx_check(c) < 0) {
        failed = 1;
        goto done;
    }
    c->busy++;
    for (int g = 0; g < norder && !failed; g++) {
        ClassInfo *ci = &c->info[order[g]];
        Open o;
        if (class_open(&o, ci, 1) < 0) {
            class_close(&o);
            failed = 1;
            break;
        }
        for (Py_ssize_t i = head[order[g]]; i >= 0; i = nxt[i]) {
            int64_t size = bufs[i].len, handle, off;
            if (ci->huge) {
                long long hh, oo;
                PyObject *r = PyObject_CallMethod(c->pool, "_alloc", "OL", ci->cls, (long long)size);
                if (!r || !PyArg_ParseTuple(r, "LL", &hh, &oo)) {
                    Py_XDECREF(r);
                    failed = 1;
                    break;
                }
                Py_DECREF(r);
                handle = hh;
                off = oo;
                memcpy(c->arena + off, bufs[i].buf, size);
            } else {
                off = alloc_object(c, &o, size, &handle);
                if (off < 0) {
                    failed = 1;
                    break;
                }
                put_bytes(c, off + ZS_HANDLE_SIZE, bufs[i].buf, size);
            }
            hv[i] = handle;
            done_mask[i] = 1;
            stored++;
        }
        if (class_close(&o) < 0)
            failed = 1;
    }
    c->busy--;
done:
    for (Py_ssize_t i = 0; i < nbufs; i++)
        PyBuffer_Release(&bufs[i]);
    PyMem_Free(bufs);
    PyMem_Free(nxt);
    for (Py_ssize_t i = 0; !failed && i < n; i++) {
        PyObject *h = PyLong_FromLongLong(hv[i]);
        if (!h)
            failed = 1;
        else
            PyList_SET_ITEM(out, i, h);
    }
    if (failed && out && stored) {
        /* all or nothing: give back what was stored, keep the first exception */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        {
            PyObject *done_handles = PyList_New(0);
            for (Py_ssize_t i = 0; done_handles && i < n; i++) {
                if (!done_mask[i])
                    continue;
                PyObject *h = PyLong_FromLongLong(hv[i]);
                if (!h || PyList_Append(done_handles, h) < 0)
                    Py_CLEAR(done_handles);
                Py_XDECREF(h);
            }
            if (done_handles) {
                PyObject *r = free_handles(c, done_handles);
                Py_XDECREF(r);
                Py_DECREF(done_handles);
            }
            PyErr_Clear();
        }
        PyErr_Restore(et, ev, tb);
    }
    PyMem_Free(hv);
    PyMem_Free(done_mask);
    Py_DECREF(seq);
    if (failed) {
        Py_XDECREF(out);
        return NULL;
    }
    return out;
}

/* -- free ------------------------------------------------------------------------------------ */

/* Raise the reference implementation's error for a handle that failed a check. */
static void raise_via(Ctx *c, PyObject *method, PyObject *cls, int64_t handle, int64_t off,
                      int with_off)
{
    PyObject *r = with_off
        ? PyObject_CallMethod(c->pool, PyUnicode_AsUTF8(method), "OLL", cls, (long long)handle, (long long)off)
        : PyObject_CallMethod(c->pool, PyUnicode_AsUTF8(method), "OL", cls, (long long)handle);
    if (r) {
        Py_DECREF(r);
        PyErr_Format(PyExc_RuntimeError, "handle %lld failed a check the pool did not",
                     (long long)handle);
    }
}

/* A ClassInfo for handle object h, or NULL with the reference's exception. */
static ClassInfo *class_of(Ctx *c, PyObject *h, int64_t *handle)
{
    if (!PyLong_Check(h) && PyIndex_Check(h)) { /* an int-like (numpy's ints): as its int */
        PyObject *ix = PyNumber_Index(h);
        if (!ix)
            return NULL;
        ClassInfo *ci = class_of(c, ix, handle);
        Py_DECREF(ix);
        return ci;
    }
    int overflow = 0;
    long long v = PyLong_Check(h) ? PyLong_AsLongLongAndOverflow(h, &overflow) : -1;
    if (v == -1 && PyErr_Occurred())
        return NULL;
    if (PyLong_Check(h) && !overflow && v > HANDLE_CLASS_MASK) {
        ClassInfo *ci = &c->info[v & HANDLE_CLASS_MASK];
        if (ci->valid) {
            *handle = v;
            return ci;
        }
    }
    /* the reference raises: InvalidHandleError (or TypeError for a non-int) from _class_of,
     * or, for an int too large for 64 bits, "not allocated" from _location */
    PyObject *cls = PyObject_CallMethodOneArg(c->pool, s_class_of, h);
    if (cls) {
        PyObject *r = PyObject_CallMethodObjArgs(c->pool, s_location, cls, h, NULL);
        Py_DECREF(cls);
        if (r) {
            Py_DECREF(r);
            PyErr_Format(PyExc_RuntimeError, "handle %R passed the pool's checks", h);
        }
    }
    return NULL;
}

static int free_one(Ctx *c, Open *o, int64_t handle)
{
    ClassInfo *ci = o->ci;
    int64_t slot = handle >> HANDLE_CLASS_BITS;
    int64_t loc = slot < o->hlen ? o->h[slot] : -1;
    if (loc < 0) {
        raise_via(c, s_location, ci->cls, handle, 0, 0);
        return -1;
    }
    int64_t off = loc & LOC_OFF_MASK;
    if ((c->words[off >> 3] & HDR_HANDLE_MASK) != (((uint64_t)handle << 1) | OBJ_ALLOCATED_TAG)) {
        raise_via(c, s_header, ci->cls, handle, off, 1);
        return -1;
    }
    o->h[slot] = -1 - o->free_slot;
    o->free_slot = slot;
    int64_t zid = loc >> LOC_SHIFT;
    c->words[off >> 3] = (uint64_t)c->zfreeobj[zid] << 1;
    c->zfreeobj[zid] = off;
    int64_t inuse = c->zinuse[zid];
    int group = group_of(inuse, ci->objs);
    inuse--;
    c->zinuse[zid] = (uint16_t)inuse;
    o->obj_used--;
    int ng = group_of(inuse, ci->objs);
    if (ng != group) {
        if (group == GROUP_FULL)
            list_set(o->counts, GROUP_FULL, list_get(o->counts, GROUP_FULL) - 1);
        else
            zs_unlink(c, o, zid, group);
        if (ng)
            zs_link(c, o, zid, ng);
        else {
            PyObject *r = PyObject_CallMethod(c->pool, "free_zspage", "OL", ci->cls, (long long)zid);
            if (!r)
                return -1;
            Py_DECREF(r);
        }
    }
    return 0;
}

static PyObject *free_handles(Ctx *c, PyObject *handles)
{
    /* a private copy first: the caller's iterator must not run while a class lock is held */
    PyObject *seq = PySequence_Tuple(handles);
    if (!seq)
        return NULL;
    if (ctx_check(c) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    Open o;
    int opened = 0, failed = 0;
    c->busy++;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
        PyObject *h = PyTuple_GET_ITEM(seq, i);
        Py_INCREF(h);
        int64_t handle;
        ClassInfo *ci = class_of(c, h, &handle);
        if (!ci) {
            Py_DECREF(h);
            failed = 1;
            break;
        }
        if (opened && o.ci != ci) {
            opened = 0;
            if (class_close(&o) < 0) {
                Py_DECREF(h);
                failed = 1;
                break;
            }
        }
        if (!opened) {
            opened = 1;
            if (class_open(&o, ci, 1) < 0) {
                Py_DECREF(h);
                failed = 1;
                break;
            }
        }
        int rc;
        if (ci->huge) {
            PyObject *r = PyObject_CallMethodObjArgs(c->pool, s_free_locked, ci->cls, h, NULL);
            Py_XDECREF(r);
            rc = r ? 0 : -1;
        } else {
            rc = free_one(c, &o, handle);
        }
        Py_DECREF(h);
        if (rc < 0) {
            failed = 1;
            break;
        }
    }
    if (opened && class_close(&o) < 0)
        failed = 1;
    c->busy--;
    Py_DECREF(seq);
    if (failed || PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *ctx_free_many(Ctx *c, PyObject *handles)
{
    return free_handles(c, handles);
}

/* -- load ------------------------------------------------------------------------------------ */

static PyObject *ctx_load_many(Ctx *c, PyObject *handles)
{
    PyObject *seq = PySequence_Tuple(handles);
    if (!seq)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    PyObject *out = PyList_New(n);
    if (!out || ctx_check(c) < 0) {
        Py_XDECREF(out);
        Py_DECREF(seq);
        return NULL;
    }
    Open o;
    int opened = 0, failed = 0;
    c->busy++;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t handle;
        ClassInfo *ci = class_of(c, items[i], &handle);
        if (!ci) {
            failed = 1;
            break;
        }
        if (opened && o.ci != ci) {
            opened = 0;
            if (class_close(&o) < 0) {
                failed = 1;
                break;
            }
        }
        if (!opened) {
            opened = 1;
            if (class_open(&o, ci, 0) < 0) {
                failed = 1;
                break;
            }
            if (ci->huge && handles_acquire(&o) < 0) {
                failed = 1;
                break;
            }
        }
        int64_t slot = handle >> HANDLE_CLASS_BITS;
        int64_t loc = slot < o.hlen ? o.h[slot] : -1;
        if (loc < 0) {
            raise_via(c, s_location, ci->cls, handle, 0, 0);
            failed = 1;
            break;
        }
        int64_t off = loc & LOC_OFF_MASK, size;
        PyObject *b;
        if (ci->huge) {
            b = PyBytes_FromStringAndSize((const char *)c->arena + off, loc >> LOC_SHIFT);
        } else {
            uint64_t hdr = c->words[off >> 3];
            if ((hdr & HDR_HANDLE_MASK) != (((uint64_t)handle << 1) | OBJ_ALLOCATED_TAG)) {
                raise_via(c, s_header, ci->cls, handle, off, 1);
                failed = 1;
                break;
            }
            size = (int64_t)(hdr >> HDR_SIZE_SHIFT);
            off += ZS_HANDLE_SIZE;
            if ((off & PAGE_MASK) + size <= PAGE_SIZE) {
                b = PyBytes_FromStringAndSize((const char *)c->arena + off, size);
            } else {
                b = PyBytes_FromStringAndSize(NULL, size);
                if (b) {
                    char *dst = PyBytes_AS_STRING(b);
                    int64_t first = PAGE_SIZE - (off & PAGE_MASK);
                    int64_t nxt = (int64_t)c->lk[off >> PAGE_SHIFT] << PAGE_SHIFT;
                    memcpy(dst, c->arena + off, first);
                    memcpy(dst + first, c->arena + nxt, size - first);
                }
            }
        }
        if (!b) {
            failed = 1;
            break;
        }
        PyList_SET_ITEM(out, i, b);
    }
    if (opened && class_close(&o) < 0)
        failed = 1;
    c->busy--;
    Py_DECREF(seq);
    if (failed) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* -- the context object ------------------------------------------------------------------------ */

static void ctx_release(Ctx *c)
{
    Py_buffer *all[] = {&c->map, &c->links, &c->inuse, &c->freeobj, &c->fresh,
                        &c->fresh_left, &c->first, &c->prev, &c->next};
    for (int i = 0; i < c->nbuf; i++)
        PyBuffer_Release(all[i]);
    c->nbuf = 0;
    c->open = 0;
}

static int get_column(Ctx *c, Py_buffer *b, PyObject *owner, const char *name, const char *fmt,
                      Py_ssize_t itemsize)
{
    PyObject *obj = PyObject_GetAttrString(owner, name);
    if (!obj)
        return -1;
    int rc = PyObject_GetBuffer(obj, b, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND);
    Py_DECREF(obj);
    if (rc < 0)
        return -1;
    c->nbuf++;
    if (b->itemsize != itemsize || !b->format || strcmp(b->format, fmt) != 0) {
        PyErr_Format(PyExc_TypeError, "pool column %s is not of type '%s'", name, fmt);
        return -1;
    }
    return 0;
}

static int ctx_init(Ctx *c, PyObject *args, PyObject *kw)
{
    static char *names[] = {"pool", NULL};
    PyObject *pool;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:Pool", names, &pool))
        return -1;
    if (c->pool) {
        PyErr_SetString(PyExc_RuntimeError, "Pool() is initialised once");
        return -1;
    }
    Py_INCREF(pool);
    c->pool = pool;
    PyObject *arena = PyObject_GetAttrString(pool, "arena");
    PyObject *zs = PyObject_GetAttrString(pool, "zspages");
    PyObject *map = arena ? PyObject_GetAttrString(arena, "map") : NULL;
    int rc = -1;
    if (!map || !zs)
        goto out;
    if (PyObject_GetBuffer(map, &c->map, PyBUF_WRITABLE) < 0)
        goto out;
    c->nbuf++;
    if (get_column(c, &c->links, arena, "links", "i", 4) < 0
        || get_column(c, &c->inuse, zs, "inuse", "H", 2) < 0
        || get_column(c, &c->freeobj, zs, "freeobj", "q", 8) < 0
        || get_column(c, &c->fresh, zs, "fresh", "q", 8) < 0
        || get_column(c, &c->fresh_left, zs, "fresh_left", "H", 2) < 0
        || get_column(c, &c->first, zs, "first", "i", 4) < 0
        || get_column(c, &c->prev, zs, "prev", "i", 4) < 0
        || get_column(c, &c->next, zs, "next", "i", 4) < 0)
        goto out;
    c->arena = c->map.buf;
    c->words = c->map.buf;
    c->lk = c->links.buf;
    {
        PyObject *mf = PyObject_GetAttrString(arena, "max_frames");
        c->nframes = mf ? PyLong_AsSsize_t(mf) : -1;
        Py_XDECREF(mf);
        if (c->nframes < 0)
            goto out;
    }
    c->zinuse = c->inuse.buf;
    c->zfreeobj = c->freeobj.buf;
    c->zfresh = c->fresh.buf;
    c->zfresh_left = c->fresh_left.buf;
    c->zfirst = c->first.buf;
    c->zprev = c->prev.buf;
    c->znext = c->next.buf;
    c->nzspages = c->inuse.len / 2;
    {
        Py_buffer *cols[] = {&c->freeobj, &c->fresh, &c->fresh_left, &c->first, &c->prev, &c->next};
        for (int i = 0; i < 6; i++)
            if (cols[i]->len / cols[i]->itemsize < c->nzspages)
                c->nzspages = cols[i]->len / cols[i]->itemsize;
    }
    if (c->map.len < (c->nframes << PAGE_SHIFT) || c->links.len / 4 < c->nframes) {
        PyErr_SetString(PyExc_ValueError, "arena smaller than its link table");
        goto out;
    }
    c->classes = PyObject_GetAttrString(pool, "classes");
    PyObject *by_size = PyObject_GetAttrString(pool, "_by_size");
    if (!c->classes || !by_size)
        goto out_size;
    if (!PyTuple_Check(c->classes) || !PyList_Check(by_size)
        || PyList_GET_SIZE(by_size) != ZS_MAX_ALLOC_SIZE + 1) {
        PyErr_SetString(PyExc_TypeError, "pool.classes must be a tuple, pool._by_size a list of 4097");
        goto out_size;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(c->classes); i++) {
        PyObject *cls = PyTuple_GET_ITEM(c->classes, i);
        long long index, size, objs;
        PyObject *huge = PyObject_GetAttrString(cls, "huge");
        PyObject *ix = huge ? PyObject_GetAttrString(cls, "index") : NULL;
        PyObject *sz = ix ? PyObject_GetAttrString(cls, "size") : NULL;
        PyObject *ob = sz ? PyObject_GetAttrString(cls, "objs_per_zspage") : NULL;
        int ok = huge && ix && sz && ob;
        index = ok ? PyLong_AsLongLong(ix) : -1;
        ok = ok && !PyErr_Occurred();
        size = ok ? PyLong_AsLongLong(sz) : -1;
        ok = ok && !PyErr_Occurred();
        objs = ok ? PyLong_AsLongLong(ob) : -1;
        ok = ok && !PyErr_Occurred();
        int is_huge = ok ? PyObject_IsTrue(huge) : -1;
        ok = ok && is_huge >= 0;
        if (ok && (index < 0 || index >= NR_CLASS_SLOTS || objs <= 0)) {
            PyErr_SetString(PyExc_ValueError, "bad size class");
            ok = 0;
        }
        if (ok) {
            ClassInfo *ci = &c->info[index];
            ci->valid = 1;
            ci->huge = is_huge;
            ci->size = size;
            ci->objs = objs;
            ci->index = index;
            ci->cls = cls;
            PyObject *lock = PyObject_GetAttr(cls, s_lock);
            if (lock) {
                ci->acquire = PyObject_GetAttr(lock, s_acquire);
                ci->release = ci->acquire ? PyObject_GetAttr(lock, s_release) : NULL;
                Py_DECREF(lock);
            }
            ci->handles = ci->release ? PyObject_GetAttr(cls, s_handles) : NULL;
            ci->heads = ci->handles ? PyObject_GetAttr(cls, s_heads) : NULL;
            ci->counts = ci->heads ? PyObject_GetAttr(cls, s_counts) : NULL;
            ok = ci->counts != NULL;
            if (ok && (!PyList_CheckExact(ci->heads) || PyList_GET_SIZE(ci->heads) <= GROUP_FULL
                       || !PyList_CheckExact(ci->counts)
                       || PyList_GET_SIZE(ci->counts) <= GROUP_FULL)) {
                PyErr_SetString(PyExc_TypeError, "a class's heads and counts must be lists of 12");
                ok = 0;
            }
        }
        Py_XDECREF(huge);
        Py_XDECREF(ix);
        Py_XDECREF(sz);
        Py_XDECREF(ob);
        if (!ok)
            goto out_size;
    }
    for (Py_ssize_t s = 0; s <= ZS_MAX_ALLOC_SIZE; s++) {
        PyObject *ix = PyObject_GetAttrString(PyList_GET_ITEM(by_size, s), "index");
        long long index = ix ? PyLong_AsLongLong(ix) : -1;
        Py_XDECREF(ix);
        if (index < 0 || index >= NR_CLASS_SLOTS || !c->info[index].valid) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "pool._by_size names an unknown class");
            goto out_size;
        }
        c->size_index[s] = (uint8_t)index;
    }
    c->open = 1;
    rc = 0;
out_size:
    Py_XDECREF(by_size);
out:
    Py_XDECREF(arena);
    Py_XDECREF(zs);
    Py_XDECREF(map);
    if (rc < 0)
        ctx_release(c);
    return rc;
}

static PyObject *ctx_close(Ctx *c, PyObject *Py_UNUSED(ignored))
{
    if (c->busy) {
        PyErr_SetString(PyExc_BufferError, "the pool is in use");
        return NULL;
    }
    ctx_release(c);
    Py_RETURN_NONE;
}

static int ctx_traverse(Ctx *c, visitproc visit, void *arg)
{
    Py_VISIT(c->pool);
    Py_VISIT(c->classes);
    for (int i = 0; i < NR_CLASS_SLOTS; i++) {
        Py_VISIT(c->info[i].acquire);
        Py_VISIT(c->info[i].release);
        Py_VISIT(c->info[i].handles);
        Py_VISIT(c->info[i].heads);
        Py_VISIT(c->info[i].counts);
    }
    return 0;
}

static int ctx_clear(Ctx *c)
{
    if (!c->busy)
        ctx_release(c);
    for (int i = 0; i < NR_CLASS_SLOTS; i++) {
        c->info[i].valid = 0;
        Py_CLEAR(c->info[i].acquire);
        Py_CLEAR(c->info[i].release);
        Py_CLEAR(c->info[i].handles);
        Py_CLEAR(c->info[i].heads);
        Py_CLEAR(c->info[i].counts);
    }
    Py_CLEAR(c->pool);
    Py_CLEAR(c->classes);
    return 0;
}

static void ctx_dealloc(Ctx *c)
{
    PyObject_GC_UnTrack(c);
    ctx_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* -- device helpers ---------------------------------------------------------------------------- */

static int page_same_fill(const uint8_t *p, uint64_t *word)
{
    uint64_t first, x;
    memcpy(&first, p, 8);
    for (Py_ssize_t i = 8; i < PAGE_SIZE; i += 8) {
        memcpy(&x, p + i, 8);
        if (x != first)
            return 0;
    }
    uint64_t w = 0;
    for (int k = 7; k >= 0; k--)
        w = w << 8 | p[k];
    *word = w;
    return 1;
}

/* Integer arguments, converted one at a time (no C-API call with an exception pending). */
static int as_ssize(PyObject *o, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(o);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int as_ulong(PyObject *o, unsigned long *out)
{
    *out = PyLong_AsUnsignedLong(o);
    return (*out == (unsigned long)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int column(PyObject *obj, Py_buffer *b, Py_ssize_t itemsize, const char *what)
{
    if (PyObject_GetBuffer(obj, b, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0)
        return -1;
    if (b->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "slot table column %s has %zd-byte items, not %zd", what,
                     b->itemsize, itemsize);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* The slot table's columns, args[0..2]: flags (u32), handles (u64), actime (u32); all or none
 * acquired. */
static int slot_columns(PyObject *const *args, Py_buffer *fb, Py_buffer *hb, Py_buffer *ab)
{
    if (column(args[0], fb, 4, "flags") < 0)
        return -1;
    if (column(args[1], hb, 8, "handles") < 0) {
        PyBuffer_Release(fb);
        return -1;
    }
    if (column(args[2], ab, 4, "actime") < 0) {
        PyBuffer_Release(fb);
        PyBuffer_Release(hb);
        return -1;
    }
    return 0;
}

static int want_args(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs == want)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
    return -1;
}

static int list_put(PyObject *list, Py_ssize_t k, PyObject *v)
{
    if (!v)
        return -1;
    if (k < 0 || k >= PyList_GET_SIZE(list)) {
        Py_DECREF(v);
        PyErr_SetString(PyExc_IndexError, "encode_pages: page index outside values/flags");
        return -1;
    }
    PyList_SetItem(list, k, v);
    return 0;
}

/* device.encode_pages: pages [start, start + count) of src (page k at base + k * 4096).
 * A same-filled page gets values[k] = its word and flags[k] = same_flag; any other page is
 * compressed with ``compress`` and queued: the result, or the page itself (a memoryview
 * slice) when the result is huge_size bytes or more, with flags[k] = its size or huge_flags.
 * Returns (objects to store, their page indices). */
static PyObject *mod_encode_pages(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (want_args("encode_pages", nargs, 10) < 0)
        return NULL;
    PyObject *src = args[0], *compress = args[4], *values = args[8], *flags = args[9];
    Py_ssize_t base, start, count, huge_size;
    PyObject *same_flag = args[6], *huge_flags = args[7];
    if (as_ssize(args[1], &base) < 0 || as_ssize(args[2], &start) < 0
        || as_ssize(args[3], &count) < 0 || as_ssize(args[5], &huge_size) < 0)
        return NULL;
    if (!PyList_CheckExact(values) || !PyList_CheckExact(flags)) {
        PyErr_SetString(PyExc_TypeError, "encode_pages: values and flags must be lists");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(src, &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *objs = NULL, *where = NULL, *result = NULL;
    if (base < 0 || start < 0 || count < 0 || base > b.len
        || start > (b.len - base) / PAGE_SIZE || count > (b.len - base) / PAGE_SIZE - start) {
        PyErr_SetString(PyExc_ValueError, "encode_pages: pages outside the buffer");
        goto out;
    }
    objs = PyList_New(0);
    where = PyList_New(0);
    if (!objs || !where)
        goto out;
    for (Py_ssize_t k = start; k < start + count; k++) {
        Py_ssize_t pos = base + k * PAGE_SIZE;
        uint64_t word;
        if (page_same_fill((const uint8_t *)b.buf + pos, &word)) {
            if (list_put(values, k, PyLong_FromUnsignedLongLong(word)) < 0
                || list_put(flags, k, Py_NewRef(same_flag)) < 0)
                goto out;
            continue;
        }
        PyObject *page = PySequence_GetSlice(src, pos, pos + PAGE_SIZE);
        if (!page)
            goto out;
        PyObject *c = PyObject_CallOneArg(compress, page);
        Py_ssize_t n = c ? PyObject_Size(c) : -1;
        if (n < 0) {
            Py_XDECREF(c);
            Py_DECREF(page);
            goto out;
        }
        int rc;
        if (n >= huge_size) {
            rc = PyList_Append(objs, page);
            if (rc == 0)
                rc = list_put(flags, k, Py_NewRef(huge_flags));
        } else {
            rc = PyList_Append(objs, c);
            rc = rc < 0 ? -1 : list_put(flags, k, PyLong_FromSsize_t(n));
        }
        Py_DECREF(c);
        Py_DECREF(page);
        if (rc < 0)
            goto out;
        PyObject *ki = PyLong_FromSsize_t(k);
        if (!ki || PyList_Append(where, ki) < 0) {
            Py_XDECREF(ki);
            goto out;
        }
        Py_DECREF(ki);
    }
    result = PyTuple_Pack(2, objs, where);
out:
    PyBuffer_Release(&b);
    Py_XDECREF(objs);
    Py_XDECREF(where);
    return result;
}

/* device.decode_pages: fill buf (whole pages) from contents, one item per page: an int is a fill
 * word (0 for a never-written page), a 4096-byte bytes object a raw page, anything shorter a
 * compressed object for ``raw(obj, 4096)``, or for ``decompress(obj, 4096)`` (which raises the
 * proper error) when raw fails or returns the wrong length. */
static PyObject *mod_decode_pages(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (want_args("decode_pages", nargs, 4) < 0)
        return NULL;
    PyObject *raw = args[2], *decompress = args[3];
    /* a private copy: the decoders release the GIL, and the caller's list could change */
    PyObject *contents = PySequence_Tuple(args[1]);
    if (!contents)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(contents);
        return NULL;
    }
    PyObject *size = NULL;
    int failed = 0;
    Py_ssize_t n = PyTuple_GET_SIZE(contents);
    if (b.len / PAGE_SIZE != n || b.len % PAGE_SIZE) {
        PyErr_Format(PyExc_ValueError, "decode_pages: %zd pages for a %zd-byte buffer", n, b.len);
        failed = 1;
    }
    for (Py_ssize_t i = 0; !failed && i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(contents, i);
        uint8_t *dst = (uint8_t *)b.buf + i * PAGE_SIZE;
        if (PyLong_Check(item)) {
            uint64_t word = PyLong_AsUnsignedLongLong(item);
            if (word == (uint64_t)-1 && PyErr_Occurred()) {
                failed = 1;
                break;
            }
            if (!word) {
                memset(dst, 0, PAGE_SIZE);
                continue;
            }
            uint8_t w[8];
            for (int k = 0; k < 8; k++)
                w[k] = (uint8_t)(word >> (8 * k));
            for (Py_ssize_t j = 0; j < PAGE_SIZE; j += 8)
                memcpy(dst + j, w, 8);
            continue;
        }
        Py_buffer ib;
        if (PyObject_GetBuffer(item, &ib, PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Format(PyExc_TypeError, "decode_pages: page %zd is %.100s, not int or bytes", i,
                         Py_TYPE(item)->tp_name);
            failed = 1;
            break;
        }
        int whole = ib.len == PAGE_SIZE;
        if (whole)
            memcpy(dst, ib.buf, PAGE_SIZE); /* a page stored raw */
        PyBuffer_Release(&ib);
        if (whole)
            continue;
        if (!size && !(size = PyLong_FromLong(PAGE_SIZE))) {
            failed = 1;
            break;
        }
        PyObject *cargs[2] = {item, size};
        PyObject *page = PyObject_Vectorcall(raw, cargs, 2, NULL);
        if (!page && !PyErr_ExceptionMatches(PyExc_Exception)) {
            failed = 1; /* KeyboardInterrupt, SystemExit: not a corrupt object */
            break;
        }
        if (!page || !PyBytes_Check(page) || PyBytes_GET_SIZE(page) != PAGE_SIZE) {
            PyErr_Clear(); /* corrupt: the careful decoder raises the proper error */
            Py_XDECREF(page);
            page = PyObject_Vectorcall(decompress, cargs, 2, NULL);
        }
        if (!page) {
            failed = 1;
            break;
        }
        Py_buffer pb;
        if (PyObject_GetBuffer(page, &pb, PyBUF_C_CONTIGUOUS) < 0) {
            Py_DECREF(page);
            failed = 1;
            break;
        }
        if (pb.len != PAGE_SIZE) {
            PyErr_Format(PyExc_ValueError, "decode_pages: page %zd decompressed to %zd bytes", i,
                         pb.len);
            failed = 1;
        } else {
            memcpy(dst, pb.buf, PAGE_SIZE);
        }
        PyBuffer_Release(&pb);
        Py_DECREF(page);
    }
    Py_XDECREF(size);
    PyBuffer_Release(&b);
    Py_DECREF(contents);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}


/* device.scan_slots: the read side of one stripe of the slot table (its lock held). */
static PyObject *mod_scan_slots(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (want_args("scan_slots", nargs, 10) < 0)
        return NULL;
    PyObject *out = args[7], *load_many = args[8];
    Py_ssize_t lo, hi, first;
    unsigned long now, size_mask, same, wb, accessed, prio_mask;
    if (as_ssize(args[3], &lo) < 0 || as_ssize(args[4], &hi) < 0 || as_ssize(args[5], &first) < 0
        || as_ulong(args[6], &now) < 0)
        return NULL;
    if (!PyArg_ParseTuple(args[9], "kkkkk:scan_slots masks", &size_mask, &same, &wb, &accessed,
                          &prio_mask))
        return NULL;
    if (!PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError, "scan_slots: out must be a list");
        return NULL;
    }
    Py_buffer fb, hb, ab;
    if (slot_columns(args, &fb, &hb, &ab) < 0)
        return NULL;
    PyObject *stored = NULL, *where = NULL, *blocks = NULL, *block_where = NULL,
             *recompressed = NULL, *result = NULL;
    if (first < 0 || lo < first || hi < lo || hi > fb.len / 4 || hi > hb.len / 8
        || hi > ab.len / 4 || hi - first > PyList_GET_SIZE(out)) {
        PyErr_SetString(PyExc_ValueError, "scan_slots: range outside the table or out");
        goto done;
    }
    uint32_t *flags = fb.buf, *actime = ab.buf;
    uint64_t *handles = hb.buf;
    if (!(stored = PyList_New(0)) || !(where = PyList_New(0)))
        goto done;
    for (Py_ssize_t j = lo; j < hi; j++) {
        uint32_t f = flags[j];
        PyObject *k;
        if (f & size_mask) {
            PyObject *h = PyLong_FromUnsignedLongLong(handles[j]);
            k = PyLong_FromSsize_t(j - first);
            int rc = (h && k) ? PyList_Append(stored, h) | PyList_Append(where, k) : -1;
            Py_XDECREF(h);
            if (rc == 0 && (f & prio_mask)) {
                if (!recompressed && !(recompressed = PyList_New(0)))
                    rc = -1;
                PyObject *pair = rc ? NULL : Py_BuildValue("(Ok)", k, (unsigned long)f);
                rc = pair ? PyList_Append(recompressed, pair) : -1;
                Py_XDECREF(pair);
            }
            Py_XDECREF(k);
            if (rc)
                goto done;
        } else if (f & same) {
            PyObject *word = PyLong_FromUnsignedLongLong(handles[j]);
            if (!word || PyList_SetItem(out, j - first, word) < 0)
                goto done;
        } else if (f & wb) {
            if ((!blocks && !(blocks = PyList_New(0)))
                || (!block_where && !(block_where = PyList_New(0))))
                goto done;
            PyObject *h = PyLong_FromUnsignedLongLong(handles[j]);
            k = PyLong_FromSsize_t(j - first);
            int rc = (h && k) ? PyList_Append(blocks, h) | PyList_Append(block_where, k) : -1;
            Py_XDECREF(h);
            Py_XDECREF(k);
            if (rc)
                goto done;
        } else {
            continue;
        }
        if (f & accessed) /* any access ends idleness and post-processing picks */
            flags[j] = f & ~(uint32_t)accessed;
        actime[j] = (uint32_t)now;
    }
    Py_ssize_t n = PyList_GET_SIZE(stored);
    if (n) {
        /* the buffers stay exported meanwhile: nothing resizes the slot table */
        PyObject *objs = PyObject_CallOneArg(load_many, stored);
        if (!objs)
            goto done;
        if (!PyList_CheckExact(objs) || PyList_GET_SIZE(objs) != n) {
            Py_DECREF(objs);
            PyErr_SetString(PyExc_RuntimeError, "scan_slots: load_many returned a bad list");
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t k = PyLong_AsSsize_t(PyList_GET_ITEM(where, i));
            if (PyList_SetItem(out, k, Py_NewRef(PyList_GET_ITEM(objs, i))) < 0) {
                Py_DECREF(objs); /* out shrank under load_many: IndexError */
                goto done;
            }
        }
        Py_DECREF(objs);
    }
    if (blocks || recompressed) {
        if ((!blocks && !(blocks = PyList_New(0))) || (!block_where && !(block_where = PyList_New(0)))
            || (!recompressed && !(recompressed = PyList_New(0))))
            goto done;
        result = PyTuple_Pack(3, blocks, block_where, recompressed);
    } else {
        result = Py_NewRef(Py_None);
    }
done:
    PyBuffer_Release(&fb);
    PyBuffer_Release(&hb);
    PyBuffer_Release(&ab);
    Py_XDECREF(stored);
    Py_XDECREF(where);
    Py_XDECREF(blocks);
    Py_XDECREF(block_where);
    Py_XDECREF(recompressed);
    return result;
}

/* device.install_slots: switch slots first.. to new contents and keep the stripe counters. */
static PyObject *mod_install_slots(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (want_args("install_slots", nargs, 9) < 0)
        return NULL;
    PyObject *values = args[4], *newflags = args[5], *counters = args[7];
    Py_ssize_t first;
    unsigned long now, size_mask, same_flag, wb_flag, huge_flag, stripe_shift, stripe_mask;
    if (as_ssize(args[3], &first) < 0 || as_ulong(args[6], &now) < 0)
        return NULL;
    if (!PyArg_ParseTuple(args[8], "kkkkkk:install_slots masks", &size_mask, &same_flag, &wb_flag,
                          &huge_flag, &stripe_shift, &stripe_mask))
        return NULL;
    if (!PyList_CheckExact(values) || !PyList_CheckExact(newflags)
        || PyList_GET_SIZE(values) != PyList_GET_SIZE(newflags) || !PyTuple_Check(counters)
        || PyTuple_GET_SIZE(counters) != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "install_slots: values and flags must be lists of one length, counters "
                        "a tuple of 5 arrays");
        return NULL;
    }
    Py_buffer fb, hb, ab, cb[5];
    int nc = 0;
    PyObject *stale = NULL, *blocks = NULL, *result = NULL;
    if (slot_columns(args, &fb, &hb, &ab) < 0)
        return NULL;
    for (; nc < 5; nc++)
        if (column(PyTuple_GET_ITEM(counters, nc), &cb[nc], 8, "a counter") < 0)
            goto done;
    Py_ssize_t n = PyList_GET_SIZE(values);
    for (int c = 0; c < 5; c++)
        if ((Py_ssize_t)stripe_mask >= cb[c].len / 8) {
            PyErr_SetString(PyExc_ValueError, "install_slots: counters shorter than the stripes");
            goto done;
        }
    if (first < 0 || first > fb.len / 4 - n || first > hb.len / 8 - n || first > ab.len / 4 - n) {
        PyErr_SetString(PyExc_ValueError, "install_slots: slots outside the table");
        goto done;
    }
    uint32_t *flags = fb.buf, *actime = ab.buf;
    uint64_t *handles = hb.buf;
    int64_t *stored = cb[0].buf, *same = cb[1].buf, *compr = cb[2].buf, *huge = cb[3].buf,
            *huge_since = cb[4].buf;
    /* parse every new value first: a bad one changes nothing */
    uint64_t *vals = PyMem_Malloc((n ? n : 1) * sizeof(uint64_t));
    uint32_t *nfl = PyMem_Malloc((n ? n : 1) * sizeof(uint32_t));
    char *empty = PyMem_Malloc(n ? n : 1);
    if (!vals || !nfl || !empty) {
        PyErr_NoMemory();
        goto free_tmp;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyList_GET_ITEM(values, k);
        empty[k] = v == Py_None;
        if (!empty[k]) {
            unsigned long f;
            vals[k] = PyLong_AsUnsignedLongLong(v);
            if ((vals[k] == (uint64_t)-1 && PyErr_Occurred())
                || as_ulong(PyList_GET_ITEM(newflags, k), &f) < 0)
                goto free_tmp;
            nfl[k] = (uint32_t)f;
        }
    }
    if (!(stale = PyList_New(0)) || !(blocks = PyList_New(0)))
        goto free_tmp;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t i = first + k;
        Py_ssize_t st = (i >> stripe_shift) & stripe_mask;
        uint32_t old = flags[i];
        if (old & (size_mask | same_flag | wb_flag)) { /* zram_free_page */
            if (old & same_flag) {
                same[st]--;
            } else {
                PyObject *h = PyLong_FromUnsignedLongLong(handles[i]);
                if (!h || PyList_Append((old & wb_flag) ? blocks : stale, h) < 0) {
                    Py_XDECREF(h);
                    goto free_tmp; /* MemoryError only; the slots before k are switched */
                }
                Py_DECREF(h);
                if (!(old & wb_flag)) {
                    compr[st] -= old & size_mask;
                    if (old & huge_flag)
                        huge[st]--;
                }
            }
            stored[st]--;
        }
        if (empty[k]) {
            handles[i] = 0;
            flags[i] = 0;
            continue;
        }
        uint32_t f = nfl[k];
        handles[i] = vals[k];
        flags[i] = f;
        actime[i] = (uint32_t)now;
        stored[st]++;
        if (f & same_flag) {
            same[st]++;
        } else {
            compr[st] += f & size_mask;
            if (f & huge_flag) {
                huge[st]++;
                huge_since[st]++;
            }
        }
    }
    result = PyTuple_Pack(2, stale, blocks);
free_tmp:
    PyMem_Free(vals);
    PyMem_Free(nfl);
    PyMem_Free(empty);
done:
    PyBuffer_Release(&fb);
    PyBuffer_Release(&hb);
    PyBuffer_Release(&ab);
    for (int c = 0; c < nc; c++)
        PyBuffer_Release(&cb[c]);
    Py_XDECREF(stale);
    Py_XDECREF(blocks);
    return result;
}

static PyMethodDef module_methods[] = {
    {"install_slots", (PyCFunction)(void (*)(void))mod_install_slots, METH_FASTCALL,
     "install_slots(flags, handles, actime, first, values, flags, now, counters, masks) -> "
     "(stale, blocks): device.install_slots in C."},
    {"scan_slots", (PyCFunction)(void (*)(void))mod_scan_slots, METH_FASTCALL,
     "scan_slots(flags, handles, actime, lo, hi, first, now, out, load_many, masks): "
     "device.scan_slots in C."},
    {"decode_pages", (PyCFunction)(void (*)(void))mod_decode_pages, METH_FASTCALL,
     "decode_pages(buf, contents, raw, decompress): device.decode_pages in C."},
    {"encode_pages", (PyCFunction)(void (*)(void))mod_encode_pages, METH_FASTCALL,
     "encode_pages(src, base, start, count, compress, huge_size, same_flag, huge_flags, "
     "values, flags) -> (objs, where): device.encode_pages in C."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef ctx_methods[] = {
    {"store_many", (PyCFunction)ctx_store_many, METH_O,
     "store_many(objs) -> handles: ZsPool.store_many (all or nothing)."},
    {"load_many", (PyCFunction)ctx_load_many, METH_O,
     "load_many(handles) -> list of bytes: ZsPool.load_many."},
    {"free_many", (PyCFunction)ctx_free_many, METH_O,
     "free_many(handles): ZsPool.free_many (stops at the first invalid handle)."},
    {"close", (PyCFunction)ctx_close, METH_NOARGS, "Release the pool's buffers."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CtxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zramd._zsfast.Pool",
    .tp_basicsize = sizeof(Ctx),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The object loops of one ZsPool, on that pool's buffers.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ctx_init,
    .tp_dealloc = (destructor)ctx_dealloc,
    .tp_traverse = (traverseproc)ctx_traverse,
    .tp_clear = (inquiry)ctx_clear,
    .tp_methods = ctx_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "zramd._zsfast",
    "The pool's per-object loops in C (see zramd/_zsfast.c).", -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__zsfast(void)
{
#define INTERN(var, text)                                                                    \
    if (!(var = PyUnicode_InternFromString(text)))                                           \
        return NULL;
    INTERN(s_lock, "lock");
    INTERN(s_acquire, "acquire");
    INTERN(s_release, "release");
    INTERN(s_mask, "mask");
    INTERN(s_free_slot, "free_slot");
    INTERN(s_obj_used, "obj_used");
    INTERN(s_heads, "heads");
    INTERN(s_counts, "counts");
    INTERN(s_handles, "handles");
    INTERN(s_new_zspage, "_new_zspage");
    INTERN(s_free_zspage, "free_zspage");
    INTERN(s_alloc, "_alloc");
    INTERN(s_location, "_location");
    INTERN(s_header, "_header");
    INTERN(s_class_of, "_class_of");
    INTERN(s_frombytes, "frombytes");
    INTERN(s_free_locked, "_free_locked");
    PyObject *errors = PyImport_ImportModule("zramd.errors");
    if (!errors)
        return NULL;
    pool_exhausted = PyObject_GetAttrString(errors, "PoolExhaustedError");
    Py_DECREF(errors);
    if (!pool_exhausted)
        return NULL;
    if (PyType_Ready(&CtxType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Pool", (PyObject *)&CtxType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *consts = Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:L,s:i,s:i,s:L,s:i}", "ABI_VERSION", ABI_VERSION, "PAGE_SHIFT",
        PAGE_SHIFT, "ZS_HANDLE_SIZE", ZS_HANDLE_SIZE, "LOC_SHIFT", LOC_SHIFT, "MAX_HANDLE",
        (long long)MAX_HANDLE, "HANDLE_CLASS_BITS", HANDLE_CLASS_BITS, "HDR_SIZE_SHIFT",
        HDR_SIZE_SHIFT, "HDR_HANDLE_MASK", (long long)HDR_HANDLE_MASK, "FULL", GROUP_FULL);
    if (!consts || PyModule_AddObject(m, "CONSTANTS", consts) < 0) {
        Py_XDECREF(consts);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/*
 * zramd._zram.Codec(name, level=None, winbits=None, dict=None): the C codecs (zcomp.c and
 * backend_*.c) for Python code and tests, with the Compressor protocol of
 * zramd/compress/base.py: name, level, compress(src) -> bytes, decompress(src, size) ->
 * bytes; and compress_many / decompress_many for batches. Every call releases the GIL around
 * the codec work (a batch once for all its buffers, on one stream, as the device's C loop
 * does per request), so threads sharing one Codec compress in parallel (each call takes its
 * own stream).
 *
 * Errors: ValueError for a bad name or parameter (the message names it), CompressionError
 * (zramd.errors) for an object that is corrupt or does not decompress to exactly size bytes,
 * MemoryError when a stream cannot be made.
 */
#include "codec_object.h"

#include <errno.h>

typedef struct {
    PyObject_HEAD
    struct zcomp *comp; /* immutable after __new__ */
} CodecObject;

static PyTypeObject CodecType;

/* zramd.errors.CompressionError, imported on first use (a borrowed, cached reference) */
static PyObject *compression_error(void)
{
    static PyObject *cls;
    PyObject *mod;

    if (cls)
        return cls;
    mod = PyImport_ImportModule("zramd.errors");
    if (!mod)
        return NULL;
    cls = PyObject_GetAttrString(mod, "CompressionError");
    Py_DECREF(mod);
    return cls;
}

static PyObject *raise_compression_error(const char *fmt, ...)
{
    PyObject *cls = compression_error();
    PyObject *msg;
    va_list ap;

    if (!cls)
        return NULL;
    va_start(ap, fmt);
    msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg) {
        PyErr_SetObject(cls, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

/*
 * None -> ZCOMP_PARAM_NOT_SET; an int that fits the kernel's s32 fields (INT_MIN is the
 * kernel's own "not set", so it means the default too); else ValueError / TypeError. As for
 * the Python backends, a value beyond 32 bits is an error only where the backend uses the
 * parameter (ignored: whatever it is, it means nothing).
 */
static int param_value(PyObject *obj, const char *alg, const char *what, bool ignored,
                       int *out)
{
    long v;
    int overflow;

    *out = ZCOMP_PARAM_NOT_SET;
    if (obj == Py_None)
        return 0;
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s%s must be an int or None, not %.50s", alg, what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    v = PyLong_AsLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < INT_MIN || v > INT_MAX) {
        if (ignored)
            return 0;
        PyErr_Format(PyExc_ValueError, "%s%s %R does not fit a 32-bit signed integer", alg,
                     what, obj);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static PyObject *codec_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", "level", "winbits", "dict", NULL};
    const char *name;
    PyObject *level_obj = Py_None, *winbits_obj = Py_None, *dict_obj = Py_None;
    Py_buffer dict = {0};
    struct zcomp_error err;
    CodecObject *self;
    int level, winbits;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|OOO:Codec", kwlist, &name, &level_obj,
                                     &winbits_obj, &dict_obj))
        return NULL;
    /* the name first: an unknown or unavailable one is the error, whatever the values */
    if (!zcomp_available_algorithm(name)) {
        zcomp_create(name, ZCOMP_PARAM_NOT_SET, ZCOMP_PARAM_NOT_SET, NULL, 0, &err);
        PyErr_SetString(PyExc_ValueError, err.msg);
        return NULL;
    }
    /* named as in the Python backends' messages: "zstd level", "deflate.winbits" */
    if (param_value(level_obj, name, " level", zcomp_ignores_level(name), &level) < 0 ||
        param_value(winbits_obj, name, ".winbits", zcomp_ignores_winbits(name), &winbits) < 0)
        return NULL;
    /* an empty dictionary is none, as for the Python backends */
    if (dict_obj != Py_None && PyObject_GetBuffer(dict_obj, &dict, PyBUF_SIMPLE) < 0)
        return NULL;
    self = (CodecObject *)type->tp_alloc(type, 0);
    if (self)
        self->comp = zcomp_create(name, level, winbits, dict.buf, (size_t)dict.len, &err);
    if (dict_obj != Py_None)
        PyBuffer_Release(&dict);
    if (!self)
        return NULL;
    if (!self->comp) {
        Py_DECREF(self);
        if (err.code == -ENOMEM)
            return PyErr_NoMemory();
        PyErr_SetString(PyExc_ValueError, err.msg);
        return NULL;
    }
    return (PyObject *)self;
}

static void codec_dealloc(CodecObject *self)
{
    zcomp_destroy(self->comp);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *codec_repr(CodecObject *self)
{
    int level = zcomp_level(self->comp), winbits = zcomp_winbits(self->comp);

    if (winbits != ZCOMP_PARAM_NOT_SET)
        return PyUnicode_FromFormat("Codec('%s', level=%d, winbits=%d)",
                                    zcomp_name(self->comp), level, winbits);
    if (level != ZCOMP_PARAM_NOT_SET)
        return PyUnicode_FromFormat("Codec('%s', level=%d)", zcomp_name(self->comp), level);
    return PyUnicode_FromFormat("Codec('%s')", zcomp_name(self->comp));
}

static PyObject *int_or_none(int v)
{
    if (v == ZCOMP_PARAM_NOT_SET)
        Py_RETURN_NONE;
    return PyLong_FromLong(v);
}

static PyObject *codec_get_name(CodecObject *self, void *closure)
{
    return PyUnicode_FromString(zcomp_name(self->comp));
}

static PyObject *codec_get_level(CodecObject *self, void *closure)
{
    return int_or_none(zcomp_level(self->comp));
}

static PyObject *codec_get_winbits(CodecObject *self, void *closure)
{
    return int_or_none(zcomp_winbits(self->comp));
}

static PyObject *codec_get_streams(CodecObject *self, void *closure)
{
    unsigned int total, idle;

    zcomp_stream_counts(self->comp, &total, &idle);
    return Py_BuildValue("(II)", total, idle);
}

static PyObject *compress_page(CodecObject *self, const void *src)
{
    struct zcomp *comp = self->comp;
    struct zcomp_strm *zstrm;
    unsigned int len = 0;
    PyObject *out = NULL;
    int ret = 0;

    Py_BEGIN_ALLOW_THREADS
    zstrm = zcomp_stream_get(comp);
    if (zstrm)
        ret = zcomp_compress(comp, zstrm, src, &len);
    Py_END_ALLOW_THREADS
    if (!zstrm)
        return PyErr_NoMemory();
    if (ret == 0)
        out = PyBytes_FromStringAndSize((const char *)zstrm->buffer, len);
    zcomp_stream_put(comp, zstrm);
    if (ret)
        return raise_compression_error("%s: compression failed (errno %d)", zcomp_name(comp),
                                       -ret);
    return out;
}

static PyObject *compress_any(CodecObject *self, const void *src, size_t src_len)
{
    struct zcomp *comp = self->comp;
    size_t cap = zcomp_compress_bound(comp, src_len), len = 0;
    struct zcomp_strm *zstrm;
    PyObject *out;
    char *dst;
    int ret = 0;

    if (src_len > ZCOMP_MAX_BUF) {
        PyErr_Format(PyExc_ValueError, "%s: %zu bytes is more than one call takes (%d)",
                     zcomp_name(comp), src_len, ZCOMP_MAX_BUF);
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
    if (!out)
        return NULL;
    dst = PyBytes_AS_STRING(out); /* nobody else sees out until we return it */
    Py_BEGIN_ALLOW_THREADS
    zstrm = zcomp_stream_get(comp);
    if (zstrm) {
        ret = zcomp_compress_buf(comp, zstrm, src, src_len, dst, cap, &len);
        zcomp_stream_put(comp, zstrm);
    }
    Py_END_ALLOW_THREADS
    if (!zstrm) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    if (ret) {
        Py_DECREF(out);
        return raise_compression_error("%s: compression failed (errno %d)", zcomp_name(comp),
                                       -ret);
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)len) < 0)
        return NULL;
    return out;
}

static PyObject *codec_compress(CodecObject *self, PyObject *arg)
{
    Py_buffer src;
    PyObject *out;

    if (PyObject_GetBuffer(arg, &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (src.len == ZCOMP_PAGE_SIZE)
        out = compress_page(self, src.buf);
    else
        out = compress_any(self, src.buf, (size_t)src.len);
    PyBuffer_Release(&src);
    return out;
}

/* A decompressed size argument: 0..ZCOMP_MAX_BUF, or -1 with an exception set. */
static Py_ssize_t size_arg(struct zcomp *comp, PyObject *arg)
{
    Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred())
        return -1;
    if (size < 0 || size > ZCOMP_MAX_BUF) {
        PyErr_Format(PyExc_ValueError, "%s: size %zd outside 0..%d", zcomp_name(comp), size,
                     ZCOMP_MAX_BUF);
        return -1;
    }
    return size;
}

static PyObject *codec_decompress(CodecObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct zcomp *comp = self->comp;
    struct zcomp_strm *zstrm;
    Py_buffer src;
    Py_ssize_t size, src_len;
    PyObject *out;
    int ret = 0;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "decompress() takes 2 arguments (src, size), %zd given",
                     nargs);
        return NULL;
    }
    size = size_arg(comp, args[1]);
    if (size < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    src_len = src.len;
    out = PyBytes_FromStringAndSize(NULL, size);
    if (!out) {
        PyBuffer_Release(&src);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    zstrm = zcomp_stream_get(comp);
    if (zstrm) {
        ret = zcomp_decompress_buf(comp, zstrm, src.buf, (size_t)src_len,
                                   PyBytes_AS_STRING(out), (size_t)size);
        zcomp_stream_put(comp, zstrm);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    if (!zstrm) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    if (ret) {
        Py_DECREF(out);
        return raise_compression_error(
            "%s: corrupt object: %zd bytes do not decompress to exactly %zd bytes",
            zcomp_name(comp), src_len, size);
    }
    return out;
}

/* The buffers of a sequence's n items, all or none (NULL with an exception set). */
static Py_buffer *get_buffers(PyObject *seq, Py_ssize_t n)
{
    Py_buffer *views = PyMem_Calloc((size_t)n ? (size_t)n : 1, sizeof(Py_buffer));
    Py_ssize_t i;

    if (!views)
        return (Py_buffer *)PyErr_NoMemory();
    for (i = 0; i < n; i++)
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &views[i], PyBUF_SIMPLE) < 0)
            break;
    if (i == n)
        return views;
    while (i-- > 0)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    return NULL;
}

static void release_buffers(Py_buffer *views, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

/*
 * compress_many(srcs) -> list[bytes]: compress each buffer, releasing the GIL once for the
 * whole batch on one stream, as the device's C loop does per request.
 */
static PyObject *codec_compress_many(CodecObject *self, PyObject *arg)
{
    struct zcomp *comp = self->comp;
    PyObject *seq, *out = NULL;
    Py_buffer *views;
    struct zcomp_strm *zstrm = NULL;
    size_t *off = NULL, *len = NULL, total = 0;
    unsigned char *arena = NULL;
    Py_ssize_t n, i, failed = -1;
    int ret = 0;

    seq = PySequence_Fast(arg, "compress_many() takes a sequence of buffers");
    if (!seq)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    views = get_buffers(seq, n);
    if (!views)
        goto done_seq;
    off = PyMem_Malloc(((size_t)n + 1) * sizeof(size_t));
    len = PyMem_Malloc(((size_t)n + 1) * sizeof(size_t));
    if (!off || !len) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        if ((size_t)views[i].len > ZCOMP_MAX_BUF || total > (size_t)PY_SSIZE_T_MAX / 2) {
            PyErr_Format(PyExc_ValueError, "%s: compress_many() batch is too large",
                         zcomp_name(comp));
            goto done;
        }
        off[i] = total;
        total += zcomp_compress_bound(comp, (size_t)views[i].len);
    }
    off[n] = total;
    arena = PyMem_RawMalloc(total ? total : 1);
    if (!arena) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    zstrm = zcomp_stream_get(comp);
    for (i = 0; zstrm && i < n; i++) {
        ret = zcomp_compress_buf(comp, zstrm, views[i].buf, (size_t)views[i].len,
                                 arena + off[i], off[i + 1] - off[i], &len[i]);
        if (ret) {
            failed = i;
            break;
        }
    }
    if (zstrm)
        zcomp_stream_put(comp, zstrm);
    Py_END_ALLOW_THREADS
    if (!zstrm) {
        PyErr_NoMemory();
        goto done;
    }
    if (failed >= 0) {
        raise_compression_error("%s: compression of buffer %zd failed (errno %d)",
                                zcomp_name(comp), failed, -ret);
        goto done;
    }
    out = PyList_New(n);
    for (i = 0; out && i < n; i++) {
        PyObject *obj = PyBytes_FromStringAndSize((const char *)arena + off[i],
                                                  (Py_ssize_t)len[i]);
        if (!obj)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, obj);
    }
done:
    PyMem_RawFree(arena);
    PyMem_Free(off);
    PyMem_Free(len);
    if (views)
        release_buffers(views, n);
done_seq:
    Py_DECREF(seq);
    return out;
}

/*
 * decompress_many(srcs, size) -> list[bytes]: each object to exactly size bytes, the GIL
 * released once for the batch; CompressionError naming the first bad object (all or nothing).
 */
static PyObject *codec_decompress_many(CodecObject *self, PyObject *const *args,
                                       Py_ssize_t nargs)
{
    struct zcomp *comp = self->comp;
    struct zcomp_strm *zstrm;
    PyObject *seq, *out = NULL;
    Py_buffer *views;
    char **dst = NULL;
    Py_ssize_t n, i, size, failed = -1;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "decompress_many() takes 2 arguments (srcs, size), %zd given", nargs);
        return NULL;
    }
    size = size_arg(comp, args[1]);
    if (size < 0)
        return NULL;
    seq = PySequence_Fast(args[0], "decompress_many() takes a sequence of buffers");
    if (!seq)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    views = get_buffers(seq, n);
    if (!views)
        goto done_seq;
    out = PyList_New(n);
    dst = PyMem_Malloc(((size_t)n + 1) * sizeof(char *));
    if (!out || !dst) {
        if (out)
            PyErr_NoMemory();
        Py_CLEAR(out);
        goto done;
    }
    for (i = 0; i < n; i++) {
        PyObject *obj = PyBytes_FromStringAndSize(NULL, size);
        if (!obj) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, obj);
        dst[i] = PyBytes_AS_STRING(obj); /* nobody else sees them until we return */
    }
    Py_BEGIN_ALLOW_THREADS
    zstrm = zcomp_stream_get(comp);
    for (i = 0; zstrm && i < n; i++) {
        if (zcomp_decompress_buf(comp, zstrm, views[i].buf, (size_t)views[i].len, dst[i],
                                 (size_t)size)) {
            failed = i;
            break;
        }
    }
    if (zstrm)
        zcomp_stream_put(comp, zstrm);
    Py_END_ALLOW_THREADS
    if (!zstrm) {
        Py_CLEAR(out);
        PyErr_NoMemory();
    } else if (failed >= 0) {
        Py_CLEAR(out);
        raise_compression_error(
            "%s: corrupt object %zd: %zd bytes do not decompress to exactly %zd bytes",
            zcomp_name(comp), failed, views[failed].len, size);
    }
done:
    PyMem_Free(dst);
    if (views)
        release_buffers(views, n);
done_seq:
    Py_DECREF(seq);
    return out;
}

static PyMethodDef codec_methods[] = {
    {"compress", (PyCFunction)codec_compress, METH_O,
     "compress(src) -> bytes: compress a buffer (normally one 4 KiB page). The result may be\n"
     "longer than src (incompressible data). CompressionError on a library failure."},
    {"decompress", (PyCFunction)(void (*)(void))codec_decompress, METH_FASTCALL,
     "decompress(src, size) -> bytes: exactly size bytes, or CompressionError when src is\n"
     "corrupt or does not decompress to exactly size bytes."},
    {"compress_many", (PyCFunction)codec_compress_many, METH_O,
     "compress_many(srcs) -> list[bytes]: compress() of each buffer, with the GIL released\n"
     "once for the batch."},
    {"decompress_many", (PyCFunction)(void (*)(void))codec_decompress_many, METH_FASTCALL,
     "decompress_many(srcs, size) -> list[bytes]: decompress() of each object, with the GIL\n"
     "released once for the batch; CompressionError names the first bad object."},
    {NULL},
};

static PyGetSetDef codec_getset[] = {
    {"name", (getter)codec_get_name, NULL, "The kernel's name for the algorithm.", NULL},
    {"level", (getter)codec_get_level, NULL,
     "The level as given (the backend's default when none was given; what the backend\n"
     "makes of it may differ, as lz4hc's 0 acts as 9); None for lzo.", NULL},
    {"winbits", (getter)codec_get_winbits, NULL,
     "deflate's window bits as zlib takes them (negative: a raw stream); None for the other\n"
     "algorithms.", NULL},
    {"streams", (getter)codec_get_streams, NULL,
     "(streams made and not freed, of which idle): a snapshot of the stream pool.", NULL},
    {NULL},
};

static PyTypeObject CodecType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zramd._zram.Codec",
    .tp_basicsize = sizeof(CodecObject),
    .tp_dealloc = (destructor)codec_dealloc,
    .tp_repr = (reprfunc)codec_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Codec(name, level=None, winbits=None, dict=None): a compression algorithm\n"
              "run in C (zcomp), safe to share between threads, with the parameters\n"
              "algorithm_params stores (None, -2147483648 or an empty dict: the default):\n"
              "level, deflate's winbits and a dictionary (bytes-like; zstd, lz4 and lz4hc use\n"
              "it). Every algorithm takes every parameter and ignores what it has no use\n"
              "for, as the kernel's backends and zramd.compress do. ValueError for an\n"
              "unknown or unavailable name, a value beyond 32 bits, a deflate level outside\n"
              "-1..9 or window outside -15..-9 and 9..15, or a zstd dictionary zstd cannot\n"
              "use.",
    .tp_methods = codec_methods,
    .tp_getset = codec_getset,
    .tp_new = codec_new,
};

struct zcomp *zram_codec_get(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &CodecType)) {
        PyErr_Format(PyExc_TypeError, "expected a zramd._zram.Codec, not %.50s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return ((CodecObject *)obj)->comp;
}

/* CODECS: ((name, None or why it is unavailable), ...) in the registry's (kernel's) order */
static PyObject *codecs_table(void)
{
    int n = zcomp_nr_backends();
    PyObject *table = PyTuple_New(n);

    for (int i = 0; table && i < n; i++) {
        const char *why = zcomp_backend_unavailable(i);
        PyObject *row = why ? Py_BuildValue("(ss)", zcomp_backend_name(i), why)
                            : Py_BuildValue("(sO)", zcomp_backend_name(i), Py_None);
        if (!row) {
            Py_CLEAR(table);
            break;
        }
        PyTuple_SET_ITEM(table, i, row);
    }
    return table;
}

int zram_register_codecs(PyObject *module)
{
    PyObject *table;

    if (PyType_Ready(&CodecType) < 0)
        return -1;
    Py_INCREF(&CodecType);
    if (PyModule_AddObject(module, "Codec", (PyObject *)&CodecType) < 0) {
        Py_DECREF(&CodecType);
        return -1;
    }
    table = codecs_table();
    if (!table || PyModule_AddObject(module, "CODECS", table) < 0) {
        Py_XDECREF(table);
        return -1;
    }
    return 0;
}

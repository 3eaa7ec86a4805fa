/*
 * zramd._zram: zramd's data path in C. Each part registers its type here (module.h):
 *   pool_object.c    Pool, the zsmalloc pool (zsmalloc.c)
 *   codec_object.c   Codec, the compression backends (zcomp.c, backend_*.c)
 *   core_object.c    Core, the slot table and the per-request loops (zram.c)
 */
#define PY_SSIZE_T_CLEAN
#include "codec_object.h"
#include "module.h"

#include <errno.h>
#include <malloc.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#define PR_GET_IO_FLUSHER 58
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif

/* Thread states for threads Python did not create (nbdkit's connection threads).
 *
 * nbdkit's Python plugin wraps every callback in PyGILState_Ensure/Release. In a thread that
 * has no Python thread state of its own, Ensure creates one and Release, its count back at 0,
 * destroys it: a new PyThreadState, a 16 KiB frame stack (mmap) and a gettid for every request,
 * and new memory on the request path. pin_thread_state() takes one more count for the calling
 * thread, so the state lives as long as the connection; unpin_thread_state() gives it back
 * from the same thread (a call from any other thread does nothing). */
static _Thread_local int thread_pinned;
static _Thread_local PyGILState_STATE thread_pin_state;

static PyObject *pin_thread_state(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    if (!thread_pinned) {
        thread_pin_state = PyGILState_Ensure();
        thread_pinned = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *unpin_thread_state(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    if (thread_pinned) {
        thread_pinned = 0;
        PyGILState_Release(thread_pin_state); /* the caller's own count keeps the GIL held */
    }
    Py_RETURN_NONE;
}

/* -- swap mode: the serving process's memory (zramd/swapmode.py is the policy) ---------------- */

static PyObject *lock_all(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    /* ONFAULT: what is touched stays (code, heap, stacks); untouched reservations such as the
     * arena beyond a pool's reserve are not committed */
    if (mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *set_io_flusher(PyObject *module, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    if (prctl(PR_SET_IO_FLUSHER, on, 0, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *get_io_flusher(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    int r = prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0);
    if (r < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(r);
}

/* glibc's malloc, for a process that must not ask the kernel for memory once warm: one arena
 * (the brk heap every thread shares, so what one thread frees another reuses), blocks up to
 * 32 MiB (glibc's most) from that heap instead of a mmap each, and nothing ever trimmed. */
#define HEAP_MMAP_THRESHOLD (32 << 20)
#define HEAP_WARM_PIECE (16 << 20)

static PyObject *keep_heap(PyObject *module, PyObject *Py_UNUSED(ignored))
{
#ifdef __GLIBC__
    if (!mallopt(M_ARENA_MAX, 1) || !mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
        || !mallopt(M_TRIM_THRESHOLD, INT32_MAX) || !mallopt(M_TOP_PAD, 1 << 20)) {
        PyErr_SetString(PyExc_OSError, "mallopt refused a setting");
        return NULL;
    }
#endif
    Py_RETURN_NONE;
}

/* Leave at least `nbytes` of the heap free and resident: allocate it (in pieces below the mmap
 * threshold), write every page, free it. With keep_heap() and mlockall it stays. */
static PyObject *warm_heap(PyObject *module, PyObject *arg)
{
    Py_ssize_t nbytes = PyLong_AsSsize_t(arg);
    if (nbytes == -1 && PyErr_Occurred())
        return NULL;
    if (nbytes < 0)
        return PyErr_Format(PyExc_ValueError, "warm_heap(%zd): a negative size", nbytes);
    size_t n = (size_t)nbytes, pieces = (n + HEAP_WARM_PIECE - 1) / HEAP_WARM_PIECE;
    void **held = calloc(pieces ? pieces : 1, sizeof(*held));
    if (!held)
        return PyErr_NoMemory();
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < pieces; i++) {
        size_t len = i + 1 < pieces ? HEAP_WARM_PIECE : n - i * HEAP_WARM_PIECE;
        if (!(held[i] = malloc(len))) {
            ok = 0;
            break;
        }
        memset(held[i], 0, len);
    }
    for (size_t i = 0; i < pieces; i++)
        free(held[i]);
    Py_END_ALLOW_THREADS
    free(held);
    if (!ok)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"pin_thread_state", pin_thread_state, METH_NOARGS,
     "Keep the calling thread's Python thread state until unpin_thread_state() (nbdkit's "
     "threads: no thread state is made and destroyed per request)."},
    {"unpin_thread_state", unpin_thread_state, METH_NOARGS,
     "Give back what pin_thread_state() took, from the same thread."},
    {"lock_all", lock_all, METH_NOARGS,
     "mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT); OSError."},
    {"set_io_flusher", set_io_flusher, METH_O,
     "prctl(PR_SET_IO_FLUSHER, on) for the calling thread (threads it creates inherit it); "
     "OSError (EPERM without CAP_SYS_RESOURCE)."},
    {"get_io_flusher", get_io_flusher, METH_NOARGS, "The calling thread's PR_GET_IO_FLUSHER."},
    {"keep_heap", keep_heap, METH_NOARGS,
     "glibc: one arena, blocks up to 32 MiB from the heap, nothing trimmed (swap mode)."},
    {"warm_heap", warm_heap, METH_O,
     "warm_heap(nbytes): leave at least nbytes of the heap free and resident."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef zram_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zramd._zram",
    .m_doc = "zramd's data path in C: pool, codecs and per-request loops, run without the GIL.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__zram(void)
{
    PyObject *module = PyModule_Create(&zram_module);
    if (!module)
        return NULL;
    /* bumped with every change of the Python interface (zramd/native.py checks it) */
    if (PyModule_AddIntConstant(module, "ABI_VERSION", 3) < 0 || zram_register_pool(module) < 0
        || zram_register_codecs(module) < 0 || zram_register_core(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

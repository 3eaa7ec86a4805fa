/*
 * zramd._zram: zramd's data path in C. Each part registers its type here (module.h):
 *   pool_object.c    Pool, the zsmalloc pool (zsmalloc.c)
 *   codec_object.c   Codec, the compression backends (zcomp.c, backend_*.c)
 *   core_object.c    Core, the slot table and the per-request loops (zram.c)
 */
#define PY_SSIZE_T_CLEAN
#include "codec_object.h"
#include "module.h"

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

static PyMethodDef module_methods[] = {
    {"pin_thread_state", pin_thread_state, METH_NOARGS,
     "Keep the calling thread's Python thread state until unpin_thread_state() (nbdkit's "
     "threads: no thread state is made and destroyed per request)."},
    {"unpin_thread_state", unpin_thread_state, METH_NOARGS,
     "Give back what pin_thread_state() took, from the same thread."},
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
    if (PyModule_AddIntConstant(module, "ABI_VERSION", 2) < 0 || zram_register_pool(module) < 0
        || zram_register_codecs(module) < 0 || zram_register_core(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

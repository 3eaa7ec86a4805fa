/*
 * zramd._zram: zramd's data path in C. Each part registers its type here (module.h):
 *   pool_object.c    Pool, the zsmalloc pool (zsmalloc.c)
 *   codec_object.c   Codec, the compression backends (zcomp.c, backend_*.c)
 *   core_object.c    Core, the slot table and the per-request loops (zram.c)
 */
#define PY_SSIZE_T_CLEAN
#include "codec_object.h"
#include "module.h"

static struct PyModuleDef zram_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zramd._zram",
    .m_doc = "zramd's data path in C: pool, codecs and per-request loops, run without the GIL.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__zram(void)
{
    PyObject *module = PyModule_Create(&zram_module);
    if (!module)
        return NULL;
    /* bumped with every change of the Python interface (zramd/native.py checks it) */
    if (PyModule_AddIntConstant(module, "ABI_VERSION", 1) < 0 || zram_register_pool(module) < 0
        || zram_register_codecs(module) < 0 || zram_register_core(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

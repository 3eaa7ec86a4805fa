/*
 * zramd._zram: zramd's data path in C, one registration per part (see zram.h).
 */
#define PY_SSIZE_T_CLEAN
#include "module.h"

static struct PyModuleDef zram_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zramd._zram",
    .m_doc = "zramd's data path in C: the zsmalloc pool, run with the GIL released.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__zram(void)
{
    PyObject *module = PyModule_Create(&zram_module);
    if (!module)
        return NULL;
    if (zram_register_pool(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

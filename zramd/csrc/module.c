/*
 * zramd._zram: zramd's C data path. Each part registers itself here:
 *   codec_object.c   Codec, the compression backends (zcomp.c, backend_*.c)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "codec_object.h"

static struct PyModuleDef zram_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zramd._zram",
    .m_doc = "zramd's C data path: compression codecs (Codec).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__zram(void)
{
    PyObject *m = PyModule_Create(&zram_module);

    if (!m)
        return NULL;
    if (zram_register_codecs(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

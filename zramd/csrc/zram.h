/*
 * zram.h: the parts of the zramd._zram extension module, each registering its types.
 */
#ifndef ZRAMD_ZRAM_H
#define ZRAMD_ZRAM_H

#include <Python.h>

/* pool_object.c: zramd._zram.Pool, the C zsmalloc pool. 0, or -1 with an exception set. */
int zram_register_pool(PyObject *module);

#endif

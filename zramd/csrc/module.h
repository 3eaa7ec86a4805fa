/* module.h - what the files of zramd._zram share: each type's registration, and the accessors
 * one file's C code uses to reach another's objects (no Python-level names involved). */
#ifndef ZRAMD_MODULE_H
#define ZRAMD_MODULE_H

#include <Python.h>

struct zs_pool;
struct zcomp;

int zram_register_pool(PyObject *module);   /* pool_object.c: zramd._zram.Pool */
int zram_register_codecs(PyObject *module); /* codec_object.c: zramd._zram.Codec */
int zram_register_core(PyObject *module);   /* core_object.c: zramd._zram.Core */

/* The pool behind a zramd._zram.Pool, or NULL with TypeError (ValueError if closed). The
 * caller keeps a reference to the object and pins the pool: Pool.close() refuses while any
 * pin is held. zram_pool_put drops the pin. Both need the GIL. */
struct zs_pool *zram_pool_get(PyObject *obj);
void zram_pool_put(PyObject *obj);

#endif

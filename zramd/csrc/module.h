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

/* The pool / codec behind a Python object, or NULL with TypeError (or ValueError if closed). */
struct zs_pool *zram_pool_get(PyObject *obj);
struct zcomp *zram_codec_get(PyObject *obj);

#endif

/*
 * zramd._zram.Codec: a struct zcomp as a Python object (codec_object.c).
 *
 * For the C device code: zram_codec_get gives the zcomp a Codec wraps. The zcomp belongs to
 * the Codec and lives as long as it does, so a caller keeps a reference to the Codec for as
 * long as it uses the zcomp (its streams included); with that reference held, the zcomp may
 * be used from any thread without the GIL.
 */
#ifndef ZRAMD_CODEC_OBJECT_H
#define ZRAMD_CODEC_OBJECT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "zcomp.h"

/* Add Codec and CODECS to the module: 0, or -1 with an exception set. */
int zram_register_codecs(PyObject *module);

/* The zcomp of a zramd._zram.Codec (borrowed, see above); NULL with TypeError set when obj
 * is not a Codec. Needs the GIL. */
struct zcomp *zram_codec_get(PyObject *obj);

#endif /* ZRAMD_CODEC_OBJECT_H */

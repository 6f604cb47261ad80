"""Arrow producers (ctypes) whose release callbacks are counted, and that can lie.

``CountedArray(pa_array)`` exports a real pyarrow array through the C Data Interface into
structs we own, then wraps every release callback (the top array's and, optionally, lies
about its buffer and child counts, length or offset) so tests can check that each release
runs exactly once, whether quantbridge consumed the capsule or the capsule was dropped.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_char_p, c_int64, c_void_p

import pyarrow as pa


class ArrowSchema(ctypes.Structure):
    pass


class ArrowArray(ctypes.Structure):
    pass


SCHEMA_RELEASE = ctypes.CFUNCTYPE(None, POINTER(ArrowSchema))
ARRAY_RELEASE = ctypes.CFUNCTYPE(None, POINTER(ArrowArray))

ArrowSchema._fields_ = [
    ("format", c_char_p), ("name", c_char_p), ("metadata", c_char_p), ("flags", c_int64),
    ("n_children", c_int64), ("children", POINTER(POINTER(ArrowSchema))),
    ("dictionary", POINTER(ArrowSchema)), ("release", c_void_p), ("private_data", c_void_p),
]
ArrowArray._fields_ = [
    ("length", c_int64), ("null_count", c_int64), ("offset", c_int64), ("n_buffers", c_int64),
    ("n_children", c_int64), ("buffers", POINTER(c_void_p)), ("children", POINTER(POINTER(ArrowArray))),
    ("dictionary", POINTER(ArrowArray)), ("release", c_void_p), ("private_data", c_void_p),
]

_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [c_void_p, c_char_p, c_void_p]
# A dying capsule must not be turned into a Python object again: raw pointers only.
_get_pointer = ctypes.PyDLL(None).PyCapsule_GetPointer
_get_pointer.restype = c_void_p
_get_pointer.argtypes = [c_void_p, c_void_p]
_get_name = ctypes.PyDLL(None).PyCapsule_GetName
_get_name.restype = c_void_p
_get_name.argtypes = [c_void_p]
CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, c_void_p)

NAMES = {n: ctypes.create_string_buffer(n.encode()) for n in ("arrow_schema", "arrow_array", "wrong_name")}


def _release_if_live(struct_type):
    def destructor(capsule):
        ptr = _get_pointer(capsule, _get_name(capsule))
        s = ctypes.cast(ptr, POINTER(struct_type)).contents
        if s.release:
            release = (SCHEMA_RELEASE if struct_type is ArrowSchema else ARRAY_RELEASE)(s.release)
            release(ctypes.cast(ptr, POINTER(struct_type)))
    return CAPSULE_DESTRUCTOR(destructor)


# Capsule destructors must outlive every capsule.
_SCHEMA_DESTRUCTOR = _release_if_live(ArrowSchema)
_ARRAY_DESTRUCTOR = _release_if_live(ArrowArray)


class CountedArray:
    """Exports ``array`` on every ``__arrow_c_array__`` call; ``released`` counts how often
    the producer's array release callback ran. Keyword overrides make it lie."""

    def __init__(self, array: pa.Array, *, n_buffers=None, n_children=None, length=None, offset=None,
                 null_count=None, capsule_name="arrow_array", null_buffer_index=None, raises=None):
        self.array = array
        self.overrides = dict(n_buffers=n_buffers, n_children=n_children, length=length, offset=offset,
                              null_count=null_count)
        self.capsule_name = capsule_name
        self.null_buffer_index = null_buffer_index
        self.raises = raises
        self._released = [0]
        self._keep = []

    @property
    def released(self) -> int:
        return self._released[0]

    def __arrow_c_array__(self, requested_schema=None):
        if self.raises is not None:
            raise self.raises
        schema = ArrowSchema()
        array = ArrowArray()
        self.array._export_to_c(ctypes.addressof(array), ctypes.addressof(schema))
        original = ARRAY_RELEASE(array.release)
        released = self._released

        def counting_release(ptr):
            released[0] += 1
            # The real release must see the original numbers it exported.
            s = ptr.contents
            for k, v in saved.items():
                setattr(s, k, v)
            s.release = ctypes.cast(original, c_void_p)
            original(ptr)

        saved = {k: getattr(array, k) for k in self.overrides}
        saved["buffers"] = array.buffers
        for k, v in self.overrides.items():
            if v is not None:
                setattr(array, k, v)
        if self.null_buffer_index is not None:
            copy = (c_void_p * max(array.n_buffers, 1))(*[array.buffers[i] for i in range(array.n_buffers)])
            copy[self.null_buffer_index] = None
            array.buffers = ctypes.cast(copy, POINTER(c_void_p))
            self._keep.append(copy)
        wrapper = ARRAY_RELEASE(counting_release)
        array.release = ctypes.cast(wrapper, c_void_p)
        self._keep.extend([schema, array, wrapper, original])
        return (
            _new_capsule(ctypes.addressof(schema), NAMES["arrow_schema"], ctypes.cast(_SCHEMA_DESTRUCTOR, c_void_p)),
            _new_capsule(ctypes.addressof(array), NAMES[self.capsule_name], ctypes.cast(_ARRAY_DESTRUCTOR, c_void_p)),
        )

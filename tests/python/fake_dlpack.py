"""Hand-built DLPack producers (ctypes) that can lie about anything, and count deleter calls."""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p

import numpy as np


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", c_int32), ("device_id", c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", c_uint8), ("bits", c_uint8), ("lanes", c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", c_void_p),
        ("device", DLDevice),
        ("ndim", c_int32),
        ("dtype", DLDataType),
        ("shape", POINTER(c_int64)),
        ("strides", POINTER(c_int64)),
        ("byte_offset", c_uint64),
    ]


DELETER = ctypes.CFUNCTYPE(None, c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", c_void_p), ("deleter", DELETER)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", c_uint32), ("minor", c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", c_void_p),
        ("deleter", DELETER),
        ("flags", c_uint64),
        ("dl_tensor", DLTensor),
    ]


_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [c_void_p, ctypes.c_char_p, c_void_p]

# Capsule names must outlive the capsules: keep them at module level.
NAMES = {n: ctypes.create_string_buffer(n.encode()) for n in
         ("dltensor", "dltensor_versioned", "used_dltensor", "used_dltensor_versioned", "not_a_tensor")}


class FakeProducer:
    """A producer whose every DLPack field can be overridden.

    ``deleted`` counts deleter calls. The data is a float32 numpy array it keeps alive.
    """

    def __init__(self, array=None, *, versioned=True, capsule_name=None, major=1, device=1,
                 dtype=(2, 32, 1), shape=None, strides=None, ndim=None, data=None, byte_offset=0,
                 null_deleter=False, dlpack_raises=None, dlpack_returns=None, legacy_only=False):
        self.array = np.ascontiguousarray(array if array is not None else np.arange(12, dtype=np.float32).reshape(3, 4))
        self.versioned = versioned
        self.capsule_name = capsule_name or ("dltensor_versioned" if versioned else "dltensor")
        self.major = major
        self.device = device
        self.dtype = dtype
        self.shape = list(self.array.shape) if shape is None else shape
        self.strides = [s // self.array.itemsize for s in self.array.strides] if strides is None else strides
        self.ndim = len(self.shape) if ndim is None else ndim
        self.data = self.array.ctypes.data if data is None else data
        self.byte_offset = byte_offset
        self.null_deleter = null_deleter
        self.dlpack_raises = dlpack_raises
        self.dlpack_returns = dlpack_returns
        self.legacy_only = legacy_only
        self._deletes = [0]  # a list, so deleter closures need no reference to self
        self.calls = []
        self._keep = []

    @property
    def deleted(self) -> int:
        return self._deletes[0]

    def __dlpack_device__(self):
        return (self.device, 0)

    def __dlpack__(self, *args, **kwargs):
        if self.legacy_only and kwargs:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        self.calls.append(kwargs)
        if self.dlpack_raises is not None:
            raise self.dlpack_raises
        if self.dlpack_returns is not None:
            return self.dlpack_returns
        shape = (c_int64 * max(len(self.shape), 1))(*self.shape)
        strides = None if self.strides == "null" else (c_int64 * max(len(self.strides), 1))(*self.strides)

        deletes = self._deletes

        def on_delete(_ptr):
            deletes[0] += 1

        deleter = DELETER(0) if self.null_deleter else DELETER(on_delete)
        tensor = DLTensor(
            data=self.data, device=DLDevice(self.device, 0), ndim=self.ndim,
            dtype=DLDataType(*self.dtype), shape=ctypes.cast(shape, POINTER(c_int64)),
            strides=None if strides is None else ctypes.cast(strides, POINTER(c_int64)),
            byte_offset=self.byte_offset,
        )
        if self.versioned:
            managed = DLManagedTensorVersioned(version=DLPackVersion(self.major, 0), manager_ctx=None,
                                               deleter=deleter, flags=0, dl_tensor=tensor)
        else:
            managed = DLManagedTensor(dl_tensor=tensor, manager_ctx=None, deleter=deleter)
        self._keep.append((shape, strides, deleter, managed))
        return _new_capsule(ctypes.addressof(managed), NAMES[self.capsule_name], None)

#!/usr/bin/env python3
"""Writes tiny PyTorch checkpoints in both container formats to tests/data/.

No torch needed: stand-in `torch.FloatStorage`/`torch._utils._rebuild_tensor_v2`
globals make Python's pickle emit the same opcodes torch.save does.

- tiny_zip.pth:    the current zip format (archive/data.pkl + archive/data/<key>)
- tiny_legacy.pth: the legacy format (magic, protocol, sys info, state dict,
                   storage keys, then each storage as u64 numel + raw bytes)

Tensors (the Rust test `checkpoint_fixtures_*` pins these values):
- "weight": float32 2x3 = [[0,1,2],[3,4,5]], contiguous
- "weight_t": float32 3x2, a transposed view of the same storage (stride (1,3))
- "tail": float32 [4], storage "1" at offset 2 -> [12,13,14,15]
- "steps": int64 scalar 7
Run: python3 scripts/make_checkpoint_fixtures.py tests/data
"""
import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils


def _storage_class(name):
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)
    return cls


FloatStorage, LongStorage = _storage_class("FloatStorage"), _storage_class("LongStorage")


def _rebuild_tensor_v2(*args):
    raise RuntimeError("only pickled, never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class Storage:
    def __init__(self, key, cls, fmt, values):
        self.key, self.cls, self.fmt, self.values = key, cls, fmt, values

    def raw(self):
        return struct.pack("<%d%s" % (len(self.values), self.fmt), *self.values)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (_rebuild_tensor_v2, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", len(obj.values))
        return None


def state_and_storages():
    s0 = Storage("0", FloatStorage, "f", [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    s1 = Storage("1", FloatStorage, "f", [10.0, 11.0, 12.0, 13.0, 14.0, 15.0])
    s2 = Storage("2", LongStorage, "q", [7])
    state = collections.OrderedDict()
    state["weight"] = Tensor(s0, 0, (2, 3), (3, 1))
    state["weight_t"] = Tensor(s0, 0, (3, 2), (1, 3))
    state["tail"] = Tensor(s1, 2, (4,), (1,))
    state["steps"] = Tensor(s2, 0, (), ())
    return state, [s0, s1, s2]


def dumps(obj, protocol=2):
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def main(out_dir):
    state, storages = state_and_storages()
    with zipfile.ZipFile(os.path.join(out_dir, "tiny_zip.pth"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", dumps(state))
        for s in storages:
            z.writestr("archive/data/" + s.key, s.raw())
    with open(os.path.join(out_dir, "tiny_legacy.pth"), "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
        f.write(dumps(state))
        f.write(pickle.dumps([s.key for s in storages], protocol=2))
        for s in storages:
            f.write(struct.pack("<q", len(s.values)))
            f.write(s.raw())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data")

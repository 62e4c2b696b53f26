#!/usr/bin/env python
"""Fuzz pyconv1x1's loader and runtime with mutated models and compiled plans.

Every case takes a valid model (the bundled ones and a few built here with onnx.helper),
mutates it and loads it. Families:
  bytes, dims, attrs, graph, external  .onnx: flipped / inserted / truncated bytes;
        changed dims, dtypes and raw data of initializers and graph inputs; changed
        attributes, ops, inputs and opsets; changed external-data fields and data files;
        loaded from a path, bytes or a ModelProto
  pc1   the model compiled to a .pc1 plan, then its header JSON (any field, the array
        table's offsets / lengths / shapes / dtypes, layers, steps, the raw text, deep
        nesting), its prefix fields, its blob bytes (block tables, weights) mutated, or
        the file truncated / extended; the checksum recomputed unless the mutation is a
        stale one, so that the mutation reaches the structural checks; loaded from a path
        (memory-mapped), bytes, a bytearray or a memoryview
  pc1live  a valid plan loaded from a path or a bytearray, then the file rewritten in
        place, truncated, extended or replaced (or the bytearray edited) under the live
        session, which must neither crash nor change its results
A case passes when it ends in a pyconv1x1.Error subclass, or in a run whose outputs are
float32 arrays that a second run of the same feed reproduces bitwise (NaN and inf are
allowed, values that change are not); any other exception, a crash or a hang (no progress
in --case-timeout seconds) is a finding.

The cases run in a worker subprocess so that a segfault or a hang is reported with the
case that caused it (and the fuzzing goes on from the next case):

    python tools/fuzz.py --iterations 5000 --seed 7            # fuzz
    python tools/fuzz.py --seed 7 --replay 1234                # rerun one case here
    python tools/fuzz.py --families pc1 --iterations 5000      # plans only

--sanitize rebuilds every kernel variant with ASan + UBSan (CFLAGS="-fsanitize=address,
undefined -fno-omit-frame-pointer", LDFLAGS="-fsanitize=address,undefined") in a scratch
copy of the package, fails loudly if that build lacks a variant this CPU runs, the thread
pool or the instrumentation, and then fuzzes --iterations cases under each variant
(PYCONV1X1_ISA) with libasan / libubsan preloaded and PYTHONMALLOC=malloc (ASAN_OPTIONS
detect_leaks=0: Python's own allocations are not ours to report; an ASan or UBSan report
kills the worker and is a finding blamed on its case). The build takes ~2 minutes on 2 cores; --sanitize-dir keeps
it for the next run:

    python tools/fuzz.py --sanitize --sanitize-dir /tmp/pc1-asan --iterations 2000

Exit status: 0 when every case passed, 1 otherwise (or when the sanitizer build is
incomplete).
"""
import argparse
import collections
import copy
import json
import math
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import struct
import threading
import time
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODELS = os.path.join(REPO, "models")
FAMILIES = ("bytes", "dims", "attrs", "graph", "external", "pc1", "pc1live")
MAX_FEED_ELEMENTS = 1 << 22
MEMORY_LIMIT = 3 << 30       # address-space cap of the worker: huge allocations fail fast
RERUN_MAX_BYTES = 64 << 20  # outputs up to this size are computed twice and compared
STDERR_TAIL = 8000           # of a dead worker's stderr: a sanitizer report's stack fits

ODD_INTS = [0, 1, 2, 3, 5, 7, 64, 4096, 65536, 2 ** 20, -1, -2, -(2 ** 31), 2 ** 31 - 1,
            2 ** 31, 2 ** 32 + 1,
            2 ** 40, 2 ** 62, 2 ** 63 - 1, -(2 ** 63)]
ODD_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 6.0, 1e-45, 3.4e38, -3.4e38, 1e300, math.inf,
              -math.inf, math.nan]
ODD_STRINGS = ["", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "SAME", "same_upper",
               "\x00", "x" * 300, "\u00e9\u4e2d"]
ODD_LOCATIONS = ["", ".", "..", "../x.data", "/etc/passwd", "/dev/zero", "sub/../../x",
                 "C:\\x.data", "\\\\server\\share", "a\x00b", "missing.data", "sub",
                 "model.onnx", "./model.onnx.data", "model.onnx.data/", "x" * 4000]
OPS = ["Conv", "Relu", "Clip", "LeakyRelu", "BatchNormalization", "Add", "Mul", "Identity",
       "Dropout", "Sigmoid", "Constant", "MaxPool", "Reshape", "Loop", "If", ""]
ATTR_NAMES = ["strides", "pads", "dilations", "kernel_shape", "group", "auto_pad", "alpha",
              "min", "max", "epsilon", "momentum", "spatial", "training_mode", "ratio",
              "is_test", "value", "value_float", "consumed_inputs", "bogus"]


# --------------------------------------------------------------------------------------
# seed models
# --------------------------------------------------------------------------------------
def _built_models():
    """Small models that use every supported op and attribute form (name -> ModelProto)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def t(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def model(nodes, inputs, outputs, inits, opset=17, ir=8):
        g = helper.make_graph(nodes, "fuzz", inputs, outputs, initializer=inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                                 ir_version=ir)

    f = TensorProto.FLOAT
    out = {}
    var = numpy_helper.from_array(np.abs(rng.standard_normal(8)).astype(np.float32) + .5,
                                  "bn_v")
    out["rich"] = model(
        [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", strides=[2, 2],
                          pads=[1, 0, 0, 1], kernel_shape=[1, 1]),
         helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"],
                          ["n1"], name="bn", epsilon=1e-3),
         helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
         helper.make_node("Conv", ["r1", "W2"], ["c2"], name="c2", group=2),
         helper.make_node("Add", ["c2", "r1"], ["a2"], name="res"),
         helper.make_node("Clip", ["a2", "lo", "hi"], ["k2"], name="clip"),
         helper.make_node("Mul", ["k2", "M"], ["m2"], name="mul"),
         helper.make_node("Add", ["m2", "A"], ["d2"], name="addc"),
         helper.make_node("LeakyRelu", ["d2"], ["l2"], name="leaky", alpha=0.1),
         helper.make_node("Dropout", ["l2"], ["o2"], name="drop"),
         helper.make_node("Conv", ["o2", "W3"], ["y"], name="c3", auto_pad="SAME_UPPER",
                          strides=[2, 1]),
         helper.make_node("Identity", ["r1"], ["z"], name="id")],
        [helper.make_tensor_value_info("x", f, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("y", f, None),
         helper.make_tensor_value_info("z", f, None)],
        [t("W1", 8, 4, 1, 1), t("B1", 8), t("bn_s", 8), t("bn_b", 8), t("bn_m", 8), var,
         t("W2", 8, 4, 1, 1), numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
         numpy_helper.from_array(np.array(2.0, np.float32), "hi"), t("M", 8, 1, 1),
         t("A", 1, 8, 1, 1), t("W3", 3, 8, 1, 1)])
    out["old_opset"] = model(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="c"),
         helper.make_node("Clip", ["c"], ["k"], name="clip", min=0.0, max=6.0),
         helper.make_node("Dropout", ["k"], ["y"], name="drop", ratio=0.2)],
        [helper.make_tensor_value_info("x", f, [1, 3, 5, 5]),
         helper.make_tensor_value_info("W", f, [2, 3, 1, 1]),
         helper.make_tensor_value_info("B", f, [2])],
        [helper.make_tensor_value_info("y", f, [1, 2, 5, 5])],
        [t("W", 2, 3, 1, 1), t("B", 2)], opset=7, ir=3)
    out["conv1d"] = model(
        [helper.make_node("Constant", [], ["hi"], name="k",
                          value=numpy_helper.from_array(np.array(0.5, np.float32))),
         helper.make_node("Conv", ["x", "W"], ["c"], name="c", strides=[2], pads=[1, 1]),
         helper.make_node("Clip", ["c", "", "hi"], ["y"], name="clip")],
        [helper.make_tensor_value_info("x", f, [2, 6, None])],
        [helper.make_tensor_value_info("y", f, None)],
        [t("W", 4, 3, 1)], opset=13)
    out["two_inputs"] = model(
        [helper.make_node("Add", ["a", "b"], ["s"], name="add"),
         helper.make_node("Conv", ["s", "W"], ["y"], name="c")],
        [helper.make_tensor_value_info("a", f, ["N", 5, 3, 3]),
         helper.make_tensor_value_info("b", f, ["N", 5, 3, 3])],
        [helper.make_tensor_value_info("y", f, ["N", 2, 3, 3])],
        [t("W", 2, 5, 1, 1)])
    return out


class Seeds:
    """The seed models, serialized once: name -> (bytes, data file bytes or None)."""

    def __init__(self):
        self.items = {}
        for f in sorted(os.listdir(MODELS)):
            if f.endswith(".onnx"):
                with open(os.path.join(MODELS, f), "rb") as fh:
                    data = fh.read()
                ext = os.path.join(MODELS, f + ".data")
                ext_bytes = None
                if os.path.exists(ext):
                    with open(ext, "rb") as fh:
                        ext_bytes = fh.read()
                self.items[f[:-5]] = (data, ext_bytes, f + ".data")
        for name, m in _built_models().items():
            self.items[name] = (m.SerializeToString(), None, None)
        self.names = sorted(self.items)
        self._plans = None

    @property
    def plans(self):
        """name -> compiled .pc1 bytes of every seed that compiles, built on first use
        (for the kernel variant this process runs: its block height is in the plan)."""
        if self._plans is None:
            from pyconv1x1 import Error, planfile
            self._plans = {}
            with tempfile.TemporaryDirectory(prefix="pyconv1x1-fuzz-seed-") as tmp:
                for name in self.names:
                    data, ext_bytes, _ = self.items[name]
                    src = os.path.join(MODELS, name + ".onnx") if ext_bytes else data
                    out = os.path.join(tmp, name + ".pc1")
                    try:
                        planfile.compile_model(src, out)
                    except Error:
                        continue
                    with open(out, "rb") as f:
                        self._plans[name] = f.read()
        return self._plans


# --------------------------------------------------------------------------------------
# mutations: each returns a description; proto mutations edit the ModelProto in place
# --------------------------------------------------------------------------------------
def mutate_bytes(rng, data):
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "set", "insert", "delete", "truncate", "dup",
                       "varint"])
    if not data:
        return bytes(data), "empty"
    if kind == "flip":
        n = rng.randint(1, 16)
        for _ in range(n):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "set":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.choice([0, 0x7f, 0x80, 0xff, rng.randrange(256)])
    elif kind == "insert":
        pos = rng.randrange(len(data) + 1)
        data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
    elif kind == "delete":
        pos = rng.randrange(len(data))
        del data[pos:pos + rng.randint(1, 64)]
    elif kind == "truncate":
        del data[rng.randrange(len(data)):]
    elif kind == "dup":
        a = rng.randrange(len(data))
        b = min(len(data), a + rng.randint(1, 200))
        pos = rng.randrange(len(data) + 1)
        data[pos:pos] = data[a:b]
    else:  # an over-long varint somewhere
        pos = rng.randrange(len(data))
        data[pos:pos + 1] = b"\xff" * rng.randint(2, 11) + b"\x01"
    return bytes(data), kind


def _odd_int(rng):
    return rng.choice(ODD_INTS) if rng.random() < 0.8 else rng.randint(-10, 100)


def mutate_dims(rng, proto):
    g = proto.graph
    choices = []
    if len(g.initializer):
        choices += ["init_dim", "init_dim", "init_rank", "init_raw", "init_dtype",
                    "init_typed", "init_range"]
    if len(g.input):
        choices += ["input_dim", "input_rank", "input_dtype"]
    kind = rng.choice(choices or ["input_dim"])
    if kind.startswith("init"):
        t = rng.choice(list(g.initializer))
        if kind == "init_dim":
            if len(t.dims):
                t.dims[rng.randrange(len(t.dims))] = _odd_int(rng)
            else:
                t.dims.append(_odd_int(rng))
        elif kind == "init_rank":
            if len(t.dims) and rng.random() < 0.5:
                del t.dims[rng.randrange(len(t.dims))]
            else:
                t.dims.insert(rng.randrange(len(t.dims) + 1), rng.choice([1, 2, 0, 2 ** 20]))
        elif kind == "init_raw":
            if t.raw_data:
                n = len(t.raw_data)
                t.raw_data = t.raw_data[:rng.randrange(n)] if rng.random() < 0.5 \
                    else t.raw_data + bytes(rng.randint(1, 9))
            else:
                t.raw_data = bytes(rng.randint(0, 64))
        elif kind == "init_dtype":
            t.data_type = rng.choice(list(range(0, 17)) + [22, 99, -1, 2 ** 30])
        elif kind == "init_range":
            return _typed_out_of_range(rng, t)
        else:
            t.float_data.extend([rng.choice(ODD_FLOATS)] * rng.randint(1, 3))
        return f"{kind} {t.name!r}"
    v = rng.choice(list(g.input))
    tt = v.type.tensor_type
    if kind == "input_dim" and len(tt.shape.dim):
        d = tt.shape.dim[rng.randrange(len(tt.shape.dim))]
        r = rng.random()
        if r < 0.6:
            d.dim_value = _odd_int(rng)
        elif r < 0.8:
            d.dim_param = rng.choice(["N", "H", "", "\x00", "x" * 100])
        else:
            d.Clear()
    elif kind == "input_rank":
        if len(tt.shape.dim) and rng.random() < 0.5:
            del tt.shape.dim[rng.randrange(len(tt.shape.dim))]
        elif rng.random() < 0.3:
            tt.ClearField("shape")
        else:
            tt.shape.dim.add().dim_value = rng.choice([1, 2, 0])
    else:
        tt.elem_type = rng.choice(list(range(0, 17)) + [99])
    return f"{kind} {v.name!r}"


# element type -> (typed field that stores it, values outside or at the edge of its range)
_TYPED_EDGES = {
    2: ("int32_data", [256, -1, 300, 2 ** 31 - 1]),                 # UINT8
    3: ("int32_data", [300, -300, 128, -129]),                       # INT8
    4: ("int32_data", [65536, -1, 70000]),                           # UINT16
    5: ("int32_data", [32768, -32769, 70000]),                       # INT16
    6: ("int32_data", [2 ** 31 - 1, -(2 ** 31)]),                    # INT32
    7: ("int64_data", [2 ** 63 - 1, -(2 ** 63)]),                    # INT64
    9: ("int32_data", [2, -1, 255]),                                 # BOOL
    10: ("int32_data", [70000, 65535, -1, 0x7c00, 0x7e00]),          # FLOAT16 bits
    11: ("double_data", [1e300, -1e300, math.inf, math.nan]),        # DOUBLE
    12: ("uint64_data", [2 ** 32, 2 ** 63, 2 ** 64 - 1]),            # UINT32
    13: ("uint64_data", [2 ** 63, 2 ** 64 - 1]),                     # UINT64
    16: ("int32_data", [70000, 65536, -1]),                          # BFLOAT16 bits
    1: ("float_data", [3.4e38, -3.4e38, math.inf, math.nan]),        # FLOAT
}


def _typed_out_of_range(rng, t):
    """An initializer rewritten as typed (not raw) data of another element type whose
    values do not fit that type, with dims that match the count, or dims whose product
    is 0 but whose size overflows."""
    elem = rng.choice(sorted(_TYPED_EDGES))
    field, edges = _TYPED_EDGES[elem]
    values = [rng.choice(edges) for _ in range(rng.randint(1, 4))]
    for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                 "uint64_data"):
        t.ClearField(name)
    t.data_type = elem
    getattr(t, field).extend(values)
    del t.dims[:]
    shape = rng.choice([[len(values)], [1, len(values)], [0, 2 ** 62], [2 ** 31, 0],
                        [len(values), 1, 1, 1]])
    t.dims.extend(shape)
    return f"init_range {t.name!r} type {elem} {field}={values} dims={shape}"


def _set_attr(rng, node):
    from onnx import helper
    name = rng.choice(ATTR_NAMES)
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    shape = rng.random()
    if shape < 0.35:
        value = [_odd_int(rng) for _ in range(rng.choice([0, 1, 2, 3, 4, 5]))]
    elif shape < 0.55:
        value = _odd_int(rng)
    elif shape < 0.75:
        value = rng.choice(ODD_FLOATS)
    elif shape < 0.9:
        value = rng.choice(ODD_STRINGS)
    else:
        value = [rng.choice(ODD_FLOATS) for _ in range(rng.randint(1, 3))]
    try:
        node.attribute.append(helper.make_attribute(name, value))
    except Exception:
        return f"attr {name} (not settable)"
    return f"attr {node.name!r}.{name}={value!r}"[:200]


def _set_conv_attr(rng, node):
    """A well-formed but extreme Conv attribute: right length, odd values."""
    from onnx import helper
    spatial = 2
    for a in node.attribute:
        if a.name in ("strides", "dilations", "kernel_shape") and len(a.ints):
            spatial = len(a.ints)
    name = rng.choice(["strides", "pads", "dilations", "kernel_shape", "group", "auto_pad"])
    big = [0, 1, 2, 3, 7, 4096, 65536, 2 ** 20, 2 ** 20 + 1, 2 ** 31]
    if name == "pads":
        value = [rng.choice(big) if rng.random() < 0.4 else rng.randint(0, 2)
                 for _ in range(2 * spatial)]
    elif name == "group":
        value = rng.choice([0, 2, 3, 5, 16, 64, 2 ** 31, -1])
    elif name == "auto_pad":
        value = rng.choice(ODD_STRINGS)
    else:
        value = [rng.choice(big) if rng.random() < 0.5 else 1 for _ in range(spatial)]
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))
    return f"conv attr {node.name!r}.{name}={value!r}"


def mutate_attrs(rng, proto):
    nodes = list(proto.graph.node)
    if not nodes:
        return "no nodes"
    node = rng.choice(nodes)
    kind = rng.choice(["set", "set", "set", "conv", "conv", "drop", "dup", "type"])
    if kind == "conv":
        convs = [n for n in nodes if n.op_type == "Conv"]
        if convs:
            return _set_conv_attr(rng, rng.choice(convs))
        kind = "set"
    if kind == "set":
        return _set_attr(rng, node)
    if kind == "drop" and len(node.attribute):
        del node.attribute[rng.randrange(len(node.attribute))]
        return f"drop attr of {node.name!r}"
    if kind == "dup" and len(node.attribute):
        node.attribute.append(node.attribute[rng.randrange(len(node.attribute))])
        return f"duplicate attr of {node.name!r}"
    if len(node.attribute):
        a = node.attribute[rng.randrange(len(node.attribute))]
        a.type = rng.randrange(15)      # python protobuf accepts only known enum values
        return f"attr type of {node.name!r}.{a.name}"
    return _set_attr(rng, node)


def mutate_graph(rng, proto):
    g = proto.graph
    nodes = g.node
    kind = rng.choice(["op", "domain", "input", "output", "drop_node", "dup_node", "swap",
                       "drop_init", "dup_init", "opset", "ir", "drop_output", "name",
                       "add_input_slot"])
    if not len(nodes) and kind in ("op", "domain", "input", "output", "drop_node",
                                   "dup_node", "swap", "name", "add_input_slot"):
        kind = "opset"
    if kind == "op":
        n = rng.choice(list(nodes))
        n.op_type = rng.choice(OPS)
    elif kind == "domain":
        rng.choice(list(nodes)).domain = rng.choice(["ai.onnx", "com.microsoft", "x"])
    elif kind == "input":
        n = rng.choice(list(nodes))
        if len(n.input):
            n.input[rng.randrange(len(n.input))] = rng.choice(
                ["", "ghost", n.output[0] if len(n.output) else "y"]
                + [t.name for t in g.initializer] + [v.name for v in g.input])
    elif kind == "output":
        n = rng.choice(list(nodes))
        if len(n.output):
            n.output[rng.randrange(len(n.output))] = rng.choice(
                ["", "x", "y"] + [t.name for t in g.initializer] + [o for m in nodes
                                                                    for o in m.input])
        else:
            n.output.append("extra")
    elif kind == "drop_node":
        del nodes[rng.randrange(len(nodes))]
    elif kind == "dup_node":
        nodes.append(nodes[rng.randrange(len(nodes))])
    elif kind == "swap" and len(nodes) > 1:
        i, j = rng.sample(range(len(nodes)), 2)
        a, b = type(nodes[i])(), type(nodes[j])()
        a.CopyFrom(nodes[i])
        b.CopyFrom(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
    elif kind == "drop_init" and len(g.initializer):
        del g.initializer[rng.randrange(len(g.initializer))]
    elif kind == "dup_init" and len(g.initializer):
        g.initializer.append(g.initializer[rng.randrange(len(g.initializer))])
    elif kind == "opset":
        if len(proto.opset_import):
            proto.opset_import[0].version = rng.choice([0, 1, 6, 7, 10, 11, 12, 13, 23, 28,
                                                        29, 1000, -1, 2 ** 40])
        else:
            proto.opset_import.add().version = 13
    elif kind == "ir":
        proto.ir_version = rng.choice([0, 1, 2, 3, 4, 7, 10, 11, 12, 99, -5])
    elif kind == "drop_output" and len(g.output):
        del g.output[rng.randrange(len(g.output))]
    elif kind == "name":
        rng.choice(list(nodes)).name = rng.choice(["", "\x00", "é" * 50, "a'b\"c"])
    elif kind == "add_input_slot":
        n = rng.choice(list(nodes))
        n.input.append(rng.choice(["", "ghost", "x"]))
    return kind


def mutate_external(rng, proto, folder, data_name):
    """Edit external-data fields, or the data file itself."""
    from onnx import TensorProto
    g = proto.graph
    ext = [t for t in g.initializer if t.data_location == TensorProto.EXTERNAL]
    kind = rng.choice(["location", "offset", "length", "drop_key", "make_external",
                       "data_file", "data_file", "symlink", "dup_key"])
    data_path = os.path.join(folder, data_name) if data_name else None
    if kind == "data_file" and data_path and os.path.isfile(data_path) \
            and not os.path.islink(data_path):
        action = rng.choice(["truncate", "extend", "garble", "empty", "dir", "remove"])
        if action == "truncate":
            size = os.path.getsize(data_path)
            with open(data_path, "r+b") as f:
                f.truncate(rng.randrange(size + 1))
        elif action == "extend":
            with open(data_path, "ab") as f:
                f.write(bytes(rng.randint(1, 100)))
        elif action == "garble":
            with open(data_path, "r+b") as f:
                size = os.path.getsize(data_path)
                for _ in range(8):
                    f.seek(rng.randrange(max(1, size)))
                    f.write(bytes([rng.randrange(256)]))
        elif action == "empty":
            open(data_path, "wb").close()
        elif action == "dir":
            os.remove(data_path)
            os.mkdir(data_path)
        else:
            os.remove(data_path)
        return f"data file {action}"
    if kind == "symlink" and data_path and os.path.isfile(data_path) \
            and not os.path.islink(data_path) and hasattr(os, "symlink"):
        outside = os.path.join(os.path.dirname(folder), "outside.data")
        shutil.copy(data_path, outside)
        os.remove(data_path)
        os.symlink(outside if rng.random() < 0.5 else os.path.relpath(outside, folder),
                   data_path)
        return "data file is a symlink out"
    if kind == "make_external" or not ext:
        inline = [t for t in g.initializer if t.data_location != TensorProto.EXTERNAL]
        if not inline:
            return "nothing to externalize"
        t = rng.choice(inline)
        t.data_location = TensorProto.EXTERNAL
        if rng.random() < 0.7:
            e = t.external_data.add()
            e.key, e.value = "location", rng.choice(ODD_LOCATIONS + [data_name or "x"])
        if rng.random() < 0.5:
            t.ClearField("raw_data")
        return f"externalize {t.name!r}"
    t = rng.choice(ext)
    entries = {e.key: e.value for e in t.external_data}
    if kind == "location":
        entries["location"] = rng.choice(ODD_LOCATIONS)
    elif kind in ("offset", "length"):
        entries[kind] = rng.choice([str(_odd_int(rng)), "abc", "", "1.5", " 12", "0x10",
                                    "1e3", "-0", "٣", str(2 ** 70)])
    elif kind == "drop_key" and entries:
        entries.pop(rng.choice(sorted(entries)))
    elif kind == "dup_key":
        pass
    del t.external_data[:]
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    if kind == "dup_key":
        e = t.external_data.add()
        e.key, e.value = "offset", "0"
    return f"external {kind} of {t.name!r}"


# --------------------------------------------------------------------------------------
# compiled plans (.pc1): the prefix, the JSON header, the blob; the checksum is
# recomputed (most cases) so that the mutation reaches the structural validation
# --------------------------------------------------------------------------------------
class Plan:
    """A .pc1 file taken apart: prefix fields, header (JSON object or raw bytes), blob."""
    PREFIX = struct.Struct("<8sIIQQI28x")

    def __init__(self, data):
        (self.magic, self.version, hlen, boff, blen,
         self.crc) = self.PREFIX.unpack(data[:self.PREFIX.size])
        self.header_bytes = data[self.PREFIX.size:self.PREFIX.size + hlen]
        self.header = json.loads(self.header_bytes)
        self.blob = bytearray(data[boff:boff + blen])
        self.fix_crc = True
        self.prefix_override = {}      # field -> value written as is
        self.tail = None               # (kind, n): truncate or extend the file at the end

    def _list(self, key):
        """header[key] when it is still a list (an earlier mutation may have replaced
        it by anything), else an empty list."""
        value = self.header.get(key) if isinstance(self.header, dict) else None
        return value if isinstance(value, list) else []

    def arrays(self):
        return self._list("arrays")

    def layers(self):
        return [(si, li, layer) for si, s in enumerate(self._list("steps"))
                if isinstance(s, dict) and s.get("type") == "chain"
                and isinstance(s.get("layers"), list)
                for li, layer in enumerate(s["layers"]) if isinstance(layer, dict)]

    def tobytes(self):
        header = self.header_bytes if self.header is None else _dumps_with_deep(
            self.header)
        boff = self.PREFIX.size + len(header)
        boff += (-boff) % 64
        blob = bytes(self.blob)
        crc = zlib.crc32(blob, zlib.crc32(header)) if self.fix_crc else self.crc
        fields = {"magic": self.magic, "version": self.version, "hlen": len(header),
                  "boff": boff, "blen": len(blob), "crc": crc}
        fields.update(self.prefix_override)
        packed = []
        for name, fmt in (("magic", "8s"), ("version", "I"), ("hlen", "I"), ("boff", "Q"),
                          ("blen", "Q"), ("crc", "I")):
            value = fields[name]
            if fmt != "8s":
                value %= 1 << (8 * struct.calcsize(fmt))
            packed.append(struct.pack("<" + fmt, value))
        data = b"".join(packed) + bytes(28) + header
        data += bytes(boff - len(data)) + blob
        if self.tail:
            kind, n = self.tail
            data = data[:max(0, len(data) - n)] if kind == "truncate" else data + bytes(n)
        return data


def _json_paths(node, path=()):
    """Every (path, value) in a JSON tree, containers included."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _json_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _json_paths(v, path + (i,))


def _json_set(root, path, value):
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _odd_json(rng, old=None):
    """A hostile JSON value: odd ints, floats (NaN, Infinity), strings, containers, deep
    nesting, or a near miss of the old value."""
    r = rng.random()
    if isinstance(old, int) and not isinstance(old, bool) and r < 0.35:
        return old + rng.choice([-1, 1, -64, 64, 2, -old, old])
    if r < 0.55:
        return _odd_int(rng)
    if r < 0.65:
        return rng.choice(ODD_FLOATS + [1.5, -0.5])
    if r < 0.75:
        return rng.choice(ODD_STRINGS + ["inf", "-inf", "nan", "float32", "int64",
                                         "float64", "chain", "copy", "x", "y", "input"])
    if r < 0.85:
        return rng.choice([None, True, False, [], {}, [None], [1, 2], {"a": 1}])
    if r < 0.92:
        depth = rng.choice([50, 900, 5000, 100_000])
        return json.loads("[" * depth + "]" * depth) if depth < 900 else \
            _DeepJSON(depth)
    return [old] * rng.choice([2, 3, 1000]) if old is not None else [0] * 1000


class _DeepJSON:
    """Nesting deeper than json.dumps can write: spliced in as text by _dumps_deep."""
    def __init__(self, depth):
        self.depth = depth

    def __repr__(self):
        return f"deep[{self.depth}]"


def _dumps_with_deep(header):
    """json.dumps, writing each _DeepJSON as `depth` nested lists."""
    deep = []

    def default(o):
        if isinstance(o, _DeepJSON):
            deep.append(o.depth)
            return f"@@DEEP{len(deep) - 1}@@"
        raise TypeError(type(o).__name__)

    text = json.dumps(header, separators=(",", ":"), default=default)
    for i, depth in enumerate(deep):
        text = text.replace(f'"@@DEEP{i}@@"', "[" * depth + "]" * depth)
    return text.encode()


def mutate_pc1(rng, plan):
    """One mutation of a Plan, in place; returns a description."""
    kind = rng.choice(["field", "field", "field", "array", "array", "layer", "layer",
                       "step", "text", "prefix", "blob", "blob", "tail", "checksum"])
    h = plan.header
    if h is None:            # an earlier text mutation: only bytes are left to mutate
        kind = rng.choice(["text", "prefix", "blob", "tail"])
    if kind == "field":
        paths = [p for p, _ in _json_paths(h) if p]
        path = rng.choice(paths)
        parent = h
        for key in path[:-1]:
            parent = parent[key]
        old = parent[path[-1]]
        if isinstance(parent, dict) and rng.random() < 0.15:
            del parent[path[-1]]
            return f"drop header field {'/'.join(map(str, path))}"
        if isinstance(parent, list) and rng.random() < 0.1:
            parent.insert(path[-1], old)
            return f"duplicate header item {'/'.join(map(str, path))}"
        new = _odd_json(rng, old)
        _json_set(h, path, new)
        return f"header {'/'.join(map(str, path))}={repr(new)[:60]}"
    if kind == "array":
        arrays = plan.arrays()
        if not arrays:
            return "no arrays"
        i = rng.randrange(len(arrays))
        entry = arrays[i]
        if not isinstance(entry, dict):
            return f"array {i} is not an object"
        field = rng.choice(["offset", "offset", "nbytes", "shape", "dtype", "swap"])
        if field == "swap":   # a valid entry of another array: right format, wrong data
            j = rng.randrange(len(arrays))
            arrays[i] = copy.deepcopy(arrays[j])
            return f"array {i} := array {j}"
        if field == "dtype":
            entry["dtype"] = rng.choice(["int64", "float32", "float64", "float16", "uint8",
                                         "<f4", "", None])
        elif field == "shape":
            shape = entry.get("shape")
            shape = list(shape) if isinstance(shape, list) else []
            if shape and rng.random() < 0.6:
                shape[rng.randrange(len(shape))] = _odd_json(rng, shape[0])
            elif rng.random() < 0.5 and shape:
                shape.pop()
            else:
                shape.append(rng.choice([0, 1, 2, 4, -1]))
            entry["shape"] = shape
            if rng.random() < 0.5 and all(isinstance(d, int) and d >= 0 for d in shape):
                size = 4 if entry.get("dtype") == "float32" else 8
                entry["nbytes"] = math.prod(shape) * size   # consistent, but a lie
        else:
            entry[field] = _odd_json(rng, entry.get(field))
        return f"array {i} {field}={entry.get(field) if field != 'swap' else ''}"[:120]
    if kind == "layer":
        layers = plan.layers()
        if not layers:
            return "no chain layers"
        si, li, layer = rng.choice(layers)
        field = rng.choice(["cout", "k", "group", "mr", "strides", "pads", "res_mode",
                            "residual", "packed", "blocks", "bias", "auto_pad",
                            "spatial_rank", "act"])
        old = layer.get(field)
        if field in ("packed", "blocks", "bias"):
            n = len(plan.arrays())
            new = rng.choice([None, -1, n, 2 ** 63, rng.randrange(max(1, n))])
        elif field in ("strides", "pads"):
            new = [_odd_int(rng) if rng.random() < 0.4 else rng.randint(0, 3)
                   for _ in range(rng.choice([2, 4, 1, 0, 5]))]
        elif field == "residual":
            new = rng.choice([None, "ghost", "input", "x", "", 0])
        elif field == "act":
            new = {"kind": rng.choice(["relu", "clip", "leaky", "none", "gelu"]),
                   "lo": _odd_json(rng, 0.0), "hi": rng.choice(["inf", 6.0, "nan", "-inf"]),
                   "alpha": rng.choice([1.0, 0.1, "inf", None])}
        else:
            new = _odd_json(rng, old)
        layer[field] = new
        return f"step {si} layer {li} {field}={repr(new)[:60]}"
    if kind == "step":
        steps = plan._list("steps")
        if not steps:
            return "no steps"
        action = rng.choice(["swap", "dup", "drop", "rename", "retype", "chain_join"])
        i = rng.randrange(len(steps))
        if action == "swap" and len(steps) > 1:
            j = rng.randrange(len(steps))
            steps[i], steps[j] = steps[j], steps[i]
        elif action == "dup":
            steps.insert(i, copy.deepcopy(steps[i]))
        elif action == "drop":
            del steps[i]
        elif action == "rename" and isinstance(steps[i], dict):
            names = [v for _, v in _json_paths(h) if isinstance(v, str)]
            key = rng.choice(["input", "output", "a", "b"])
            steps[i][key] = rng.choice(names + ["ghost", ""])
        elif action == "retype" and isinstance(steps[i], dict):
            steps[i]["type"] = rng.choice(["chain", "affine", "add", "copy", "conv", 7])
        elif action == "chain_join":   # layers of one chain appended to another
            chains = [s for s in steps if isinstance(s, dict) and s.get("type") == "chain"
                      and isinstance(s.get("layers"), list)]
            if chains:
                a, b = rng.choice(chains), rng.choice(chains)
                a["layers"] = a["layers"] + b["layers"]
        return f"step {i} {action}"
    if kind == "text":
        text = plan.header_bytes if plan.header is None else _dumps_with_deep(plan.header)
        text, what = mutate_bytes(rng, text)
        plan.header, plan.header_bytes = None, text
        return f"header text {what}"
    if kind == "prefix":
        field = rng.choice(["version", "hlen", "boff", "blen", "magic", "crc"])
        if field == "magic":
            plan.prefix_override["magic"] = rng.choice([b"PC1PLAN\x01", b"\x00" * 8,
                                                        b"PC1PLAN\x00"])
        elif field == "version":
            plan.version = rng.choice([0, 2, 2 ** 32 - 1, 1])
        else:
            plan.prefix_override[field] = rng.choice(
                [0, 1, 63, 64, 65, 2 ** 31, 2 ** 32 - 1, 2 ** 63, 2 ** 64 - 1,
                 rng.randrange(1 << 16)])
        return f"prefix {field}"
    if kind == "blob":
        if not plan.blob:
            return "empty blob"
        arrays = [a for a in plan.arrays() if isinstance(a, dict)] \
            if plan.header is not None else []
        target = rng.choice(arrays) if arrays and rng.random() < 0.7 else None
        try:
            off, nbytes = int(target["offset"]), int(target["nbytes"])
            dtype = target["dtype"]
        except (TypeError, KeyError, ValueError, OverflowError):
            off, nbytes, dtype = 0, len(plan.blob), "bytes"
        if nbytes <= 0 or off < 0 or off + nbytes > len(plan.blob):
            off, nbytes, dtype = 0, len(plan.blob), "bytes"
        if not isinstance(dtype, str) or nbytes < {"int64": 8, "float32": 4}.get(dtype, 1):
            dtype = "bytes"
        for _ in range(rng.randint(1, 4)):
            if dtype == "int64":   # block tables: rows, first channels, offsets
                pos = off + 8 * rng.randrange(nbytes // 8)
                plan.blob[pos:pos + 8] = struct.pack("<q", _clamp64(_odd_int(rng)))
            elif dtype == "float32":
                pos = off + 4 * rng.randrange(nbytes // 4)
                plan.blob[pos:pos + 4] = struct.pack("<f", rng.choice(
                    [math.nan, math.inf, -math.inf, 3.4e38, -0.0, 1e-45]))
            else:
                plan.blob[off + rng.randrange(nbytes)] ^= 1 << rng.randrange(8)
        return f"blob {dtype} at {off}"
    if kind == "tail":
        plan.tail = (rng.choice(["truncate", "truncate", "extend"]),
                     rng.choice([1, 8, 63, 64, 4096, rng.randrange(1 << 16)]))
        return f"{plan.tail[0]} {plan.tail[1]} bytes"
    plan.fix_crc = False   # "checksum": everything else kept, the digest left stale
    return "stale checksum"


def _clamp64(v):
    return max(-(2 ** 63), min(2 ** 63 - 1, v))


# --------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------
def _feed(rng, sess, np):
    feeds = {}
    named = {}
    for arg in sess.get_inputs():
        shape = arg.shape
        if shape is None:
            shape = [rng.choice([1, 2]), rng.choice([1, 3, 4, 5, 8]), rng.randint(1, 6),
                     rng.randint(1, 6)]
        dims = []
        for d in shape:
            if isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str):
                dims.append(named.setdefault(d, rng.randint(1, 5)))
            else:
                dims.append(rng.randint(1, 5))
        if any(d < 0 for d in dims) or math.prod(dims) > MAX_FEED_ELEMENTS:
            return None
        x = np.asarray(np.random.default_rng(rng.randrange(2 ** 32)).standard_normal(dims),
                       np.float32)
        if x.size and rng.random() < 0.2:
            x.reshape(-1)[rng.randrange(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
        feeds[arg.name] = x
    return feeds


def case_family(seed, index, families=FAMILIES):
    """The family of case `index` (run_case's first draw), known without running it."""
    return random.Random(f"{seed}:{index}").choice(list(families))


def _write_case(path, data, desc, form, announce):
    """Write a case's model file; returns its description ("; "-joined `desc`, the
    form it loads from last), announced first when `announce` is given."""
    with open(path, "wb") as f:
        f.write(data)
    desc.append(f"from {form}")
    description = "; ".join(desc)
    if announce:
        announce(description, path, data)
    return description


def run_case(seeds, seed, index, workdir, families=FAMILIES, announce=None, load=True):
    """Run one case; returns (outcome, description). Raises on a failing case.
    load=False only builds the mutated model (outcome 'prepared')."""
    import numpy as np
    import onnx
    import pyconv1x1

    rng = random.Random(f"{seed}:{index}")
    family = rng.choice(list(families))
    if family == "pc1":
        return _run_plan_case(seeds, rng, index, workdir, announce, load)
    if family == "pc1live":
        return _run_live_plan_case(seeds, rng, index, workdir, announce, load)
    name = rng.choice(seeds.names)
    data, ext_bytes, data_name = seeds.items[name]
    if family == "external" and ext_bytes is None:
        name = rng.choice([n for n in seeds.names if seeds.items[n][1] is not None])
        data, ext_bytes, data_name = seeds.items[name]
    folder = os.path.join(workdir, f"case{index}", "model")
    os.makedirs(folder)
    if ext_bytes is not None:
        with open(os.path.join(folder, data_name), "wb") as f:
            f.write(ext_bytes)
    desc = [family, name]
    proto = None
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if family == "bytes":
            data, what = mutate_bytes(rng, data)
        else:
            if proto is None:
                proto = onnx.ModelProto()
                proto.ParseFromString(data)
            try:
                if family == "dims":
                    what = mutate_dims(rng, proto)
                elif family == "attrs":
                    what = mutate_attrs(rng, proto)
                elif family == "graph":
                    what = mutate_graph(rng, proto)
                else:
                    what = mutate_external(rng, proto, folder, data_name)
            except (ValueError, TypeError, OSError) as exc:  # protobuf or the OS said no
                what = f"mutation not applied ({type(exc).__name__})"
        desc.append(what)
    if proto is not None:
        try:
            data = proto.SerializeToString()
        except Exception:   # protobuf refuses some edits (e.g. bad UTF-8): use the bytes
            proto = None
    path = os.path.join(folder, name + ".onnx")
    form = rng.choices(["path", "bytes", "proto"], [6, 2, 2 if proto is not None else 0])[0]
    description = _write_case(path, data, desc, form, announce)
    if not load:
        return "prepared", description
    try:
        if form == "path":
            sess = pyconv1x1.InferenceSession(path, threads=rng.choice([1, 2]))
        elif form == "bytes":
            sess = pyconv1x1.InferenceSession(data, threads=rng.choice([1, 2]),
                                              base_dir=folder)
        else:
            sess = pyconv1x1.InferenceSession(proto, threads=rng.choice([1, 2]),
                                              base_dir=folder)
    except pyconv1x1.Error as exc:
        return f"load:{type(exc).__name__}", description
    return _run_session(rng, sess, np, pyconv1x1), description


def _run_session(rng, sess, np, pyconv1x1):
    """Run a loaded session; returns the outcome. Raises when the outputs are not float32
    arrays of non-negative dims, or when a second run of the same feed differs (the
    kernels are deterministic: non-finite values are allowed, changing ones are not;
    a difference means uninitialized or freed memory was read)."""
    feeds = _feed(rng, sess, np)
    if feeds is None:
        return "loaded:feed too large"
    try:
        outs = sess.run(None, feeds)
    except pyconv1x1.Error as exc:
        return f"run:{type(exc).__name__}"
    names = [o.name for o in sess.get_outputs()]
    if len(outs) != len(names):
        raise AssertionError(f"{len(outs)} outputs for {len(names)} names")
    for o in outs:
        if not isinstance(o, np.ndarray) or o.dtype != np.float32:
            raise AssertionError(f"output is {type(o).__name__} {getattr(o, 'dtype', '')}")
        if any((not isinstance(d, int)) or d < 0 for d in o.shape):
            raise AssertionError(f"output shape {o.shape}")
    if sum(o.nbytes for o in outs) > RERUN_MAX_BYTES:
        return "ran"     # a second copy of huge outputs would only test the memory cap
    try:
        again = sess.run(None, feeds)
    except pyconv1x1.Error as exc:
        raise AssertionError(f"the first run passed, the second raised {exc!r}") from None
    for name, a, b in zip(names, outs, again):
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
            raise AssertionError(f"output {name!r} differs between two runs of one feed")
    return "ran"


def _run_live_plan_case(seeds, rng, index, workdir, announce, load):
    """A valid plan loaded from a path (or a bytearray), then its file rewritten in
    place, truncated or replaced (or the bytearray edited) under the live session: the
    session was validated at load, so it must go on giving the same results (or refuse
    with a pyconv1x1.Error), never crash or compute something else."""
    import numpy as np
    import pyconv1x1

    plans = seeds.plans
    name = rng.choice(sorted(plans))
    data = plans[name]
    folder = os.path.join(workdir, f"case{index}", "model")
    os.makedirs(folder)
    path = os.path.join(folder, name + ".pc1")
    with open(path, "wb") as f:
        f.write(data)
    form = rng.choices(["path", "bytearray"], [4, 1])[0]
    action = rng.choice(["truncate", "truncate", "garble", "garble_blob", "zero",
                         "replace", "extend"])
    if form == "bytearray" and action in ("truncate", "replace", "extend"):
        action = "garble"        # a bytearray with live views cannot be resized
    description = f"pc1live; {name}; from {form}; then {action}"
    if announce:
        announce(description, path, data)
    if not load:
        return "prepared", description
    threads = rng.choice([1, 2])
    reference = pyconv1x1.InferenceSession(bytes(data), threads=threads)
    feeds = _feed(rng, reference, np)
    if feeds is None:
        return "loaded:feed too large", description
    expect = reference.run(None, feeds)
    source = bytearray(data) if form == "bytearray" else path
    sess = pyconv1x1.InferenceSession(source, threads=threads)
    sess.run(None, feeds)           # plans built and cached before the file changes
    boff = Plan.PREFIX.unpack(data[:Plan.PREFIX.size])[3]
    view = source
    if action == "truncate":
        os.truncate(path, rng.randrange(len(data)))
    elif action == "extend":
        with open(path, "ab") as f:
            f.write(bytes(rng.randint(1, 4096)))
    elif action == "replace":       # a new file at the path: the old inode lives on
        tmp = path + ".new"
        with open(tmp, "wb") as f:
            f.write(bytes(len(data)))
        os.replace(tmp, path)
    else:
        lo = boff if action in ("garble_blob", "zero") else 0
        if form == "bytearray":
            for _ in range(64 if action != "zero" else 0):
                view[rng.randrange(lo, len(view))] = rng.randrange(256)
            if action == "zero":
                view[lo:] = bytes(len(view) - lo)
        else:
            with open(path, "r+b") as f:
                if action == "zero":
                    f.seek(lo)
                    f.write(bytes(len(data) - lo))
                else:
                    for _ in range(64):
                        f.seek(rng.randrange(lo, len(data)))
                        f.write(bytes([rng.randrange(256)]))
    try:
        got = sess.run(None, feeds)
    except pyconv1x1.Error as exc:
        return f"run:{type(exc).__name__}", description
    for o, a, b in zip(sess.get_outputs(), expect, got):
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
            raise AssertionError(f"output {o.name!r} changed after the plan's "
                                 f"{'file' if form == 'path' else 'buffer'} was edited "
                                 f"({action})")
    return "ran", description


def _run_plan_case(seeds, rng, index, workdir, announce, load):
    """A mutated compiled plan, loaded from a path (memory-mapped) or from bytes."""
    import numpy as np
    import pyconv1x1

    plans = seeds.plans
    name = rng.choice(sorted(plans))
    plan = Plan(plans[name])
    desc = ["pc1", name]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        try:
            desc.append(mutate_pc1(rng, plan))
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
            # an earlier mutation left a shape this one does not expect: the fuzzer's
            # limit, not a finding
            desc.append(f"mutation not applied ({type(exc).__name__})")
    data = plan.tobytes()
    folder = os.path.join(workdir, f"case{index}", "model")
    os.makedirs(folder)
    path = os.path.join(folder, name + ".pc1")
    form = rng.choices(["path", "bytes", "bytearray", "memoryview"], [5, 3, 1, 1])[0]
    description = _write_case(path, data, desc, form, announce)
    if not load:
        return "prepared", description
    source = {"path": path, "bytes": data, "bytearray": bytearray(data),
              "memoryview": memoryview(data)}[form]
    try:
        sess = pyconv1x1.InferenceSession(source, threads=rng.choice([1, 2]))
    except pyconv1x1.Error as exc:
        return f"load:{type(exc).__name__}", description
    return _run_session(rng, sess, np, pyconv1x1), description


# --------------------------------------------------------------------------------------
# worker (a subprocess) and driver
# --------------------------------------------------------------------------------------
def _limit_memory():
    if os.environ.get("PYCONV1X1_FUZZ_SANITIZED"):
        return   # ASan reserves terabytes of address space; ASAN_OPTIONS caps allocations
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


def _selftest(index):
    """Let the tests check that a crash or a hang is caught and blamed on its case."""
    if os.environ.get("PYCONV1X1_FUZZ_SELFTEST_CRASH") == str(index):
        import signal
        os.kill(os.getpid(), signal.SIGSEGV)
    if os.environ.get("PYCONV1X1_FUZZ_SELFTEST_HANG") == str(index):
        time.sleep(3600)


def worker(seed, start, stop, families):
    import warnings
    warnings.simplefilter("ignore")
    _limit_memory()
    seeds = Seeds()
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="pyconv1x1-fuzz-") as workdir:
        for index in range(start, stop):
            out.write(json.dumps({"start": index}) + "\n")
            out.flush()
            _selftest(index)
            try:
                outcome, desc = run_case(seeds, seed, index, workdir, families)
                record = {"case": index, "outcome": outcome}
            except BaseException as exc:  # a failing case: report it and go on
                record = {"case": index, "outcome": "FAIL",
                          "error": f"{type(exc).__name__}: {exc}"[:2000],
                          "traceback": traceback.format_exc()[-4000:]}
                if isinstance(exc, KeyboardInterrupt):
                    raise
            shutil.rmtree(os.path.join(workdir, f"case{index}"), ignore_errors=True)
            out.write(json.dumps(record) + "\n")
            out.flush()
    out.write(json.dumps({"done": True}) + "\n")
    out.flush()


class Report:
    def __init__(self, seed, families=FAMILIES, label=""):
        self.seed = seed
        self.families = tuple(families)
        self.label = label
        self.counts = collections.Counter()
        self.failures = []
        self.by_family = collections.defaultdict(collections.Counter)

    @property
    def ok(self):
        return not self.failures

    def record(self, case, outcome):
        self.counts[outcome] += 1
        kind = ("finding" if outcome == "FAIL" else "ran" if outcome == "ran"
                else "refused" if outcome.startswith(("load:", "run:")) else "other")
        self.by_family[case_family(self.seed, case, self.families)][kind] += 1

    def fail(self, case, kind, error, traceback=None):
        self.failures.append({"case": case, "kind": kind, "error": error,
                              "traceback": traceback})
        self.record(case, "FAIL")

    def family_table(self):
        lines = [f"  {'family':10s} {'cases':>7s} {'ran':>7s} {'refused':>7s} "
                 f"{'other':>7s} {'findings':>8s}"]
        for fam in self.families:
            c = self.by_family.get(fam, collections.Counter())
            lines.append(f"  {fam:10s} {sum(c.values()):7d} {c['ran']:7d} "
                         f"{c['refused']:7d} {c['other']:7d} {c['finding']:8d}")
        return lines

    def summary(self):
        label = f" [{self.label}]" if self.label else ""
        lines = [f"seed {self.seed}{label}: {sum(self.counts.values())} cases"]
        for k, v in sorted(self.counts.items()):
            lines.append(f"  {k:32s} {v}")
        lines += self.family_table()
        for f in self.failures:
            fam = case_family(self.seed, f["case"], self.families) \
                if f["case"] is not None else "?"
            lines.append(f"FAIL case {f['case']} ({fam}, {f['kind']}): {f['error']}")
            lines.append(f"  replay: python tools/fuzz.py --seed {self.seed} "
                         f"--replay {f['case']} --families {','.join(self.families)}")
            if f.get("traceback"):
                lines.append("  " + f["traceback"].rstrip().replace("\n", "\n  "))
        return "\n".join(lines)


def _package_parent():
    """The folder holding the pyconv1x1 this process imports (the repo or site-packages),
    so that the workers test the same build."""
    try:
        import pyconv1x1
    except ImportError:
        return REPO
    return os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))


STARTUP_TIMEOUT = 60.0  # seconds a worker may take before its first message


def fuzz(iterations, seed, families=FAMILIES, case_timeout=60.0, env=None, cwd=None,
         python=None, package_parent=None, label=""):
    """Run cases [0, iterations) in worker subprocesses; a crash or a hang is recorded
    against the case that caused it and the next worker resumes after it.
    package_parent: the folder whose pyconv1x1 the workers import (default: this
    process's)."""
    report = Report(seed, families, label)
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_parent or _package_parent(), env.get("PYTHONPATH")) if p)
    start = 0
    while start < iterations:
        cmd = [python or sys.executable, os.path.abspath(__file__), "--worker",
               "--seed", str(seed), "--start", str(start), "--stop", str(iterations),
               "--families", ",".join(families)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=cwd or tempfile.gettempdir())
        lines = queue.Queue()
        err_chunks = []

        def pump(stream, sink, eof):
            for line in stream:
                sink(line)
            if eof:
                sink(None)

        t_out = threading.Thread(target=pump, args=(proc.stdout, lines.put, True),
                                 daemon=True)
        t_err = threading.Thread(target=pump, args=(proc.stderr, err_chunks.append, False),
                                 daemon=True)
        t_out.start()
        t_err.start()
        current, finished, started = None, False, False
        while True:
            try:
                # a worker's start (Python, numpy, pyconv1x1 imports) is not a case: on a
                # loaded machine it alone can take longer than a short case_timeout
                line = lines.get(timeout=case_timeout if started
                                 else max(case_timeout, STARTUP_TIMEOUT))
                started = True
            except queue.Empty:
                proc.kill()
                proc.wait()
                report.fail(current, "hang", f"no progress in {case_timeout:.0f} s")
                break
            if line is None:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "start" in msg:
                current = msg["start"]
            elif "case" in msg:
                if msg["outcome"] == "FAIL":
                    report.fail(msg["case"], "exception", msg["error"],
                                msg.get("traceback"))
                else:
                    report.record(msg["case"], msg["outcome"])
                current = None
            elif msg.get("done"):
                finished = True
        proc.wait()
        if finished:
            break
        if current is None:   # died between cases, or before the first one
            stderr = "".join(c for c in err_chunks if c)[-STDERR_TAIL:]
            report.fail(start, "worker", f"worker exited {proc.returncode}: {stderr}")
            break
        if not report.failures or report.failures[-1]["case"] != current:
            stderr = "".join(c for c in err_chunks if c)[-STDERR_TAIL:]
            report.fail(current, "crash",
                        f"worker died with exit code {proc.returncode}\n{stderr}")
        start = current + 1
    return report


# --------------------------------------------------------------------------------------
# ASan/UBSan: every kernel variant rebuilt with the sanitizers in a scratch copy of the
# package, checked to really be complete (variants, thread pool, instrumentation), then fuzzed
# variant by variant with the sanitizer runtime preloaded into the workers
# --------------------------------------------------------------------------------------
SANITIZE_CFLAGS = "-fsanitize=address,undefined -fno-omit-frame-pointer"
SANITIZE_LDFLAGS = "-fsanitize=address,undefined"
ASAN_OPTIONS = ("detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:"
                f"max_allocation_size_mb={MEMORY_LIMIT >> 20}:detect_stack_use_after_return=0")
UBSAN_OPTIONS = "halt_on_error=1:print_stacktrace=1"
_BUILD_INPUTS = ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in")


def _source_digest():
    import hashlib
    h = hashlib.sha256()
    pkg = os.path.join(REPO, "pyconv1x1")
    for name in sorted(os.listdir(pkg)):
        if name.endswith((".py", ".tp", ".pyx", ".pxd")) and not name.startswith("_kernels_"):
            with open(os.path.join(pkg, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    for name in _BUILD_INPUTS:
        path = os.path.join(REPO, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def build_sanitized(dest, via="env", log=print):
    """Copy the package's sources to `dest` and build every kernel variant there with
    ASan + UBSan. via="env": the flags in CFLAGS / LDFLAGS, as a user would pass them;
    via="cc": in CC, which setup.py's compiler probes also use. A build of the same
    sources and flags already in dest is reused."""
    stamp_path = os.path.join(dest, "fuzz-sanitized.json")
    stamp = {"digest": _source_digest(), "via": via, "python": sys.executable}
    try:
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                log(f"sanitizer build: reusing {dest}")
                return
    except (OSError, ValueError):
        pass
    os.makedirs(dest, exist_ok=True)
    for name in _BUILD_INPUTS:
        if os.path.exists(os.path.join(REPO, name)):
            shutil.copy2(os.path.join(REPO, name), dest)
    shutil.rmtree(os.path.join(dest, "pyconv1x1"), ignore_errors=True)
    shutil.rmtree(os.path.join(dest, "build"), ignore_errors=True)
    shutil.copytree(os.path.join(REPO, "pyconv1x1"), os.path.join(dest, "pyconv1x1"),
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "_kernels_*.pyx",
                                                  "_kernels_*.c", "__pycache__", "*.html"))
    env = dict(os.environ)
    if via == "env":
        env["CFLAGS"] = f"{env.get('CFLAGS', '')} {SANITIZE_CFLAGS}".strip()
        env["LDFLAGS"] = f"{env.get('LDFLAGS', '')} {SANITIZE_LDFLAGS}".strip()
    else:
        env["CC"] = f"{env.get('CC') or 'gcc'} {SANITIZE_CFLAGS}"
    log(f"sanitizer build ({'CFLAGS/LDFLAGS' if via == 'env' else 'CC'}) in {dest} ...")
    t0 = time.perf_counter()
    with open(os.path.join(dest, "build.log"), "w") as out:
        r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"],
                           cwd=dest, env=env, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"sanitizer build failed (exit {r.returncode}); see "
                           f"{os.path.join(dest, 'build.log')}")
    log(f"sanitizer build: {time.perf_counter() - t0:.0f} s")
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)


def sanitizer_env(dest):
    """Worker environment: the sanitized package first on the path, the ASan and UBSan
    runtimes preloaded (python itself is not linked with them, and ASan must be the
    first library loaded), and Python objects allocated with malloc: with pymalloc's
    arenas ASan cannot see a kernel object (a BoundChain's geometry, a Chain's layer
    table) used after Python freed it."""
    cc = (os.environ.get("CC") or "gcc").split()[0]
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        try:
            found = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True,
                                   text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if not (os.path.isabs(found) and os.path.exists(found)):
            raise RuntimeError(f"{cc} does not know where {name} is: install its "
                               f"sanitizer runtime")
        libs.append(os.path.realpath(found))
    env = dict(os.environ)
    env.update({"LD_PRELOAD": ":".join(libs + [p for p in [env.get("LD_PRELOAD")] if p]),
                "ASAN_OPTIONS": ASAN_OPTIONS, "UBSAN_OPTIONS": UBSAN_OPTIONS,
                "PYTHONMALLOC": "malloc", "PYCONV1X1_FUZZ_SANITIZED": "1",
                "PYTHONPATH": dest})
    env.pop("PYCONV1X1_ISA", None)
    return env


_CHECK_BUILD = r"""
import json, os
from pyconv1x1 import _backend
flags = _backend._linux_cpu_flags()
expected = None if flags is None else [
    v for v in _backend._ORDER if all(f in flags for f in _backend._REQUIRES[v])]
info = {}
for v in _backend.runnable_variants():
    k = _backend.kernels(v)
    with open(k.__file__, "rb") as f:
        data = f.read()
    info[v] = {"threaded": bool(k.THREADED), "asan": b"__asan_init" in data,
               "ubsan": b"__ubsan_handle" in data, "file": os.path.abspath(k.__file__)}
try:
    with open("/proc/self/maps") as f:
        maps = f.read()
except OSError:
    maps = "libasan"   # not Linux: trust LD_PRELOAD
print(json.dumps({"expected": expected, "built": _backend.built_variants(),
                  "variants": info, "runtime": "libasan" in maps}))
"""


def check_sanitized(dest, env):
    """(runnable variants of the sanitized build, problems): a build that dropped a
    variant this CPU runs, or the thread pool, or the instrumentation, is not the run asked for
    (setup.py's compiler probes can fail on flags given through CFLAGS / LDFLAGS and
    then quietly build the generic variant alone)."""
    r = subprocess.run([sys.executable, "-c", _CHECK_BUILD], env=env, cwd=dest,
                       capture_output=True, text=True, timeout=300)
    if r.returncode:
        return [], [f"the sanitized package does not import (exit {r.returncode}):\n"
                    f"{r.stderr[-STDERR_TAIL:]}"]
    state = json.loads(r.stdout.strip().splitlines()[-1])
    problems = []
    expected = state["expected"] or ["generic"]
    missing = [v for v in expected if v not in state["built"]]
    if missing:
        problems.append(f"variants {missing} not built (this CPU runs {expected}; built "
                        f"{state['built']})")
    if not state["runtime"]:
        problems.append("the ASan runtime is not loaded in the workers (LD_PRELOAD)")
    for v, info in state["variants"].items():
        if not info["threaded"]:
            problems.append(f"variant {v} built without its thread pool (single-threaded)")
        if not (info["asan"] and info["ubsan"]):
            problems.append(f"variant {v} is not instrumented (asan {info['asan']}, "
                            f"ubsan {info['ubsan']})")
        if not info["file"].startswith(os.path.abspath(dest) + os.sep):
            problems.append(f"variant {v} imported from {info['file']}, outside {dest}")
    return list(state["variants"]), problems


def sanitize(iterations, seed, families, case_timeout, dest=None, via="env"):
    """Build, check, then fuzz `iterations` cases per runnable variant under ASan/UBSan.
    Returns the exit status."""
    scratch = dest or tempfile.mkdtemp(prefix="pyconv1x1-asan-")
    try:
        build_sanitized(scratch, via)
        env = sanitizer_env(scratch)
        variants, problems = check_sanitized(scratch, env)
        if problems:
            print("SANITIZER BUILD INCOMPLETE: not fuzzing a build that differs from the "
                  "real one", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            if via == "env":
                print("  (see the build log; --sanitize-flags-via cc passes the flags in CC "
                      "instead of CFLAGS / LDFLAGS)", file=sys.stderr)
            print(f"  build log: {os.path.join(scratch, 'build.log')}", file=sys.stderr)
            return 1
        print(f"sanitizer build OK: variants {variants}, thread pool, ASan + UBSan")
        print("  replay a case there with: " + " ".join(
            f"{k}={env[k]}" for k in ("LD_PRELOAD", "PYTHONMALLOC", "ASAN_OPTIONS",
                                      "UBSAN_OPTIONS", "PYCONV1X1_FUZZ_SANITIZED",
                                      "PYTHONPATH")) + " PYCONV1X1_ISA=<variant> python "
              "tools/fuzz.py --seed <seed> --replay <case> --families <families>")
        status = 0
        total = collections.Counter()
        for i, variant in enumerate(variants):
            venv = dict(env, PYCONV1X1_ISA=variant)
            t0 = time.perf_counter()
            report = fuzz(iterations, seed + i, families, case_timeout, env=venv,
                          package_parent=scratch, label=f"ASan+UBSan {variant}")
            print(report.summary())
            print(f"{time.perf_counter() - t0:.1f} s")
            total["cases"] += sum(report.counts.values())
            total["findings"] += len(report.failures)
            status = status or (0 if report.ok else 1)
        print(f"sanitizer total: {total['cases']} cases over {len(variants)} variants, "
              f"{total['findings']} findings")
        return status
    finally:
        if dest is None:
            shutil.rmtree(scratch, ignore_errors=True)


def replay(seed, index, families=FAMILIES, save=None):
    """Run one case in this process, saying what it is first (it may crash)."""
    _limit_memory()
    seeds = Seeds()

    def announce(description, path, data):
        print(f"case {index}: {description}", flush=True)
        if save:
            folder = os.path.dirname(path)
            shutil.copytree(folder, save, symlinks=True, dirs_exist_ok=True)
            print(f"  saved the case's folder to {save}", flush=True)

    with tempfile.TemporaryDirectory(prefix="pyconv1x1-fuzz-") as workdir:
        outcome, desc = run_case(seeds, seed, index, workdir, families, announce)
    print(f"  outcome: {outcome}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help=f"comma-separated subset of {','.join(FAMILIES)}")
    ap.add_argument("--case-timeout", type=float, default=60.0,
                    help="seconds without progress before a case counts as a hang")
    ap.add_argument("--replay", type=int, help="run one case in this process")
    ap.add_argument("--save", help="with --replay: copy the case's model folder here")
    ap.add_argument("--sanitize", action="store_true",
                    help="build every kernel variant with ASan + UBSan in a scratch copy "
                         "and fuzz --iterations cases under each")
    ap.add_argument("--sanitize-dir",
                    help="with --sanitize: build here and keep it (reused if unchanged)")
    ap.add_argument("--sanitize-flags-via", choices=("env", "cc"), default="env",
                    help="pass the sanitizer flags in CFLAGS/LDFLAGS (default) or in CC")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    families = tuple(f for f in args.families.split(",") if f)
    bad = set(families) - set(FAMILIES)
    if bad:
        ap.error(f"unknown families {sorted(bad)}")
    if args.worker:
        worker(args.seed, args.start, args.stop, families)
        return 0
    if args.replay is not None:
        replay(args.seed, args.replay, families, args.save)
        return 0
    if args.sanitize:
        return sanitize(args.iterations, args.seed, families, args.case_timeout,
                        args.sanitize_dir, args.sanitize_flags_via)
    t0 = time.perf_counter()
    report = fuzz(args.iterations, args.seed, families, args.case_timeout)
    print(report.summary())
    print(f"{time.perf_counter() - t0:.1f} s")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

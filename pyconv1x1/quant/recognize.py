"""Recognize quantized 1x1 convolutions in a parsed graph (ir.Graph, never protobuf) and
rewrite them into internal nodes (domain DOMAIN) that the check stage binds to the steps
of quant.steps:

- QDQ (quantize_static's default): DequantizeLinear(x_q) -> Conv(DequantizeLinear(w_q),
  DequantizeLinear(b_q)) [-> Relu | Clip] -> QuantizeLinear  =>  QConv (int8 in and out);
  a Conv whose result stays float => QConv with a float32 output;
  DequantizeLinear(a) + DequantizeLinear(b) [-> Relu] -> QuantizeLinear  =>  QAdd.
- QOperator: QLinearConv => QConv, QLinearAdd (com.microsoft) => QAdd,
  QuantizeLinear / DequantizeLinear of run-time tensors => Quantize / Dequantize.
- quantize_dynamic: DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul(x_scale *
  w_scale) [-> Add(bias)]  =>  DynQConv (float32 in and out).
- int8 graph inputs / outputs => Edge (+-128: int8 tensors are held as uint8).

Everything else stays float: DequantizeLinear of constants is folded into float
constants for the float ops that read them, and a quantized conv this runtime cannot run
in int8 (grouped, SAME padding, a weight zero point that leaves int8) runs in float32
between a Dequantize and a Quantize, with a note saying why."""
import numpy as np

from ..errors import ModelError, UnsupportedError
from ..ir import Graph, Node
from ..program import CopyStep
from . import steps as S

DOMAIN = "pyconv1x1.quant"
MS_DOMAIN = "com.microsoft"
QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger",
                       "DynamicQuantizeLinear", "QLinearAdd"})
_Q_DTYPES = {"uint8": False, "int8": True}  # numpy name -> signed


def is_quantized(graph):
    """Whether the graph quantizes run-time tensors. DequantizeLinear of constants alone
    (weight-only quantization) is not: constant folding makes float weights of it."""
    return any(n.op_type in QUANT_OPS and (
        n.op_type != "DequantizeLinear" or not n.inputs
        or n.inputs[0] not in graph.constants) for n in graph.nodes)


def lower_quantized(graph):
    """(graph, notes): the graph with its quantized parts as DOMAIN nodes, and what was
    done; a graph without quantized ops is returned as it is."""
    if not is_quantized(graph):
        return graph, []
    return _Recognizer(graph).run()


class _Fallback(Exception):
    """This quantized conv runs in float32; the message says why."""


def _f32(v):
    return np.float32(v)


def _quantize_value(v, scale, zp_u8):
    """The uint8-held quantized value of float v: clamp(rint(v / scale) + zp, 0, 255)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        q = np.rint(_f32(v) / _f32(scale))
    return int(min(255.0, max(0.0, float(q) + zp_u8)))


class _Recognizer:
    def __init__(self, graph):
        from ..check import topological_order
        self.g = graph
        self.order = [graph.nodes[i] for i in topological_order(graph)]
        self.consts = dict(graph.constants)
        self.producer = {o: n for n in graph.nodes for o in n.outputs if o}
        self.users = {}
        for n in graph.nodes:
            for t in n.inputs:
                if t:
                    self.users.setdefault(t, []).append(n)
        self.outputs = {v.name for v in graph.outputs}
        self.nodes, self.notes = [], []
        self.consumed = set()    # ids of nodes absorbed into a pattern
        self.qt = {}             # run-time quantized tensor -> signed (held as uint8)
        self.held = {}           # ONNX name -> internal name of its uint8 values
        self.dq = {}             # float tensor -> (q tensor, scale, zp_u8, node), lazy
        self.dq_done = set()
        self.cdq = {}            # DequantizeLinear of a constant -> (q, scale, zp, axis)
        self.dyn = {}            # DynamicQuantizeLinear output -> (node, index)
        self.deferred = []       # Mul(x_scale, w_scale) nodes a ConvInteger must claim
        self.writer = {}         # internal tensor -> the quantized step writing it

    # -- helpers ----------------------------------------------------------------------
    def const(self, node, index, what, required=True):
        if index >= len(node.inputs) or not node.inputs[index]:
            if required:
                raise ModelError(f"{node.label()}: missing input #{index} ({what})")
            return None
        name = node.inputs[index]
        if name in self.cdq and name not in self.consts:
            self._fold_float(name)
        if name not in self.consts:
            raise UnsupportedError(f"{node.label()}: {what} {name!r} is computed at run "
                                   "time; only constant quantization parameters and "
                                   "weights are supported")
        return self.consts[name]

    def params(self, node, si, zi, what, channels=None, per_tensor=False,
               zp_types=("uint8", "int8"), signed_default=False):
        """(scale float32 [m], zp as stored int64 [m], zp held as uint8 int64 [m],
        signed) of a scale / zero point pair, every value checked."""
        sname = node.inputs[si] if si < len(node.inputs) else ""
        scale = self.const(node, si, f"{what} scale")
        if scale.dtype.kind != "f":
            raise ModelError(f"{node.label()}: {what} scale {sname!r} is "
                             f"{scale.dtype.name}; a scale is a float tensor")
        s = np.asarray(scale, np.float64).reshape(-1)
        if s.size == 0:
            raise ModelError(f"{node.label()}: {what} scale {sname!r} is empty")
        bad = ~np.isfinite(s) | (s <= 0)
        if bad.any():
            raise ModelError(f"{node.label()}: {what} scale {sname!r} holds "
                             f"{float(s[bad][0])!r}; a scale must be finite and > 0")
        s = s.astype(np.float32)
        if np.any(s == 0) or not np.isfinite(s).all():
            raise ModelError(f"{node.label()}: {what} scale {sname!r} is 0 or infinite "
                             "in float32; a scale must be finite and > 0")
        zp = self.const(node, zi, f"{what} zero point", required=False)
        zname = node.inputs[zi] if zi < len(node.inputs) else ""
        if zp is None:
            z = np.zeros(s.size, np.int64)
            signed = signed_default
        else:
            if zp.dtype.name not in zp_types:
                raise ModelError(f"{node.label()}: {what} zero point {zname!r} is "
                                 f"{zp.dtype.name}; expected {' or '.join(zp_types)}")
            signed = zp.dtype.name == "int8"
            z = np.asarray(zp, np.int64).reshape(-1)
            if z.size != s.size:
                raise ModelError(f"{node.label()}: {what} zero point {zname!r} has "
                                 f"{z.size} values and its scale {sname!r} {s.size}; "
                                 "they must match")
        if per_tensor and s.size != 1:
            raise UnsupportedError(f"{node.label()}: {what} scale {sname!r} has {s.size} "
                                   "values; only per-tensor quantization of activations "
                                   "is supported")
        if channels is not None and s.size not in (1, channels):
            raise ModelError(f"{node.label()}: {what} scale {sname!r} has {s.size} "
                             f"values; per-channel parameters need {channels} (one per "
                             "output channel) or 1")
        return s, z, z + (128 if signed else 0), signed

    def q_input(self, node, t, signed, what="input"):
        """Internal name of run-time quantized tensor t that `node` reads with a zero
        point of the given signedness."""
        if t in self.dq and t not in self.qt:
            raise ModelError(f"{node.label()}: {what} {t!r} is float (a DequantizeLinear "
                             "output); it reads a quantized tensor")
        if t not in self.qt:
            kind = self._elem_type(t)
            raise ModelError(f"{node.label()}: {what} {t!r} is {kind}; it must be a "
                             f"{'int8' if signed else 'uint8'} tensor")
        if self.qt[t] != signed:
            raise ModelError(f"{node.label()}: {what} {t!r} is "
                             f"{'int8' if self.qt[t] else 'uint8'} but its zero point is "
                             f"{'int8' if signed else 'uint8'}; they must agree")
        return self.held.get(t, t)

    def _elem_type(self, t):
        for v in self.g.inputs:
            if v.name == t:
                return v.elem_type
        return "float32"

    def emit(self, op, inputs, outputs, name, step=None):
        node = Node(name=name, op_type=op, domain=DOMAIN if step is not None else "",
                    inputs=inputs, outputs=outputs, attrs={"step": step} if step else {})
        self.nodes.append(node)
        for o in outputs:
            self.writer[o] = step
        return node

    def need_float(self, t):
        """Make run-time float tensor t exist: emit its pending Dequantize."""
        info = self.dq.get(t)
        if info is None or t in self.dq_done:
            return
        q, scale, zp_u8, node = info
        self.dq_done.add(t)
        self.emit("Dequantize", [q], [t], node.name,
                  S.DequantizeStep(node.name, q, t, scale, zp_u8))

    def _fold_float(self, t):
        q, scale, zp, axis = self.cdq[t]
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        with np.errstate(over="ignore", invalid="ignore"):
            value = (q.astype(np.float64) - zp.reshape(shape)).astype(np.float32) \
                * scale.reshape(shape)
        value = np.ascontiguousarray(value, np.float32)
        value.flags.writeable = False
        self.consts[t] = value

    def tail(self, t):
        """(activation node or None, QuantizeLinear node) when float tensor t goes only
        through an optional Relu / Clip into a per-tensor QuantizeLinear, else None."""
        act = None
        for _ in range(2):
            users = self.users.get(t, [])
            if t in self.outputs or len(users) != 1:
                return None
            u = users[0]
            if u.domain not in ("", "ai.onnx"):
                return None
            if u.op_type == "QuantizeLinear" and u.inputs[0] == t:
                sname = u.inputs[1] if len(u.inputs) > 1 else ""
                if self.consts.get(sname) is None or self.consts[sname].size != 1:
                    return None
                return act, u
            if act is None and u.op_type in ("Relu", "Clip") and u.inputs[0] == t:
                act, t = u, u.outputs[0]
                continue
            return None
        return None

    def clamp(self, act, scale, zp_u8):
        """(lo, hi) held-uint8 bounds of activation node `act` before a quantization."""
        if act is None:
            return 0, 255
        if act.op_type == "Relu":
            return zp_u8, 255
        lo, hi = -np.inf, np.inf
        if self.g.opset < 11:
            lo, hi = act.attrs.get("min", -np.inf), act.attrs.get("max", np.inf)
        else:
            for index in (1, 2):
                v = self.const(act, index, ("min", "max")[index - 1], required=False)
                if v is not None:
                    if v.size != 1:
                        raise ModelError(f"{act.label()}: bound has shape "
                                         f"{list(v.shape)}; Clip bounds are scalars")
                    if index == 1:
                        lo = float(v.reshape(-1)[0])
                    else:
                        hi = float(v.reshape(-1)[0])
        qlo = 0 if lo == -np.inf else _quantize_value(lo, scale, zp_u8)
        qhi = 255 if hi == np.inf else _quantize_value(hi, scale, zp_u8)
        return qlo, max(qlo, qhi)

    # -- walk ---------------------------------------------------------------------------
    def run(self):
        for v in self.g.inputs:
            if v.elem_type in _Q_DTYPES:
                self.qt[v.name] = _Q_DTYPES[v.elem_type]
                if self.qt[v.name]:
                    self.held[v.name] = f"{v.name}::u8"
                    self.emit("Edge", [v.name], [self.held[v.name]], v.name,
                              S.EdgeStep(v.name, v.name, self.held[v.name], False))
        for node in self.order:
            if id(node) in self.consumed:
                continue
            handler = getattr(self, f"on_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx") and not (
                    node.domain == MS_DOMAIN and node.op_type == "QLinearAdd"):
                handler = None
            (handler or self.on_default)(node)
        for m in self.deferred:
            if id(m) not in self.consumed:
                raise UnsupportedError(f"{m.label()}: reads the scale of a "
                                       "DynamicQuantizeLinear outside the "
                                       "quantize_dynamic ConvInteger pattern; not "
                                       "supported")
        self._outputs()
        graph = Graph(nodes=self.nodes, inputs=self.g.inputs, outputs=self.g.outputs,
                      constants=self.consts, value_info=self.g.value_info,
                      opset=self.g.opset, name=self.g.name, producer=self.g.producer,
                      metadata=self.g.metadata)
        return graph, self.notes

    def _outputs(self):
        for v in self.g.outputs:
            t = v.name
            self.need_float(t)
            if t in self.dyn:
                raise UnsupportedError(f"graph output {t!r} is a DynamicQuantizeLinear "
                                       "result; not supported")
            if t not in self.qt:
                if v.elem_type in _Q_DTYPES and t not in self.consts:
                    raise ModelError(f"graph output {t!r} is declared {v.elem_type} but "
                                     "computed in float32")
                continue
            signed = self.qt[t]
            if v.elem_type not in _Q_DTYPES or _Q_DTYPES[v.elem_type] != signed:
                raise ModelError(f"graph output {t!r} is declared {v.elem_type}; the "
                                 f"model computes it as {'int8' if signed else 'uint8'}")
            if self.held.get(t, t) != t:  # Q(DQ(q)): the output is q itself
                held = self.held[t]
                step = S.EdgeStep(t, held, t, True) if signed else CopyStep(t, held, t)
                self.emit("Edge" if signed else "Copy", [held], [t], t, step)
            elif signed:
                held = f"{t}::u8"  # the steps write and read uint8 values under it
                for i, n in enumerate(self.nodes):
                    if t not in n.outputs and t not in n.inputs:
                        continue
                    step = n.attrs["step"]  # (only quantized steps touch int8 tensors)
                    if t in n.outputs:
                        step.output = held
                    step.rename_read(t, held)
                    swap = lambda names: [held if x == t else x for x in names]  # noqa
                    self.nodes[i] = Node(n.name, n.op_type, n.domain, swap(n.inputs),
                                         swap(n.outputs), n.attrs)
                self.emit("Edge", [held], [t], t, S.EdgeStep(t, held, t, True))

    def on_default(self, node):
        inputs = []
        for t in node.inputs:
            if t in self.qt:
                raise UnsupportedError(f"{node.label()}: reads quantized tensor {t!r}; "
                                       "only quantized Conv and Add and DequantizeLinear "
                                       "read int8 tensors here")
            if t in self.dyn:
                raise UnsupportedError(f"{node.label()}: reads {t!r}, a "
                                       "DynamicQuantizeLinear result, outside the "
                                       "quantize_dynamic ConvInteger pattern")
            if t in self.cdq and t not in self.consts:
                self._fold_float(t)
            self.need_float(t)
            inputs.append(t)
        self.nodes.append(node)

    # -- constants ----------------------------------------------------------------------
    def on_Reshape(self, node):
        known = [t in self.consts or t in self.cdq for t in node.inputs if t]
        if known and all(known):
            data = self.const(node, 0, "data")
            shape = self.const(node, 1, "shape")
            try:
                self.consts[node.outputs[0]] = np.ascontiguousarray(
                    data.reshape([int(d) if d else data.shape[i] for i, d in
                                  enumerate(shape.reshape(-1))]))
            except (ValueError, IndexError) as exc:
                raise ModelError(f"{node.label()}: cannot reshape {list(data.shape)} to "
                                 f"{shape.reshape(-1).tolist()}: {exc}") from None
            return
        self.on_default(node)

    # -- QDQ and QOperator edges --------------------------------------------------------
    def on_DequantizeLinear(self, node):
        t = node.inputs[0] if node.inputs else ""
        out = node.outputs[0]
        axis = int(node.attrs.get("axis", 1))
        if node.attrs.get("block_size"):
            raise UnsupportedError(f"{node.label()}: blocked quantization (block_size="
                                   f"{node.attrs['block_size']}) is not supported")
        if t in self.consts:
            q = self.consts[t]
            if q.dtype.name not in ("uint8", "int8", "int32"):
                raise ModelError(f"{node.label()}: input {t!r} is {q.dtype.name}; "
                                 "DequantizeLinear reads uint8, int8 or int32")
            if axis < 0:
                axis += q.ndim
            channels = q.shape[axis] if 0 <= axis < q.ndim else None
            s, z, _, _ = self.params(node, 1, 2, "input", channels=channels,
                                     zp_types=(q.dtype.name,),
                                     signed_default=q.dtype.name == "int8")
            if s.size > 1 and channels is None:
                raise ModelError(f"{node.label()}: axis {axis} is outside input {t!r} of "
                                 f"shape {list(q.shape)}")
            self.cdq[out] = (q, s, z, axis)
            return
        if t in self.qt:
            s, _, zu, signed = self.params(node, 1, 2, "input", per_tensor=True)
            q = self.q_input(node, t, signed)
            self.dq[out] = (q, float(s[0]), int(zu[0]), node)
            if out in self.outputs:
                self.need_float(out)
            return
        raise UnsupportedError(f"{node.label()}: input {t!r} is computed at run time "
                               f"as {self._elem_type(t)}; only int8 and uint8 run-time "
                               "tensors are dequantized")

    def on_QuantizeLinear(self, node):
        x = node.inputs[0] if node.inputs else ""
        out = node.outputs[0]
        if x in self.consts or x in self.cdq:
            data = self.const(node, 0, "input")
            axis = int(node.attrs.get("axis", 1))
            axis = axis + data.ndim if axis < 0 else axis
            channels = data.shape[axis] if 0 <= axis < data.ndim else None
            s, z, zu, signed = self.params(node, 1, 2, "output", channels=channels)
            shape = [1] * data.ndim
            if s.size > 1:
                shape[axis] = s.size
            with np.errstate(all="ignore"):
                v = np.rint(np.asarray(data, np.float32) / s.reshape(shape))
            q = np.clip(v + zu.reshape(shape), 0, 255) - (128 if signed else 0)
            self.consts[out] = q.astype(np.int8 if signed else np.uint8)
            return
        if x in self.qt:
            raise ModelError(f"{node.label()}: input {x!r} is already quantized; "
                             "QuantizeLinear reads float")
        s, _, zu, signed = self.params(node, 1, 2, "output", per_tensor=True)
        info = self.dq.get(x)
        if info is not None and x not in self.dq_done and info[1] == float(s[0]) \
                and info[2] == int(zu[0]) and self.qt.get(info[0], None) == signed:
            self.held[out] = info[0]  # Q(DQ(q)) with the same parameters: q itself
            self.qt[out] = signed
            return
        self.need_float(x)
        self.qt[out] = signed
        self.emit("Quantize", [x], [out], node.name,
                  S.QuantizeStep(node.name, x, out, float(s[0]), int(zu[0])))

    # -- convolutions -------------------------------------------------------------------
    def _geometry(self, node, w):
        """(strides, pads) as 2-D (1-D convs run as [N, C, 1, L]); _Fallback when this
        conv is not a plain 1x1 over groups of one."""
        attrs = node.attrs
        spatial = w.ndim - 2
        if spatial not in (1, 2) or any(k != 1 for k in w.shape[2:]):
            raise _Fallback(f"weight {list(w.shape)}")
        if int(attrs.get("group", 1)) != 1:
            raise _Fallback(f"group={attrs.get('group')}")
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            raise _Fallback(f"auto_pad={auto_pad}")
        strides = tuple(attrs.get("strides") or (1,) * spatial)
        pads = tuple(attrs.get("pads") or (0,) * (2 * spatial))
        if auto_pad == "VALID":
            pads = (0,) * (2 * spatial)
        if len(strides) != spatial or len(pads) != 2 * spatial or min(strides) < 1 \
                or min(pads) < 0:
            raise _Fallback(f"strides {list(strides)} / pads {list(pads)}")
        if spatial == 1:
            return (1, strides[0]), (0, pads[0], 0, pads[1]), 1
        return strides, (pads[0], pads[1], pads[2], pads[3]), 2

    def _layer(self, node, xs, xz_u8, w, ws, wz, bias_q, bias_scale, y, act):
        """A QConvLayer. w: weight array; ws / wz: its per-channel (or one) scale and
        stored zero point; bias_q: int32 [cout] with scale bias_scale (None: scale
        xs * ws), or None; y: (scale, zp_u8) of a quantized output or None (float)."""
        strides, pads, rank = self._geometry(node, w)
        cout = w.shape[0]
        wq = w.reshape(cout, -1)
        wz = np.broadcast_to(wz.reshape(-1), (cout,))
        if wq.dtype == np.int8 and not wz.any():
            w_eff = wq  # as it is (s8 weights, symmetric)
        else:  # 8-bit weights and zero points differ by at most 255: int16 holds it
            narrow = (wq.dtype.itemsize == 1 and wz.size
                      and -256 <= wz.min() and wz.max() <= 255)
            wide = np.int16 if narrow else np.int64
            w_eff = wq.astype(wide) - wz.astype(wide)[:, None]
            if w_eff.size and (w_eff.min() < -128 or w_eff.max() > 127):
                raise _Fallback("its weight minus the weight zero point leaves int8")
        ws = np.broadcast_to(ws.reshape(-1), (cout,)).astype(np.float32)
        acc_scale = (_f32(xs) * ws).astype(np.float32)
        if bias_q is None:
            b = np.zeros(cout, np.int64)
        elif bias_scale is None or np.allclose(bias_scale, acc_scale, rtol=1e-6, atol=0):
            b = np.asarray(bias_q, np.int64).reshape(cout)
        else:
            b = np.rint(np.asarray(bias_q, np.float64) * bias_scale / acc_scale)
            if not np.isfinite(b).all() or np.abs(b).max(initial=0) > 2 ** 31 - 1:
                raise _Fallback("its bias does not fit int32 at the input x weight scale")
            b = b.astype(np.int64)
            self.notes.append(f"{node.label()}: bias scale differs from input x weight "
                              "scale; bias requantized to it")
        bias = b - int(xz_u8) * w_eff.sum(axis=1, dtype=np.int64)
        if np.abs(bias).max(initial=0) > 2 ** 31 - 1:
            raise _Fallback("its bias with the input zero point leaves int32")
        name = [node.name] + ([act.name] if act is not None else [])
        if y is None:
            return S.QConvLayer(name, w_eff, bias, acc_scale, out_float=True,
                                strides=strides, pads=pads, in_zp=xz_u8,
                                spatial_rank=rank)
        ys, yz_u8 = y
        scale = (acc_scale / _f32(ys)).astype(np.float32)
        lo, hi = self.clamp(act, ys, yz_u8)
        return S.QConvLayer(name, w_eff, bias, scale, yz_u8, lo, hi, strides=strides,
                            pads=pads, in_zp=xz_u8, spatial_rank=rank)

    def _qconv(self, node, xq, layer, out):
        step = S.QChainStep(xq, out, [layer])
        self.emit("QConv", [xq], [out], node.name, step)

    def _float_conv(self, node, x, w_float, b_float, out, why, q_out):
        """Run a quantized conv in float32: x float, weights dequantized, then the
        output quantization q_out = (scale, zp_u8)."""
        wname, bname = f"{node.name}::weight", f"{node.name}::bias"
        self.consts[wname] = w_float
        inputs = [x, wname]
        if b_float is not None:
            self.consts[bname] = b_float
            inputs.append(bname)
        attrs = {k: v for k, v in node.attrs.items()
                 if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads",
                          "strides")}
        mid = f"{node.name}::float"
        self.nodes.append(Node(node.name, "Conv", "", inputs, [mid], attrs))
        self.emit("Quantize", [mid], [out], node.name,
                  S.QuantizeStep(node.name, mid, out, q_out[0], q_out[1]))
        self.notes.append(f"{node.label()} runs in float32 (dequantized weights): {why}")

    def on_Conv(self, node):
        x = node.inputs[0]
        w = node.inputs[1] if len(node.inputs) > 1 else ""
        b = node.inputs[2] if len(node.inputs) > 2 else ""
        xinfo, winfo = self.dq.get(x), self.cdq.get(w)
        if winfo is None or xinfo is None:
            if winfo is not None and xinfo is None:
                self.notes.append(f"{node.label()} runs in float32 (dequantized weights):"
                                  " its input is not quantized")
            return self.on_default(node)
        wq, ws, wz, axis = winfo
        if ws.size > 1 and axis != 0:
            self.notes.append(f"{node.label()} runs in float32: its weight is quantized "
                              f"along axis {axis}, not per output channel")
            return self.on_default(node)
        if wq.dtype.name == "int32":
            return self.on_default(node)
        xq, xs, xz_u8, _ = xinfo
        bias_q = bias_scale = b_float = None
        if b:
            if b in self.cdq and self.cdq[b][0].dtype.name == "int32":
                bq, bs, bz, _ = self.cdq[b]
                if np.any(bz):
                    return self.on_default(node)
                bias_q, bias_scale = bq.reshape(-1), np.broadcast_to(
                    bs, (wq.shape[0],)).astype(np.float64)
            else:
                b_float = self.const(node, 2, "bias")
                if b_float.dtype.kind != "f":
                    return self.on_default(node)
                bias_q, bias_scale = np.asarray(b_float, np.float64).reshape(-1), 1.0
            if bias_q.size != wq.shape[0]:
                raise ModelError(f"{node.label()}: bias {b!r} has {bias_q.size} values; "
                                 f"the weight has {wq.shape[0]} output channels")
        tail = self.tail(node.outputs[0])
        y = act = None
        out = node.outputs[0]
        if tail is not None:
            act, qnode = tail
            s, _, zu, signed = self.params(qnode, 1, 2, "output", per_tensor=True)
            y = (float(s[0]), int(zu[0]))
        try:
            layer = self._layer(node, xs, xz_u8, wq, ws, wz, bias_q, bias_scale, y, act)
        except _Fallback as why:
            self.notes.append(f"{node.label()} runs in float32 (dequantized weights): "
                              f"{why}")
            return self.on_default(node)
        if tail is not None:
            self.consumed.update(id(n) for n in tail if n is not None)
            out = qnode.outputs[0]
            self.qt[out] = signed
        self._qconv(node, xq, layer, out)

    def on_QLinearConv(self, node):
        if len(node.inputs) not in (8, 9):
            raise ModelError(f"{node.label()}: {len(node.inputs)} inputs; QLinearConv "
                             "takes 8 or 9")
        w = self.const(node, 3, "weight")
        if w.dtype.name not in _Q_DTYPES:
            raise ModelError(f"{node.label()}: weight {node.inputs[3]!r} is "
                             f"{w.dtype.name}; expected int8 or uint8")
        if w.ndim < 3:
            raise ModelError(f"{node.label()}: weight has shape {list(w.shape)}; Conv "
                             "needs [M, C/group, kH, kW]")
        cout = w.shape[0]
        xs, _, xz_u8, xsigned = self.params(node, 1, 2, "x", per_tensor=True)
        ws, wz, _, _ = self.params(node, 4, 5, "w", channels=cout,
                                   zp_types=(w.dtype.name,))
        ys, _, yz_u8, ysigned = self.params(node, 6, 7, "y", per_tensor=True)
        x = self.q_input(node, node.inputs[0], xsigned, "x")
        bias = self.const(node, 8, "bias", required=False)
        if bias is not None:
            if bias.dtype.name != "int32":
                raise ModelError(f"{node.label()}: bias {node.inputs[8]!r} is "
                                 f"{bias.dtype.name}; QLinearConv's bias is int32")
            if bias.size != cout:
                raise ModelError(f"{node.label()}: bias {node.inputs[8]!r} has "
                                 f"{bias.size} values; the weight has {cout} output "
                                 "channels")
            bias = bias.reshape(-1)
        out = node.outputs[0]
        self.qt[out] = ysigned
        try:
            layer = self._layer(node, float(xs[0]), int(xz_u8[0]), w, ws, wz, bias, None,
                                (float(ys[0]), int(yz_u8[0])), None)
        except _Fallback as why:
            xf = f"{node.name}::x"
            self.emit("Dequantize", [x], [xf], node.name,
                      S.DequantizeStep(node.name, x, xf, float(xs[0]), int(xz_u8[0])))
            shape = [cout] + [1] * (w.ndim - 1)
            wz = np.broadcast_to(wz.reshape(-1), (cout,)).reshape(shape)
            ws = np.broadcast_to(ws.reshape(-1), (cout,)).astype(np.float32)
            w_float = ((w.astype(np.float64) - wz).astype(np.float32)
                       * ws.reshape(shape)).astype(np.float32)
            b_float = None if bias is None else (
                bias.astype(np.float32) * (_f32(xs[0]) * ws)).astype(np.float32)
            self._float_conv(node, xf, w_float, b_float, out, why,
                             q_out=(float(ys[0]), int(yz_u8[0])))
            return
        self._qconv(node, x, layer, out)

    # -- adds ---------------------------------------------------------------------------
    def on_Add(self, node):
        a, b = (list(node.inputs) + ["", ""])[:2]
        ia, ib = self.dq.get(a), self.dq.get(b)
        tail = self.tail(node.outputs[0]) if ia and ib else None
        if tail is None:
            return self.on_default(node)
        act, qnode = tail
        s, _, zu, signed = self.params(qnode, 1, 2, "output", per_tensor=True)
        lo, hi = self.clamp(act, float(s[0]), int(zu[0]))
        out = qnode.outputs[0]
        self.consumed.update(id(n) for n in tail if n is not None)
        self.qt[out] = signed
        name = node.name + (f"+{act.name}" if act is not None else "")
        self.emit("QAdd", [ia[0], ib[0]], [out], name,
                  S.QAddStep(name, ia[0], ib[0], out, ia[2], ia[1], ib[2], ib[1],
                             int(zu[0]), float(s[0]), lo, hi))

    def on_QLinearAdd(self, node):
        if len(node.inputs) not in (7, 8):
            raise ModelError(f"{node.label()}: {len(node.inputs)} inputs; QLinearAdd "
                             "takes 7 or 8")
        sa, _, za, asigned = self.params(node, 1, 2, "A", per_tensor=True)
        sb, _, zb, bsigned = self.params(node, 4, 5, "B", per_tensor=True)
        sc, _, zc, csigned = self.params(node, 6, 7, "C", per_tensor=True)
        a = self.q_input(node, node.inputs[0], asigned, "A")
        b = self.q_input(node, node.inputs[3], bsigned, "B")
        out = node.outputs[0]
        self.qt[out] = csigned
        self.emit("QAdd", [a, b], [out], node.name,
                  S.QAddStep(node.name, a, b, out, int(za[0]), float(sa[0]), int(zb[0]),
                             float(sb[0]), int(zc[0]), float(sc[0])))

    # -- quantize_dynamic ----------------------------------------------------------------
    def on_DynamicQuantizeLinear(self, node):
        if len(node.outputs) != 3:
            raise ModelError(f"{node.label()}: {len(node.outputs)} outputs; "
                             "DynamicQuantizeLinear has 3")
        for i, o in enumerate(node.outputs):
            if o:
                self.dyn[o] = (node, i)

    def on_Mul(self, node):
        if any(t in self.dyn for t in node.inputs):
            self.deferred.append(node)  # claimed by on_ConvInteger, or refused at the end
            return
        self.on_default(node)

    def _only_user(self, t, op):
        users = self.users.get(t, [])
        if t in self.outputs or len(users) != 1 or users[0].op_type != op \
                or users[0].domain not in ("", "ai.onnx"):
            return None
        return users[0]

    def on_ConvInteger(self, node):
        refuse = UnsupportedError(
            f"{node.label()}: only quantize_dynamic's DynamicQuantizeLinear -> "
            "ConvInteger -> Cast -> Mul(x_scale * w_scale) [-> Add(bias)] pattern runs")
        ins = list(node.inputs) + [""] * 4
        x, w, xz, wzn = ins[:4]
        src = self.dyn.get(x)
        if src is None or src[1] != 0 or self.dyn.get(xz, (None, -1))[0] is not src[0] \
                or self.dyn[xz][1] != 2:
            raise refuse
        dql = src[0]
        cast = self._only_user(node.outputs[0], "Cast")
        if cast is None or int(cast.attrs.get("to", 0)) != 1:
            raise refuse
        mul = self._only_user(cast.outputs[0], "Mul")
        if mul is None:
            raise refuse
        other = mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0]
        smul = self.producer.get(other)
        if smul is None or smul.op_type != "Mul" or len(self.users.get(other, [])) != 1:
            raise refuse
        xs_name = dql.outputs[1]
        if xs_name not in smul.inputs:
            raise refuse
        wsi = 1 if smul.inputs[0] == xs_name else 0
        wq = self.const(node, 1, "weight")
        if wq.dtype.name not in _Q_DTYPES or wq.ndim < 3:
            raise ModelError(f"{node.label()}: weight {w!r} is {wq.dtype.name} "
                             f"{list(wq.shape)}; expected an int8 or uint8 conv weight")
        cout = wq.shape[0]
        ws = self.const(smul, wsi, "weight scale")
        if ws.dtype.kind != "f" or ws.size not in (1, cout) or \
                not (np.isfinite(ws).all() and (np.asarray(ws) > 0).all()):
            raise ModelError(f"{smul.label()}: weight scale {smul.inputs[wsi]!r} must be "
                             f"1 or {cout} finite values > 0")
        wz = self.const(node, 3, "weight zero point", required=False)
        if wz is None:
            wz = np.zeros(1, np.int64)
        elif wz.dtype != wq.dtype or wz.size not in (1, cout):
            raise ModelError(f"{node.label()}: weight zero point {wzn!r} is "
                             f"{wz.dtype.name} with {wz.size} values; expected "
                             f"{wq.dtype.name}, 1 or {cout} values")
        add = self._only_user(mul.outputs[0], "Add")
        fbias, out = None, mul.outputs[0]
        if add is not None:
            bname = add.inputs[1] if add.inputs[0] == mul.outputs[0] else add.inputs[0]
            bias = self.consts.get(bname)
            if bias is not None and bias.dtype.kind == "f" and bias.size == cout and \
                    all(d == 1 for i, d in enumerate(bias.shape) if i != bias.ndim - 3):
                fbias, out = np.asarray(bias, np.float32).reshape(cout), add.outputs[0]
            else:
                add = None
        try:
            strides, pads, rank = self._geometry(node, wq)
        except _Fallback as why:
            raise UnsupportedError(f"{node.label()}: {why}; not supported") from None
        w_eff = wq.reshape(cout, -1).astype(np.int64) - np.asarray(
            wz, np.int64).reshape(-1)[:, None]
        wide = None
        if w_eff.size and (w_eff.min() < -128 or w_eff.max() > 127):
            wide, w_eff = w_eff.astype(np.int16), np.zeros(w_eff.shape, np.int8)
            self.notes.append(f"{node.label()}: its weight minus the weight zero point "
                              "leaves int8 (uint8 weights); it runs in numpy integers")
        names = [node.name, cast.name, mul.name] + ([add.name] if add else [])
        layer = S.QConvLayer(names, w_eff, np.zeros(cout, np.int32),
                             np.ones(cout, np.float32), fbias=fbias, out_float=True,
                             strides=strides, pads=pads, spatial_rank=rank)
        wscale = np.broadcast_to(np.asarray(ws, np.float32).reshape(-1), (cout,))
        self.consumed.update(id(n) for n in (cast, mul, smul, add) if n is not None)
        src_x = dql.inputs[0]
        self.need_float(src_x)
        self.emit("DynQConv", [src_x], [out], node.name,
                  S.DynQConvStep(layer, src_x, out, wscale, wide))

    def on_Relu(self, node):
        """DequantizeLinear -> Relu / Clip -> QuantizeLinear: a clamp in integers (folded
        into the producing int8 conv when the two quantizations are the same)."""
        x = node.inputs[0] if node.inputs else ""
        info = self.dq.get(x)
        tail = self.tail(x) if info is not None and x not in self.dq_done else None
        if tail is None or tail[0] is not node:
            return self.on_default(node)
        qnode = tail[1]
        q, si, zi, _ = info
        s, _, zu, signed = self.params(qnode, 1, 2, "output", per_tensor=True)
        so, zo = float(s[0]), int(zu[0])
        lo, hi = self.clamp(node, so, zo)
        out = qnode.outputs[0]
        self.consumed.add(id(qnode))
        self.qt[out] = signed
        producer = self.writer.get(q)
        if producer is not None and (si, zi) == (so, zo) and \
                len(self.users.get(q, [])) == 1 and q not in self.held.values() and \
                q not in self.outputs and isinstance(producer, S.QChainStep):
            last = producer.qlayers[-1]
            last.lo, last.hi = max(last.lo, lo), min(last.hi, hi)
            last.names.append(node.name)
            self.held[out] = q
            self.notes.append(f"{node.label()} folded into the clamp of int8 conv "
                              f"{last.names[0]}")
            return
        name = node.name
        self.emit("QAct", [q], [out], name, S.QActStep(name, q, out, zi, si, zo, so,
                                                        lo, max(lo, hi)))

    on_Clip = on_Relu

    def on_Cast(self, node):
        self.on_default(node)

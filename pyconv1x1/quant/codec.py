"""Plan-file (.pc1) records of the quantized steps: int8 weights, int32 biases,
float32 scales and the zero points / clamps, every field checked on load."""
import numpy as np

from ..errors import ModelError
from ..program import CopyStep  # noqa: F401  (a quantized model's uint8 output copy)
from . import steps as S

KINDS = ("qchain", "quantize", "dequantize", "qedge", "qadd", "qact", "qdynconv")


def _layer_record(layer, add):
    return {"names": list(layer.names), "w": add(layer.w), "bias": add(layer.bias),
            "scale": add(layer.scale), "zp_out": layer.zp_out, "lo": layer.lo,
            "hi": layer.hi, "fbias": add(layer.fbias), "out_float": layer.out_float,
            "strides": list(layer.strides), "pads": list(layer.pads),
            "in_zp": layer.in_zp, "spatial_rank": layer.spatial_rank}


def _pair(p):
    return None if p is None else [float(p[0]), int(p[1])]


def record(step, add):
    """The JSON record of a quantized step (arrays through `add`), or None."""
    if isinstance(step, S.QChainStep):
        return {"type": "qchain", "input": step.input, "output": step.output,
                "in_q": _pair(step.in_q), "out_dq": _pair(step.out_dq),
                "layers": [_layer_record(l, add) for l in step.layers]}
    if isinstance(step, (S.QuantizeStep, S.DequantizeStep)):
        kind = "quantize" if isinstance(step, S.QuantizeStep) else "dequantize"
        return {"type": kind, "name": step.name, "input": step.input,
                "output": step.output, "scale": step.scale, "zp": step.zp}
    if isinstance(step, S.EdgeStep):
        return {"type": "qedge", "name": step.name, "input": step.input,
                "output": step.output, "to_signed": step.to_signed}
    if isinstance(step, S.QAddStep):
        return {"type": "qadd", "name": step.name, "a": step.a, "b": step.b,
                "output": step.output, **{k: getattr(step, k) for k in
                                          ("za", "sa", "zb", "sb", "zc", "sc", "lo", "hi")}}
    if isinstance(step, S.QActStep):
        return {"type": "qact", "name": step.name, "input": step.input,
                "output": step.output, **{k: getattr(step, k) for k in
                                          ("zi", "si", "zo", "so", "lo", "hi")}}
    if isinstance(step, S.DynQConvStep):
        return {"type": "qdynconv", "input": step.input, "output": step.output,
                "layer": _layer_record(step.layer, add), "wscale": add(step.wscale),
                "wide": add(step.wide)}
    return None


def load(s, arr, what, pf):
    """The quantized step of record `s`; `arr(index, what, dtype)` reads an array and
    `pf` is the planfile module (its typed field readers)."""
    kind = pf._field(s, "type", what)
    name = lambda key: pf._name(pf._field(s, key, what), f"{what} {key}")  # noqa: E731
    zp = lambda v, w: pf._int(v, w, 0, 255)  # noqa: E731
    if kind == "qchain":
        layers = [_layer(l, arr, f"{what} layer {i}", pf) for i, l in
                  enumerate(pf._list(pf._field(s, "layers", what), f"{what} layers"))]
        if not layers:
            raise ModelError(f"{what}: int8 chain without layers")
        for i in range(1, len(layers)):
            if layers[i].cin != layers[i - 1].cout or not layers[i].keeps_pixels \
                    or layers[i - 1].out_float:
                raise ModelError(f"{what}: layer {i} does not chain")
        return S.QChainStep(name("input"), name("output"), layers,
                            _q_pair(pf._field(s, "in_q", what), f"{what} in_q", pf),
                            _q_pair(pf._field(s, "out_dq", what), f"{what} out_dq", pf))
    if kind in ("quantize", "dequantize"):
        cls = S.QuantizeStep if kind == "quantize" else S.DequantizeStep
        return cls(name("name"), name("input"), name("output"),
                   _scale(pf._field(s, "scale", what), f"{what} scale", pf),
                   zp(pf._field(s, "zp", what), f"{what} zp"))
    if kind == "qedge":
        flag = pf._field(s, "to_signed", what)
        if not isinstance(flag, bool):
            raise ModelError(f"{what}: to_signed is {pf._show(flag)}; expected a boolean")
        return S.EdgeStep(name("name"), name("input"), name("output"), flag)
    if kind == "qadd":
        get = lambda k: pf._field(s, k, what)  # noqa: E731
        return S.QAddStep(name("name"), name("a"), name("b"), name("output"),
                          zp(get("za"), f"{what} za"), _scale(get("sa"), f"{what} sa", pf),
                          zp(get("zb"), f"{what} zb"), _scale(get("sb"), f"{what} sb", pf),
                          zp(get("zc"), f"{what} zc"), _scale(get("sc"), f"{what} sc", pf),
                          zp(get("lo"), f"{what} lo"), zp(get("hi"), f"{what} hi"))
    if kind == "qact":
        get = lambda k: pf._field(s, k, what)  # noqa: E731
        return S.QActStep(name("name"), name("input"), name("output"),
                          zp(get("zi"), f"{what} zi"), _scale(get("si"), f"{what} si", pf),
                          zp(get("zo"), f"{what} zo"), _scale(get("so"), f"{what} so", pf),
                          zp(get("lo"), f"{what} lo"), zp(get("hi"), f"{what} hi"))
    if kind == "qdynconv":
        layer = _layer(pf._field(s, "layer", what), arr, f"{what} layer", pf)
        wscale = arr(pf._field(s, "wscale", what), f"{what} wscale", "float32")
        if wscale is None or wscale.shape != (layer.cout,):
            raise ModelError(f"{what}: wscale does not match {layer.cout} channels")
        wide = arr(s.get("wide"), f"{what} wide", "int16")
        if wide is not None and wide.shape != layer.w.shape:
            raise ModelError(f"{what}: wide weight does not match {list(layer.w.shape)}")
        return S.DynQConvStep(layer, name("input"), name("output"), wscale, wide)
    return None


def _scale(v, what, pf):
    v = pf._num(v, what)
    if not (np.isfinite(v) and v > 0):
        raise ModelError(f"{what} is {v}; a scale must be finite and > 0")
    return v


def _q_pair(v, what, pf):
    if v is None:
        return None
    v = pf._list(v, what)
    if len(v) != 2:
        raise ModelError(f"{what} has {len(v)} values; expected [scale, zero point]")
    return (_scale(v[0], f"{what} scale", pf), pf._int(v[1], f"{what} zero point", 0, 255))


def _layer(l, arr, what, pf):
    get = lambda key: pf._field(l, key, what)  # noqa: E731
    names = [pf._name(n, f"{what} name") for n in pf._list(get("names"), f"{what} names")]
    if not names:
        raise ModelError(f"{what} has no names")
    w = arr(get("w"), f"{what} w", "int8")
    if w is None or w.ndim != 2 or 0 in w.shape:
        raise ModelError(f"{what}: weight must be a non-empty [cout, cin] int8 array")
    cout = w.shape[0]
    vec = {}
    for key, dtype in (("bias", "int32"), ("scale", "float32"), ("fbias", "float32")):
        a = arr(get(key), f"{what} {key}", dtype)
        if a is not None and a.shape != (cout,):
            raise ModelError(f"{what}: {key} has shape {list(a.shape)}; expected [{cout}]")
        vec[key] = a
    if vec["bias"] is None or vec["scale"] is None:
        raise ModelError(f"{what}: bias and scale are required")
    if not (np.isfinite(vec["scale"]).all() and (vec["scale"] > 0).all()):
        raise ModelError(f"{what}: scales must be finite and > 0")
    out_float = get("out_float")
    if not isinstance(out_float, bool):
        raise ModelError(f"{what}: out_float is {pf._show(out_float)}; expected a boolean")
    ints = lambda key, n: tuple(  # noqa: E731
        pf._int(x, f"{what} {key}", 0, 1 << 20) for x in pf._list(get(key), f"{what} {key}"))
    strides, pads = ints("strides", 2), ints("pads", 4)
    if len(strides) != 2 or len(pads) != 4 or min(strides) < 1:
        raise ModelError(f"{what}: bad strides / pads")
    u8 = lambda key: pf._int(get(key), f"{what} {key}", 0, 255)  # noqa: E731
    lo, hi = u8("lo"), u8("hi")
    if lo > hi:
        raise ModelError(f"{what}: clamp {lo}..{hi} is empty")
    return S.QConvLayer(names, w, vec["bias"], vec["scale"], u8("zp_out"), lo, hi,
                        vec["fbias"], out_float, strides, pads, u8("in_zp"),
                        pf._int(get("spatial_rank"), f"{what} spatial_rank", 1, 2))

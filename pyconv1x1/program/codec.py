"""Typed access to plan-file header fields (see planfile.py): every JSON value is
checked before it is used, and a bad one is a ModelError naming the field. Shared by
the plan-file reader and the step kinds' decoders."""
import math

from ..errors import ModelError


def field(obj, key, what):
    if not isinstance(obj, dict):
        raise ModelError(f"{what} is {show(obj)}; expected a JSON object")
    if key not in obj:
        raise ModelError(f"{what} has no field {key!r}")
    return obj[key]


def integer(x, what, lo=0, hi=1 << 62):
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise ModelError(f"{what} is {show(x)}; expected an integer in [{lo}, {hi}]")
    return x


def flag(obj, key, what):
    """An optional boolean field: False when absent (older plans lack it)."""
    x = obj.get(key, False) if isinstance(obj, dict) else field(obj, key, what)
    if not isinstance(x, bool):
        raise ModelError(f"{what} field {key!r} is {show(x)}; expected true or false")
    return x


def json_list(x, what):
    if not isinstance(x, list):
        raise ModelError(f"{what} is {show(x)}; expected a JSON list")
    return x


def string(x, what):
    if not isinstance(x, str):
        raise ModelError(f"{what} is {show(x)}; expected a string")
    return x


def name(x, what="plan tensor name"):
    if not isinstance(x, str) or not x:
        raise ModelError(f"{what} is {show(x)}; expected a non-empty string")
    return x


def layer_names(obj, what):
    """A layer's non-empty list of node names (field "names")."""
    names = [name(n, f"{what} name") for n in json_list(field(obj, "names", what),
                                                          f"{what} names")]
    if not names:
        raise ModelError(f"{what} has no names")
    return names


def show(x):
    """A header value for an error message: short, whatever its size or depth."""
    if isinstance(x, (dict, list)):
        return f"a JSON {'object' if isinstance(x, dict) else 'list'} of {len(x)} items"
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def number(x, what):
    if x in ("inf", "-inf"):
        return float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) \
            or not math.isfinite(float(x)):
        raise ModelError(f"{what} is {show(x)}; expected a finite number, 'inf' or '-inf'")
    return float(x)


def encode_number(x):
    return "inf" if x == math.inf else "-inf" if x == -math.inf else float(x)


def vector(a):
    if a is not None and a.ndim != 1:
        raise ModelError(f"plan per-channel vector has shape {list(a.shape)}")
    return a

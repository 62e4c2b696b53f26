"""The parsed model: small immutable records, free of protobuf. The parser builds them;
every later stage (check, rewrite, plan) reads only these. (Plain classes with
__slots__: dataclasses cost ~15 ms of import time, which a session pays on creation.)"""
from typing import Optional, Tuple, Union

Dim = Union[int, str, None]  # static size, named (symbolic) dim, or unknown


class _Record:
    """Immutable, compared and printed by its fields (the ones in __slots__)."""
    __slots__ = ()

    def _values(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setattr__(self, key, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _init(self, **values):
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __eq__(self, other):
        return type(self) is type(other) and self._values() == other._values()

    def __hash__(self):
        return hash((type(self).__name__,) + tuple(
            v if isinstance(v, (str, int, float, tuple, type(None))) else id(v)
            for v in self._values()))

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({args})"


class ValueInfo(_Record):
    __slots__ = ("name", "elem_type", "shape")

    def __init__(self, name: str, elem_type: str, shape: Optional[Tuple[Dim, ...]]):
        # elem_type: numpy dtype name, e.g. 'float32'; shape None: rank unknown
        self._init(name=name, elem_type=elem_type, shape=shape)


class Node(_Record):
    __slots__ = ("name", "op_type", "domain", "inputs", "outputs", "attrs")

    def __init__(self, name, op_type, domain, inputs, outputs, attrs=None):
        # inputs: '' marks an omitted optional input
        self._init(name=name, op_type=op_type, domain=domain, inputs=tuple(inputs),
                   outputs=tuple(outputs), attrs=dict(attrs or {}))

    def label(self):
        """How error messages name the node: op and name."""
        return f"{self.op_type} '{self.name}'"


class Graph(_Record):
    __slots__ = ("nodes", "inputs", "outputs", "constants", "value_info", "opset", "name",
                 "producer", "metadata")

    def __init__(self, nodes, inputs, outputs, constants, value_info, opset, name="",
                 producer="", metadata=None):
        # inputs: the feeds (initializers excluded); constants: initializers and
        # Constant nodes, read-only arrays; opset: of the default domain; metadata: the
        # model's descriptive fields (see model_metadata)
        self._init(nodes=tuple(nodes), inputs=tuple(inputs), outputs=tuple(outputs),
                   constants=constants, value_info=value_info, opset=opset, name=name,
                   producer=producer, metadata=model_metadata(metadata or {}))


METADATA_STRINGS = ("producer_name", "producer_version", "domain", "description",
                    "graph_name", "graph_description")


def model_metadata(values):
    """The model's descriptive fields, as onnxruntime's ModelMetadata reports them:
    the strings of METADATA_STRINGS, `version` (ModelProto.model_version, None when
    unset) and `custom_metadata_map` ({key: value} of metadata_props). Missing keys
    take their defaults; a new dict is returned."""
    out = {k: str(values.get(k, "") or "") for k in METADATA_STRINGS}
    version = values.get("version")
    out["version"] = None if version is None else int(version)
    out["custom_metadata_map"] = {str(k): str(v) for k, v in
                                  dict(values.get("custom_metadata_map") or {}).items()}
    return out

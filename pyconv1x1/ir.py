"""The parsed model: small frozen dataclasses, free of protobuf. The parser builds them;
every later stage (check, rewrite, plan) reads only these."""
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np

Dim = Union[int, str, None]  # static size, named (symbolic) dim, or unknown


@dataclass(frozen=True)
class ValueInfo:
    name: str
    elem_type: str                       # numpy dtype name, e.g. 'float32'
    shape: Optional[Tuple[Dim, ...]]     # None: rank unknown


@dataclass(frozen=True)
class Node:
    name: str
    op_type: str
    domain: str
    inputs: Tuple[str, ...]              # '' marks an omitted optional input
    outputs: Tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def label(self):
        """How error messages name the node: op and name."""
        return f"{self.op_type} '{self.name}'"


@dataclass(frozen=True)
class Graph:
    nodes: Tuple[Node, ...]
    inputs: Tuple[ValueInfo, ...]        # feeds (initializers excluded)
    outputs: Tuple[ValueInfo, ...]
    constants: Mapping[str, np.ndarray]  # initializers and Constant nodes, read-only
    value_info: Mapping[str, ValueInfo]
    opset: int                           # default-domain opset
    name: str = ""
    producer: str = ""

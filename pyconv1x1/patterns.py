"""Pattern pass (before binding): node groups that exporters write for one activation,
replaced by one node that ops.py binds as an epilogue op.

- SiLU: Mul(x, Sigmoid(x)) -> pyconv1x1:Silu(x) (PyTorch exports nn.SiLU so)
- GELU: Div(x, sqrt 2) or Mul(x, 1/sqrt 2) -> Erf -> Add 1 -> and a product with x and
  0.5 in any of the orders the exporters write (((x * e) * 0.5), (x * (0.5 * e)),
  ((x * 0.5) * e)) -> Gelu(x) (the opset-20 op, approximate="none")

An intermediate tensor of a group must have no other reader and not be a graph output;
constants compare at float32 precision. Anything else stays as it is (an Erf alone is
then refused with the pattern it needs)."""
import math

import numpy as np

from .ir import Graph, Node
from .ops import PATTERN_DOMAIN


def fuse_patterns(graph):
    """The graph with every pattern replaced, or the graph itself when none matched."""
    m = _Matcher(graph)
    for i, n in enumerate(graph.nodes):
        if n.domain in ("", "ai.onnx") and not n.attrs:
            if n.op_type == "Sigmoid":
                m.silu(i)
            elif n.op_type == "Erf":
                m.gelu(i)
    if not m.replaced:
        return graph
    nodes = []
    for i, n in enumerate(graph.nodes):
        if i in m.replaced:
            if m.replaced[i] is not None:
                nodes.append(m.replaced[i])
        else:
            nodes.append(n)
    return Graph(nodes, graph.inputs, graph.outputs, graph.constants, graph.value_info,
                 graph.opset, graph.name, graph.producer, graph.metadata)


class _Matcher:
    def __init__(self, graph):
        self.g = graph
        self.outputs = {v.name for v in graph.outputs}
        self.users, self.producer = {}, {}
        for i, n in enumerate(graph.nodes):
            for t in n.inputs:
                if t:
                    self.users.setdefault(t, []).append(i)
            for t in n.outputs:
                if t:
                    self.producer[t] = i
        self.replaced = {}  # node index -> its replacement, or None: dropped

    def _only_reader(self, t, op_type):
        """The node index that alone reads t (of op_type, free), or None."""
        readers = self.users.get(t, [])
        if t in self.outputs or len(readers) != 1:
            return None
        i = readers[0]
        n = self.g.nodes[i]
        if (n.op_type != op_type or n.domain not in ("", "ai.onnx") or n.attrs
                or i in self.replaced or len(n.inputs) != 2 or len(n.outputs) != 1):
            return None
        return i

    def _const(self, t, value):
        c = self.g.constants.get(t)
        if c is None or c.size != 1 or c.dtype.kind != "f":
            return False
        v = float(np.asarray(c, np.float64).reshape(-1)[0])
        return math.isclose(v, float(np.float32(value)), rel_tol=1e-6)

    def _other(self, node, t):
        """node's input other than t, or None when t is not one of its two inputs."""
        a, b = node.inputs
        return b if a == t else a if b == t else None

    def _replace(self, indices, last, node):
        for i in indices:
            self.replaced[i] = None
        self.replaced[last] = node

    def silu(self, i):
        s = self.g.nodes[i]
        x, out = s.inputs[0], s.outputs[0]
        j = self._only_reader(out, "Mul")
        if j is None or self._other(self.g.nodes[j], out) != x or x == out:
            return
        mul = self.g.nodes[j]
        self._replace([i], j, Node(mul.name or s.name, "Silu", PATTERN_DOMAIN, (x,),
                                   mul.outputs))

    def gelu(self, i):
        g = self.g
        e = g.nodes[i]
        if i in self.replaced or len(e.inputs) != 1 or e.inputs[0] in self.outputs:
            return
        d_i = self.producer.get(e.inputs[0])
        if d_i is None or len(self.users.get(e.inputs[0], [])) != 1:
            return
        d = g.nodes[d_i]
        if d.attrs or len(d.inputs) != 2 or d.domain not in ("", "ai.onnx"):
            return
        if d.op_type == "Div" and self._const(d.inputs[1], math.sqrt(2.0)):
            x = d.inputs[0]
        elif d.op_type == "Mul" and self._const(d.inputs[1], math.sqrt(0.5)):
            x = d.inputs[0]
        elif d.op_type == "Mul" and self._const(d.inputs[0], math.sqrt(0.5)):
            x = d.inputs[1]
        else:
            return
        a_i = self._only_reader(e.outputs[0], "Add")
        if a_i is None or not self._const(self._other(g.nodes[a_i], e.outputs[0]), 1.0):
            return
        c = g.nodes[a_i].outputs[0]           # 1 + erf
        m1_i = self._only_reader(c, "Mul")
        if m1_i is None:
            return
        m1 = g.nodes[m1_i]
        other = self._other(m1, c)
        group = [d_i, i, a_i, m1_i]
        if other == x or self._const(other, 0.5):  # (x * c) * 0.5 or (0.5 * c) * x
            m2_i = self._only_reader(m1.outputs[0], "Mul")
            if m2_i is None:
                return
            want = 0.5 if other == x else None
            last = self._other(g.nodes[m2_i], m1.outputs[0])
            if not (self._const(last, 0.5) if want else last == x):
                return
            group.append(m2_i)
            final = m2_i
        else:                                  # (x * 0.5) * c
            h_i = self.producer.get(other)
            if h_i is None or self._only_reader(other, "Mul") != m1_i:
                return
            h = g.nodes[h_i]
            if h.op_type != "Mul" or h.attrs or len(h.inputs) != 2 or \
                    not self._const(self._other(h, x), 0.5) or h_i in self.replaced:
                return
            group.append(h_i)
            final = m1_i
        out = g.nodes[final]
        self._replace(group, final, Node(out.name or e.name, "Gelu", "", (x,), out.outputs,
                                         {"approximate": "none"}))

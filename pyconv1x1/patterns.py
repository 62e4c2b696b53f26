"""Pattern pass (before binding): node groups that exporters write for one activation,
replaced by one node that ops.py binds as an epilogue op.

- SiLU: Mul(x, Sigmoid(x)) -> pyconv1x1:Silu(x) (PyTorch exports nn.SiLU so)
- GELU: Div(x, sqrt 2) or Mul(x, 1/sqrt 2) -> Erf -> Add 1 -> and a product with x and
  0.5 in any of the orders the exporters write (((x * e) * 0.5), (x * (0.5 * e)),
  ((x * 0.5) * e)) -> Gelu(x) (the opset-20 op, approximate="none")
- tanh GELU (nn.GELU(approximate="tanh") before opset 20): the cube x^3 as Pow(x, 3)
  (dynamo exporter) or Mul(x, Mul(x, x)) (TorchScript exporter), Mul by 0.044715, Add x,
  Mul by sqrt(2/pi), Tanh, Add 1, and the product with x and 0.5 as for the erf form
  -> Gelu(x, approximate="tanh")

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
            elif n.op_type == "Tanh":
                m.gelu_tanh(i)
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
        group = [d_i, i, a_i]
        final = self._times_half_x(g.nodes[a_i].outputs[0], x, group)
        if final is None:
            return
        out = g.nodes[final]
        self._replace(group, final, Node(out.name or e.name, "Gelu", "", (x,), out.outputs,
                                         {"approximate": "none"}))

    def _times_half_x(self, c, x, group):
        """The index of the node computing c * x * 0.5 in one of the exporters' orders,
        its nodes added to group; None when c's readers are not such a product."""
        g = self.g
        m1_i = self._only_reader(c, "Mul")
        if m1_i is None:
            return None
        m1 = g.nodes[m1_i]
        other = self._other(m1, c)
        group.append(m1_i)
        if other == x or self._const(other, 0.5):  # (x * c) * 0.5 or (0.5 * c) * x
            m2_i = self._only_reader(m1.outputs[0], "Mul")
            if m2_i is None:
                return None
            last = self._other(g.nodes[m2_i], m1.outputs[0])
            if not (self._const(last, 0.5) if other == x else last == x):
                return None
            group.append(m2_i)
            return m2_i
        h_i = self.producer.get(other)                # (x * 0.5) * c
        if h_i is None or self._only_reader(other, "Mul") != m1_i:
            return None
        h = g.nodes[h_i]
        if h.op_type != "Mul" or h.attrs or len(h.inputs) != 2 or \
                not self._const(self._other(h, x), 0.5) or h_i in self.replaced:
            return None
        group.append(h_i)
        return m1_i

    def _made_by(self, t, op_type):
        """The node (index, node) of op_type that writes t, t having only that node's
        reader downstream in the group (one reader, not a graph output), or None."""
        i = self.producer.get(t)
        if i is None or i in self.replaced or t in self.outputs \
                or len(self.users.get(t, [])) != 1:
            return None
        n = self.g.nodes[i]
        if (n.op_type != op_type or n.domain not in ("", "ai.onnx") or n.attrs
                or len(n.inputs) != 2 or len(n.outputs) != 1):
            return None
        return i, n

    def _const_side(self, node, value):
        """node's non-constant input when its other input is the constant value."""
        a, b = node.inputs
        if self._const(a, value):
            return b
        if self._const(b, value):
            return a
        return None

    def _cube_of(self, t):
        """(x, node indices) when t = x^3 as Pow(x, 3) or x * (x * x) in either order."""
        p = self._made_by(t, "Pow")
        if p is not None:
            return (p[1].inputs[0], [p[0]]) if self._const(p[1].inputs[1], 3.0) else None
        m = self._made_by(t, "Mul")
        if m is None:
            return None
        a, b = m[1].inputs
        for x, sq in ((a, b), (b, a)):
            s = self._made_by(sq, "Mul")
            if s is not None and s[1].inputs[0] == x and s[1].inputs[1] == x:
                return x, [m[0], s[0]]
        return None

    def gelu_tanh(self, i):
        g = self.g
        t = g.nodes[i]
        if i in self.replaced or len(t.inputs) != 1 or len(t.outputs) != 1:
            return
        k = self._made_by(t.inputs[0], "Mul")            # sqrt(2/pi) * (x + ...)
        if k is None:
            return
        inner = self._const_side(k[1], math.sqrt(2.0 / math.pi))
        a = self._made_by(inner, "Add") if inner is not None else None
        if a is None:
            return
        for x, m_t in (a[1].inputs, a[1].inputs[::-1]):
            m = self._made_by(m_t, "Mul")                  # 0.044715 * x^3
            cube_t = self._const_side(m[1], 0.044715) if m is not None else None
            cube = self._cube_of(cube_t) if cube_t is not None else None
            if cube is not None and cube[0] == x:
                break
        else:
            return
        add1_i = self._only_reader(t.outputs[0], "Add")
        if add1_i is None or not self._const(self._other(g.nodes[add1_i], t.outputs[0]), 1.0):
            return
        group = cube[1] + [m[0], a[0], k[0], i, add1_i]
        final = self._times_half_x(g.nodes[add1_i].outputs[0], x, group)
        if final is None:
            return
        out = g.nodes[final]
        self._replace(group, final, Node(out.name or t.name, "Gelu", "", (x,),
                                              out.outputs, {"approximate": "tanh"}))

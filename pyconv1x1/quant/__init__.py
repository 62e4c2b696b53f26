"""Quantized (int8) models: recognition of QDQ, QOperator and ConvInteger graphs
(recognize), the quantized program steps (steps), the kernel API they call (compiled
int8 kernels when built, else the numpy reference of the same API: reference)."""
from .recognize import DOMAIN, is_quantized, lower_quantized  # noqa: F401


def quantized_edges(graph):
    """Names of the graph's uint8 / int8 inputs that only quantized steps read and
    outputs that quantized steps write (after lower_quantized): they keep their type."""
    quant_reads, other_reads, quant_writes = set(), set(), set()
    for n in graph.nodes:
        if n.domain == DOMAIN:
            quant_reads.update(n.inputs)
            quant_writes.update(n.outputs)
        else:
            other_reads.update(n.inputs)
    edges = {v.name for v in graph.inputs if v.elem_type in ("uint8", "int8")
             and v.name in quant_reads and v.name not in other_reads}
    edges.update(v.name for v in graph.outputs if v.elem_type in ("uint8", "int8")
                 and v.name in quant_writes)
    return edges


def kernels(variant=None):
    """The int8 kernel module built with float kernel variant `variant` (default: the
    one this CPU runs): compiled (`_backend.qkernels`) when this build has it, else the
    numpy reference (same names, same results)."""
    from .. import _backend
    get = getattr(_backend, "qkernels", None)
    if get is not None:
        try:
            return get(variant)
        except ImportError:  # not built in this installation: the reference computes
            pass             # the same
    from . import reference
    return reference


def int8_path(program, variant=None, chains=None):
    """Which int8 path runs the program's quantized steps, or None when it has none.
    chains (a KernelSet's id(step) -> kernel object): also names the other paths chains
    take (AMX only where every k >= 64) and how many int8 chains run exactly on the
    float32 kernels instead (floatpath: where the int8 path is slower)."""
    from .floatpath import PATH
    from .steps import QChainStep, QUANT_STEPS
    if not any(isinstance(s, QUANT_STEPS) for s in program.steps):
        return None
    path = kernels(variant).INT8_PATH
    used = [getattr(chains.get(id(s)), "path", None) for s in program.steps
            if isinstance(s, QChainStep)] if chains else []
    on_float = sum(p == PATH for p in used)
    others = sorted({p for p in used if p not in (PATH, path, None)})
    text = path + (f" (chains on {', '.join(others)})" if others else "")
    if on_float:
        text += f"; {on_float} of {len(used)} int8 chains on {PATH}"
    return text

"""Validation helpers: THE comparison rule of outputs against a reference
(`compare_outputs`, `compare`: testing/compare.py), a torch module exported and checked
against PyTorch's own output (`assert_matches_torch`: testing/torch_export.py), the ONNX
graph rebuilt with torch ops as an independent reference (`run_torch_reference`:
testing/torch_graph.py), and every reference engine behind one call (`run_reference`:
testing/reference.py).

Importing this package needs neither torch nor onnx: both load inside the functions.
"""
from .compare import (DEFAULT_RTOL, MatchReport, OutputError, compare, compare_outputs,
                      output_error)
from .reference import REFERENCES, ReferenceFailed, run_reference
from .torch_export import EXPORTERS, ExportFailed, assert_matches_torch
from .torch_graph import REFERENCE_OPS, run_torch_reference

__all__ = ["assert_matches_torch", "run_torch_reference", "compare_outputs",
           "OutputError", "MatchReport", "ExportFailed", "EXPORTERS", "compare",
           "output_error", "DEFAULT_RTOL", "run_reference", "REFERENCES",
           "ReferenceFailed", "REFERENCE_OPS"]

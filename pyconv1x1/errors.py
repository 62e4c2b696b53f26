"""The exceptions pyconv1x1 raises: a contract that users and other tools rely on."""
from typing import NamedTuple


class Error(Exception):
    """Base class of every error pyconv1x1 raises on purpose."""


class ModelError(Error):
    """The model file is bad, unsafe or inconsistent (unreadable, malformed, path
    escaping its folder, sizes that do not match, cycles, undefined tensors...)."""


class Problem(NamedTuple):
    """One reason a model cannot run: the node's op type and name ('' for a model-wide
    problem such as its opset or an input's dtype) and the reason in words."""
    op: str
    node: str
    reason: str

    def __str__(self):
        return f"{self.op} '{self.node}': {self.reason}" if self.op else self.reason


class UnsupportedError(Error):
    """A valid ONNX model that this runtime does not run (op, attribute, dtype...).

    problems: the Problem records behind the message (one per node that cannot run, as
    data: tools group them by op without parsing the text); empty when the message
    names a single problem that has no node."""

    def __init__(self, *args, problems=()):
        super().__init__(*args)
        self.problems = list(problems)


class InputError(Error, ValueError):
    """A bad feed to run(): wrong name, dtype, rank or dimension, unknown output."""


ONNX_EXTRA_HINT = "pip install 'pyconv1x1[onnx]'"


def onnx_missing(feature):
    """The error for a feature that needs the onnx package when it is not installed:
    pyconv1x1 itself reads .onnx files without it; `feature` is what needed it."""
    return UnsupportedError(f"{feature} needs the onnx package, which is not installed: "
                            f"{ONNX_EXTRA_HINT} (pyconv1x1 runs .onnx files and .pc1 "
                            "plans without it)")


def one_line(text):
    """A (possibly multi-line) message squeezed onto one line, for reports that must
    stay one line (the command line's errors, a reference engine's failure)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} {lines[1]} (and {len(lines) - 2} more)"

"""pyconv1x1: a small, fast CPU inference runtime for ONNX models built from 1x1
convolutions. Importing the package loads neither onnx nor protobuf; they load only
when an .onnx model is parsed."""
from .errors import Error, InputError, ModelError, UnsupportedError

__version__ = "0.1.0"
__all__ = ["InferenceSession", "NodeArg", "Error", "ModelError", "UnsupportedError",
           "InputError", "__version__"]


def __getattr__(name):  # lazy: keep `import pyconv1x1` light
    if name in ("InferenceSession", "NodeArg"):
        from . import session
        return getattr(session, name)
    if name == "testing":
        import importlib
        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'pyconv1x1' has no attribute {name!r}")

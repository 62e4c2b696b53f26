"""pyconv1x1: a small, fast CPU inference runtime for ONNX models built from 1x1
convolutions. Importing the package loads neither onnx nor protobuf; they load only
when an .onnx model is parsed."""
from .errors import Error, InputError, ModelError, UnsupportedError

__version__ = "0.1.0"
_ORT_API = ("SessionOptions", "RunOptions", "GraphOptimizationLevel", "ExecutionMode",
            "ExecutionOrder", "ModelMetadata", "IOBinding", "OrtValue")
__all__ = ["InferenceSession", "NodeArg", "Error", "ModelError", "UnsupportedError",
           "InputError", "__version__", "get_available_providers", "get_device",
           *_ORT_API]


def get_available_providers():
    """As onnxruntime's: the execution providers this build has."""
    return ["CPUExecutionProvider"]


def get_device():
    """As onnxruntime's: the device this build runs on."""
    return "CPU"


def __getattr__(name):  # lazy: keep `import pyconv1x1` light
    if name in ("InferenceSession", "NodeArg"):
        from . import session
        return getattr(session, name)
    if name in _ORT_API:
        from . import ort_api
        return getattr(ort_api, name)
    if name == "testing":
        import importlib
        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'pyconv1x1' has no attribute {name!r}")

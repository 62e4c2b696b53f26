"""Optional extras: the modules that need a package `import pyconv1x1` never needs
(pyconv1x1.dask, pyconv1x1.ray) import it through require(), so that its absence says
which extra to install."""
import importlib


def require(module, extra, what):
    """Import and return `module` for pyconv1x1.<extra>; without it, an ImportError (of
    the same type, same missing name) that names `pip install "pyconv1x1[extra]"`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise type(exc)(f"pyconv1x1.{extra} needs {what}: pip install "
                        f"\"pyconv1x1[{extra}]\" ({exc})", name=exc.name) from None

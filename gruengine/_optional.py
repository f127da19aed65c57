"""Optional packages of the extras: imported when first used, never at ``import gruengine``."""
import importlib

from .errors import GruengineError


def require(module, purpose, extra="onnx"):
    """Import ``module`` (e.g. 'onnx', 'safetensors.numpy') or raise a one-line GruengineError
    naming the package and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise GruengineError(f"{purpose} needs the package {top!r}, which is not installed: "
                             f"pip install 'gruengine[{extra}]'") from None

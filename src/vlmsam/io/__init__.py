"""Images in, result files out."""

from vlmsam.io.images import load_image
from vlmsam.io.writer import write_result

__all__ = ["load_image", "write_result"]

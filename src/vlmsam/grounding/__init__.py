"""VLM grounding answers -> boxes and points in original-image pixels (the box_prompt design reads them)."""

from vlmsam.grounding.parse import CONVENTIONS, Grounding, parse_grounding

__all__ = ["CONVENTIONS", "Grounding", "parse_grounding"]

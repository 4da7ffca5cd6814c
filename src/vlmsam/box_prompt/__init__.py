"""Design 2: VLM grounding -> SAM box/point prompts (Qwen-VL + SAM, Seg-Zero / VisionReasoner)."""

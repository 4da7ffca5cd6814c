"""Design 3: SAM mask proposals + selection (LLM-Seg, SAM 3 Agent set-of-marks)."""

"""The agent design (SAM 3 Agent): a VLM calls SAM 3 as a tool, looks at the numbered masks, and chooses."""

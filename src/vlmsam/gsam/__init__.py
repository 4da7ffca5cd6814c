"""The gsam and grounded designs: <gsam> tool tags (or the request as the phrase) -> Grounding DINO -> SAM."""

"""Open-vocabulary detectors (a phrase in, boxes out) shared by the designs that use them."""

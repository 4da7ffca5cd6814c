"""How the bundled offline default (``vlmsam-tiny``) is made: its untrained base, the pre-training of
its from-scratch SAM and vision tower, export and evaluation. Nothing here is needed to *use* a
model; the inference packages (``sam/``, ``vlm/``, the designs) never import it."""

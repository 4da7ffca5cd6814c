"""How the bundled offline defaults (``vlmsam-tiny`` and the other designs' tiny defaults) are made: the
untrained base, the pre-training of its from-scratch SAM, vision tower and DINOv2, export and evaluation.

A workshop package of the repository, not part of the installed ``vlmsam``: nothing here is needed to
*use* a model. It imports vlmsam; vlmsam never imports it. Run it from the repository root
(``python -m tools.pretrain sam ...``, ``python -m tools.proposal_recall ...``); the make targets do."""

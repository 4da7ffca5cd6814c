"""Evaluation by generation (``vlmsam evaluate``) and scoring of saved predictions (``vlmsam score``)."""

"""What the designs whose VLM answers with ``[SEG]`` (or is fine-tuned to answer at all) share: the build
(VLM + processor, ``[SEG]`` added, LoRA), the declared trainable parts, persistence (trained weights,
adapter), the ``[SEG]`` read-out and the grounding-attention loss. ``seg_token``, ``proposal_select``
(llmseg) and ``box_prompt``'s training model subclass :class:`~vlmsam.seg_vlm.model.SegVlmModel`.

It sits below the designs and above ``proposals``/``data``: a design imports it, never another design.
"""

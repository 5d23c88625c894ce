"""The two stage names of the schedule, defined once for every layer (stdlib only).

Stage 1, ``"unimodal"``, trains each modality branch as a unimodal classifier; stage 2,
``"joint"``, trains the fused model. Controllers, the callback, the model protocol and
``MultimodalClassifier`` use these constants instead of string literals.
"""

from __future__ import annotations

__all__ = ["STAGES", "STAGE_JOINT", "STAGE_UNIMODAL"]

STAGE_UNIMODAL = "unimodal"
STAGE_JOINT = "joint"
STAGES = (STAGE_UNIMODAL, STAGE_JOINT)

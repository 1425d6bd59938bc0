"""Benchmarks with known ground truth (the RLHF-V study in miniature): see ``docs/hallucination_study.md``."""

from benchmarks.hallucination.grounded import (
    GroundedSample,
    GroundedTaskConfig,
    ObjectGroup,
    Scene,
    correct_response,
    describe_scene,
    find_hallucinations,
    generate_samples,
    parse_mentions,
    rlhf_v_row,
)

__all__ = [
    "GroundedSample",
    "GroundedTaskConfig",
    "ObjectGroup",
    "Scene",
    "correct_response",
    "describe_scene",
    "find_hallucinations",
    "generate_samples",
    "parse_mentions",
    "rlhf_v_row",
]

"""The built-in ``shapes`` data set (spec: shared/specs/shapes.md, v1).

Procedural, captioned images of one or two coloured shapes on white, with a checker that
decides whether any image matches a canonical prompt::

    from tessera.data.shapes import ShapesSource, check_image
    src = ShapesSource(split="eval", n=100)
    result = check_image(src.image(0), src.prompt(0))  # result.passed is True
"""

from tessera.data.shapes.captions import (
    canonical_captions,
    canonical_prompt,
    caption_templates,
    sample_captions,
)
from tessera.data.shapes.checker import (
    CheckResult,
    Claims,
    DetectedObject,
    ObjectClaim,
    check_image,
    detect_objects,
    parse_prompt,
    pixel_coverage,
)
from tessera.data.shapes.dataset import ShapesSource, evaluation_prompts, example_key
from tessera.data.shapes.export import ExportSummary, export_shapes
from tessera.data.shapes.palette import (
    CELLS,
    COLORS,
    PALETTE,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
    WHERE_PHRASES,
)
from tessera.data.shapes.render import render_scene
from tessera.data.shapes.scene import SPLITS, Scene, SceneObject, sample_scene

__all__ = [
    "CELLS",
    "COLORS",
    "PALETTE",
    "RELATIONS",
    "RELATION_PHRASES",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "WHERE_PHRASES",
    "CheckResult",
    "Claims",
    "DetectedObject",
    "ExportSummary",
    "ObjectClaim",
    "Scene",
    "SceneObject",
    "ShapesSource",
    "canonical_captions",
    "canonical_prompt",
    "caption_templates",
    "check_image",
    "detect_objects",
    "evaluation_prompts",
    "example_key",
    "export_shapes",
    "parse_prompt",
    "pixel_coverage",
    "render_scene",
    "sample_captions",
    "sample_scene",
]

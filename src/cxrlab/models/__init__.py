"""cxrlab.models: classifiers over timm bodies, the architecture registry, checkpoints."""

from cxrlab.models.classifier import (
    HEADS,
    AdaptiveConcatPool2d,
    Classifier,
    concat_head,
    count_parameters,
    create_classifier,
    linear_head,
    load_body_weights,
)
from cxrlab.models.registry import (
    ARCHITECTURES,
    EFFICIENTNET_FOR_RESOLUTION,
    SEED001_ARCHITECTURES,
    ArchSpec,
    efficientnet_for_resolution,
    get_architecture,
    list_architectures,
    resolve_timm_name,
)
from cxrlab.models.weights import check_input_range, load_model_checkpoint, save_model_checkpoint

__all__ = [
    "ARCHITECTURES",
    "EFFICIENTNET_FOR_RESOLUTION",
    "HEADS",
    "SEED001_ARCHITECTURES",
    "AdaptiveConcatPool2d",
    "ArchSpec",
    "Classifier",
    "check_input_range",
    "concat_head",
    "count_parameters",
    "create_classifier",
    "efficientnet_for_resolution",
    "get_architecture",
    "linear_head",
    "list_architectures",
    "load_body_weights",
    "load_model_checkpoint",
    "resolve_timm_name",
    "save_model_checkpoint",
]

"""Demo encoders: (demo_inputs [B,D,S], demo_labels [B,D,S], demo_mask [B,D]) -> EncoderOutput."""
from __future__ import annotations

from torch import nn

from models.config import config_from_dict
from models.encoders.cell_perceiver import CellPerceiverEncoder
from models.encoders.colour_slots import ColourSlotEncoder
from models.encoders.common import EncoderConfig, EncoderOutput
from models.encoders.hybrid_standard import HybridStandardEncoder
from models.encoders.hybrid_variational import HybridVariationalEncoder
from models.encoders.standard import StandardEncoder

ENCODERS: dict[str, type] = {
    "standard": StandardEncoder,
    "hybrid_standard": HybridStandardEncoder,
    "hybrid_variational": HybridVariationalEncoder,
    "cell_perceiver": CellPerceiverEncoder,
    "colour_slots": ColourSlotEncoder,
}


def build_encoder(encoder_type: str, **kw) -> nn.Module:
    """Build an encoder by name; kw are EncoderConfig fields."""
    if encoder_type not in ENCODERS:
        raise ValueError(f"unknown encoder_type {encoder_type!r}; valid choices: {sorted(ENCODERS)}")
    return ENCODERS[encoder_type](config_from_dict(EncoderConfig, kw))


__all__ = ["ENCODERS", "EncoderConfig", "EncoderOutput", "build_encoder"]

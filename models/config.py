"""The model's config and its defaults (ETRMConfig: the one source of model defaults; Hydra's
`arch` schema is generated from it, training/config_schema.py), and `config_from_dict`, which builds
config dataclasses from plain dicts with clear errors. No torch here: composing a config is cheap."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """cls(**d), but unknown or missing keys raise a ValueError that names them and lists
    the valid fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    missing = sorted(
        n for n, f in fields.items()
        if n not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{cls.__name__}: missing required key(s) {missing}")
    return cls(**d)


POS_ENCODINGS = ("rope", "rope_2d", "none")
EVAL_HALTING = ("max", "q")


# Set from the dataset and the run (training/build.py model_kwargs), never in the `arch` config.
DATA_DERIVED_KEYS = ("seq_len", "vocab_size", "max_demos", "batch_size")
RUN_DERIVED_KEYS = ("eval_halting",)  # a top-level config key, copied in


# Loss-head keys (arch.loss) added after runs were started, with the value that keeps those runs'
# loss: training/run_identity.py ignores them at that value, so such a run resumes under its name.
LOSS_DEFAULTS = {"changed_cell_weight": 0.0, "context_contrast_weight": 0.0, "context_contrast_temperature": 0.1}


@dataclass
class ETRMConfig:
    """TRMWithEncoder's settings. The defaults here are the model defaults (TRM's numbers, the
    paper-size model); config/arch/etrm.yaml overrides none of them, experiment configs override
    what they change."""
    batch_size: int
    seq_len: int
    vocab_size: int
    max_demos: int
    puzzle_emb_len: int = 16           # context tokens the encoder writes in front of the canvas
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    H_cycles: int = 3
    L_cycles: int = 6
    H_layers: int = 0                  # unused by the model; kept so TRM-style configs and existing run configs load
    L_layers: int = 2
    pos_encodings: str = "rope"        # "rope" (1-D flat) | "rope_2d" (row/col) | "none"
    rope_theta: float = 10000.0        # rotary base (TRM's); small grids resolve cells better with a small one (synthetic: 16)
    rms_norm_eps: float = 1e-5
    forward_dtype: str = "bfloat16"    # autocast dtype on CUDA (the trainer autocasts; params are float32); CPU runs float32
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1  # TRM's value; the semi-final job lines set 0.5 / 0.7 themselves
    eval_halting: str = "max"          # "max": eval runs halt_max_steps; "q": also halt on q_halt > 0
    encoder_type: str = "standard"     # standard | hybrid_standard | hybrid_variational | cell_perceiver | colour_slots
    encoder_num_layers: int = 2
    encoder_pooling_method: str = "mean"  # mean | attention (standard encoder)
    encoder_set_layers: int = 2        # hybrid encoders: cross-attention set-encoder layers
    encoder_latent_dim: int = 0        # hybrid_variational: latent size (0 -> hidden_size)
    context_ablation: bool = False     # replace the encoder output by zeros (the model sees only the query: a rule-blind baseline)
    context_colour_table: bool = False # add context token v to the input embedding of query cells of colour v
                                       # (encoders whose first 10 context tokens are per-colour slots: colour_slots)
    encoder_packed: bool = True        # encode real demo pairs at their own size (False: padded 2S layout)
    demo_attention: bool = False       # the inner model's cells also cross-attend to every real demo cell
    demo_num_layers: int = 1           # demo_attention: layers of the demo reader's pair transformer
    map_read: bool = False             # the inner model's cells also read through candidate cell maps, chosen
                                       # with the demos' agreement with each map (models/grid_maps.py)
    local_mix: int = 0                 # k > 0: before each block, every canvas cell also mixes its k x k neighbourhood
                                       # (depthwise convolution, output projection zero at init; models/layers.py LocalMix)
    grid_features: bool = False        # every cell token (query, and the encoder's / demo reader's demo cells) also
                                       # gets per-cell features computed from its grid (models/grid_features.py)
    cell_lookup: bool = False          # every query cell also reads what the demo cells that look like it (colour +
                                       # grid features) became (models/cell_lookup.py; output projection zero at init)
    cell_lookup_map: bool = False      # cell_lookup reads every grid through the cell maps (+ colour relabelling) that
                                       # explain the demos (a flip / rotation / shift / tiling), then a per-cell change
    cell_lookup_select: bool = False   # cell_lookup compares cells by the grid features the demos' changes follow (chosen
                                       # per puzzle, leave-one-demo-out; models/feature_select.py)
    cell_lookup_table: bool = False    # ... and the demos' table for the best feature ((colour, value) -> change) votes for
                                       # the query's cells too, with its own gain (zero at init; needs cell_lookup_select)
    cell_lookup_frame: bool = False    # ... and the cover may read the input tiled or stretched into the answer's frame
                                       # (its size: models/answer_size.py's rule; models/grid_maps.py FRAME_MAPS)
    cell_lookup_box: bool = False      # ... and a box of the input (the content's, through a flip / rotation; one colour's,
                                       # one object size's, the largest / smallest objects') is a candidate map too
                                       # (models/grid_maps.py REGION_MAPS; needs cell_lookup_frame)
    answer_size: bool = False          # the answer's frame (its size: the first rule of a vocabulary of grid quantities that
                                       # gives every demo its output's size) votes on the output tokens (models/answer_size.py;
                                       # gain zero at init)

    def __post_init__(self):
        if self.pos_encodings not in POS_ENCODINGS:
            raise ValueError(f"unknown pos_encodings {self.pos_encodings!r}; valid: {list(POS_ENCODINGS)}")
        if self.eval_halting not in EVAL_HALTING:
            raise ValueError(f"unknown eval_halting {self.eval_halting!r}; valid: {list(EVAL_HALTING)}")
        if self.halt_max_steps < 1:
            raise ValueError("halt_max_steps must be >= 1")
        if self.demo_attention and self.demo_num_layers < 0:
            raise ValueError(f"demo_num_layers must be >= 0, got {self.demo_num_layers}")
        if self.local_mix < 0 or (self.local_mix and self.local_mix % 2 == 0):
            raise ValueError(f"local_mix must be 0 (off) or an odd kernel size, got {self.local_mix}")
        for option in ("cell_lookup_map", "cell_lookup_select"):
            if getattr(self, option) and not self.cell_lookup:
                raise ValueError(f"{option}=true is an option of cell_lookup: it needs cell_lookup=true")
        if self.cell_lookup_frame and not self.cell_lookup_map:
            raise ValueError("cell_lookup_frame=true adds frame maps to cell_lookup_map's cover: it needs "
                             "cell_lookup=true and cell_lookup_map=true")
        if self.cell_lookup_box and not self.cell_lookup_frame:
            raise ValueError("cell_lookup_box=true adds region maps after cell_lookup_frame's frame maps: it needs "
                             "cell_lookup=true, cell_lookup_map=true and cell_lookup_frame=true")
        if self.cell_lookup_table and not self.cell_lookup_select:
            raise ValueError("cell_lookup_table=true votes with cell_lookup_select's table: it needs "
                             "cell_lookup=true and cell_lookup_select=true")
        grid_options = ("demo_attention", "map_read", "grid_features", "local_mix", "cell_lookup", "answer_size")
        if any(getattr(self, o) for o in grid_options):
            side = math.isqrt(self.seq_len)
            if side * side != self.seq_len:
                raise ValueError(f"{' / '.join(grid_options)} need a square canvas, "
                                 f"seq_len {self.seq_len}")

    @classmethod
    def defaults(cls) -> dict:
        """Every key that has a default, with it (the data-derived keys have none)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    @classmethod
    def from_dict(cls, d: dict) -> "ETRMConfig":
        return config_from_dict(cls, dict(d))

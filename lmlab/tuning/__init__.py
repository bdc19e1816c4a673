"""Parameter-efficient fine-tuning: LoRA, Houlsby and Pfeiffer adapters, prefix and prompt
tuning, all wrapping the modules of any lmlab model rather than forking its class.

The public API::

    info = apply_tuning(model, TuningOptions(method="lora", r=8, targets=["q", "v"]),
                        keep_trainable=("head.",))      # freezes all but the method (and the head)
    tuning_state_dict(model)                             # the method's parameters only
    save_tuning(model, "runs/adapter", base="runs/base") # lmlab.load("runs/adapter") -> base + adapter
    load_tuning(model, "runs/adapter")                   # refuses another base (shape or fingerprint)
    merge_tuning(model); unmerge_tuning(model)           # LoRA into the weights and back; prefix: fold
    with disabled_tuning(model): ...                     # the base, exactly
    unload_tuning(model)                                 # a plain model again (LoRA merged)
"""

from lmlab.tuning.api import (
    apply_tuning,
    disabled_tuning,
    merge_tuning,
    tuning_info,
    tuning_parameter_names,
    tuning_state_dict,
    unload_tuning,
    unmerge_tuning,
)
from lmlab.tuning.io import base_path, is_tuning_dir, load_tuning, read_tuning_meta, save_tuning
from lmlab.tuning.module import tuning_state
from lmlab.tuning.options import METHODS, TuningInfo, TuningOptions

__all__ = ["METHODS", "TuningInfo", "TuningOptions", "apply_tuning", "base_path", "disabled_tuning",
           "is_tuning_dir", "load_tuning", "merge_tuning", "read_tuning_meta", "save_tuning", "tuning_info",
           "tuning_parameter_names", "tuning_state", "tuning_state_dict", "unload_tuning", "unmerge_tuning"]

"""What every run's config shares: MODEL_DIR/config.json handling and the precision policies.

`TrainConfig` (cvm.training.config) and `SynthesisConfig` (cvm.training.synthesis_config) both derive
from `ModelDirConfig`; neither config module imports the other.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Self

from cvm.atomic import write_text
from cvm.errors import CvmError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


class ModelDirConfig:
    """MODEL_DIR/config.json of a dataclass config: to_json, save and load (TrainConfig, SynthesisConfig).

    A subclass names its size fields (JSON turns their tuples into lists; load turns them back), the
    `cvm train` command that makes such a model_dir (for the error of a missing config.json), and
    check the values read (_check_loaded: a run of the other kind is refused). load ignores keys the class no longer has.
    """

    _SIZE_FIELDS = ()
    _TRAIN_COMMAND = "cvm train --model_dir ..."

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    def save(self, model_dir: str) -> None:
        # Atomic: a run killed while saving leaves the previous config.json, which a resume compares with.
        write_text(os.path.join(model_dir, "config.json"), self.to_json())

    @classmethod
    def load(cls, model_dir: str) -> Self:
        path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(path):
            raise CvmError(f"{path} not found: {model_dir} is not a cvm model_dir (run `{cls._TRAIN_COMMAND}` "
                           "first)")
        with open(path) as f:
            values = json.load(f)
        cls._check_loaded(values, model_dir)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in cls._SIZE_FIELDS:
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def _check_loaded(cls, values: dict, model_dir: str) -> None:
        """Refuse the values of a run of another kind (a subclass says which)."""

"""TFDS builders (array_record, no TensorFlow needed) for the public dermatology datasets.

Importing this package registers the builders with TFDS by name. Each reads a user-supplied
folder in the dataset's official layout (`manual_dir`); see each class's
MANUAL_DOWNLOAD_INSTRUCTIONS. Typical use:

    builder = BUILDERS["ham10000"](data_dir=..., manual_dir=..., on_bad_image="skip")
    builder.download_and_prepare()
    examples = load_examples("ham10000", "train", data_dir)
"""

from skinr1_jax.data.builders.bcn20000 import Bcn20000
from skinr1_jax.data.builders.common import (
    MAX_PATH_LEN, BadImageError, DatasetFormatError, DermBuilder, RawRecord, common_features,
    decode_record, load_examples, load_report, taxonomy_fingerprint)
from skinr1_jax.data.builders.ddi import Ddi
from skinr1_jax.data.builders.derm7pt import Derm7pt
from skinr1_jax.data.builders.derm12345 import Derm12345
from skinr1_jax.data.builders.dermnet import Dermnet
from skinr1_jax.data.builders.fitzpatrick17k import Fitzpatrick17k
from skinr1_jax.data.builders.ham10000 import Ham10000
from skinr1_jax.data.builders.omnimedvqa_derm import OmnimedvqaDerm
from skinr1_jax.data.builders.pad_ufes20 import PadUfes20
from skinr1_jax.data.builders.skincon import Skincon

BUILDERS: dict[str, type[DermBuilder]] = {b.name: b for b in (
    Ham10000, Bcn20000, PadUfes20, Derm7pt, Derm12345, Dermnet, Fitzpatrick17k, Ddi, Skincon,
    OmnimedvqaDerm)}

__all__ = ["BUILDERS", "MAX_PATH_LEN", "BadImageError", "Bcn20000", "DatasetFormatError", "Ddi",
           "Derm12345", "Derm7pt", "DermBuilder", "Dermnet", "Fitzpatrick17k", "Ham10000",
           "OmnimedvqaDerm", "PadUfes20", "RawRecord", "Skincon", "common_features", "decode_record",
           "load_examples", "load_report", "taxonomy_fingerprint"]

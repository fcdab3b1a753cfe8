"""synthetic_derm: procedural dermatology images rendered from the knowledge base's profiles.

render.py draws one image from a profile; signature.py makes siblings separable and families
alike; dataset.py builds the five splits; subsets.py names the diseases and embeds the real
Fitzpatrick17k frequencies; preview.py writes the sample grid (docs/synthetic_samples.png).
"""

from skinr1_jax.data.synthetic.dataset import SPLITS, build_specs, build_splits, class_counts, render_example
from skinr1_jax.data.synthetic.preview import save_sample_grid
from skinr1_jax.data.synthetic.render import Acquisition, Signature, render_image, sample_acquisition
from skinr1_jax.data.synthetic.signature import RenderSpec, render_specs
from skinr1_jax.data.synthetic.subsets import DEFAULT_LEAVES, FULL_LEAVES

__all__ = ["SPLITS", "Acquisition", "DEFAULT_LEAVES", "FULL_LEAVES", "RenderSpec", "Signature",
           "build_specs", "build_splits", "class_counts", "render_example", "render_image",
           "render_specs", "sample_acquisition", "save_sample_grid"]

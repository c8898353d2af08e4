"""Value kinds: what the number stored beside each label id means, and its on-disk dtype."""

import numpy as np

VALUE_KINDS = ("count", "prob")
VALUE_DTYPES = {"count": np.dtype("<u1"), "prob": np.dtype("<f2")}

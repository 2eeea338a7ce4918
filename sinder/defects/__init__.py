"""The defect maths: singular defect directions (``linearize``, Section 3), Eq. 5 detection and the Section 2
statistics (``detect``), the high-norm census (``census``) and the smoothness loss (``loss``).

``from sinder.defects import find_defects`` keeps working: the package re-exports ``detect``.
"""

from sinder.defects.detect import (  # noqa: F401  (the former sinder/defects.py, re-exported)
    DEFAULT_MU,
    HIGH_NORM_MIN_RATIO,
    HIGH_NORM_Z,
    LayerAccumulator,
    LayerStatistics,
    TokenAngleAccumulator,
    acute_angle,
    acute_angles_to,
    border_mask,
    count_defects,
    defect_logits,
    empirical_direction,
    enough_defects,
    find_defects,
    first_defective,
    high_norm_mask,
    is_clear,
    layer_statistics,
    mean_pairwise_angle,
    patch_token_grids,
    random_unit_direction,
)

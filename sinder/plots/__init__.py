"""The paper's figures (``figures``: PCA maps, norm violins, angle plots, singular-value differences) and the
``analyze`` statistics and figure set behind them (``analysis``).

``from sinder.plots import plot_pca_and_norms`` keeps working: the package re-exports ``figures``.
"""

from sinder.plots.figures import (  # noqa: F401  (the former sinder/plots.py, re-exported)
    KIND_TITLES,
    pca_rgb,
    plot_defect_masks,
    plot_direction_angles,
    plot_norm_violins,
    plot_norm_violins_per_layer,
    plot_pca_and_norms,
    plot_singular_value_differences,
    singular_value_differences,
)

"""The method's ``sinder-bench`` verbs (analyze, clamp, repair, ttr fit); each module has ``register(subparsers)``.

``common`` holds what every verb (the benchmarks' too) shares: the parent parsers of ``--backbone``, ``--out``,
``--device``, ``--force`` and ``--seed``, the backbone grammar, and ``UsageError`` (exit 2)."""

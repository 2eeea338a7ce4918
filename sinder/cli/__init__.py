"""The method's ``sinder-bench`` verbs (analyze, clamp, repair, ttr fit); each module has ``register(subparsers)``."""

"""Artifact remedies (SINDER, singular-value clamping, test-time registers, register releases) as part of a
backbone spec, one module per remedy registered into ``benchmarks.core.remedy``; the defect census task that
compares them is ``benchmarks.census``."""

"""Artifact remedies (SINDER, singular-value clamping, test-time registers, register releases) as part of a
backbone spec, and the defect census task that compares them; see ``base.py``."""

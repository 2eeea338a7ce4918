"""The defect census task (``defect_census``): high-norm tokens and Eq. 5 defects per block, which the
remedies suite runs on each remedy beside its base."""

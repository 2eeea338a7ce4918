"""Remedies that edit weights or the forward pass without training: singular-value clamping (Appendix B,
``clamp``) and test-time registers (``ttr``)."""

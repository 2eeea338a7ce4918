"""The model layer: the DINOv2-compatible ViT and its presets (``vit``), what tasks and the repair read off a
backbone (``backbone``), checkpoint formats (``formats``), tensor file I/O (``state_io``), loading and saving
backbones (``weights``), and the constructed test models (``defective``, ``constructed``)."""

"""Table 5: monocular depth on NYU Depth v2 with a frozen backbone (Linear 1, Linear 4 and DPT heads)."""

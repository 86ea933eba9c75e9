"""MSR-VTT video captioning: SwinBERT with STAMP on the video attention block (Table 6)."""

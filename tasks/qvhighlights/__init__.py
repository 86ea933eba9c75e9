"""QVHighlights moment retrieval + highlight detection with QD-DETR (+ STAMP in its encoder)."""

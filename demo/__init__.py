"""The end-to-end demo: MiniLM + BBC News across 4 non-IID sites (``make demo``)."""

"""freelabel: learn visual representations without labels. The label is always free; the
understanding never is."""

__version__ = "0.1.0"

"""fewshot: a benchmark harness for few-shot adaptation of CLIP-like models.

Importing the package is cheap: nothing here imports torch. Heavy modules are imported
where they are used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

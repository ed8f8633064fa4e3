"""TinyTales: train a small GPT on children's stories and tell stories with it.

Heavy modules (torch) are imported lazily so that `tinytales --help` and the first story
start fast.
"""
__version__ = "0.1.0"

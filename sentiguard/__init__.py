"""sentiguard: a Chinese sentiment-analysis service that keeps answering while its model fails."""

__version__ = "0.1.0"

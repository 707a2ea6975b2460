"""tradeops: keeps a trading bot's trade records true to Binance USDⓈ-M Futures."""

from .celery import app as celery_app

__all__ = ["celery_app"]

"""riskd: a risk daemon for CrossTrade / NinjaTrader 8 accounts."""
__version__ = "0.1.0"

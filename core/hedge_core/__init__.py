"""What every part of Hedge shares: the ModelDeployment API and the `hedge` command."""

__version__ = "0.1.0"

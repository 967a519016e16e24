"""o2obroker: a real-time message broker for the online and offline sides of a business."""

__version__ = "0.1.0"

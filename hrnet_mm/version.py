"""Version of hrnet_mm."""
__version__ = '0.1.0'

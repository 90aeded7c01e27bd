"""pqcad-deploy: PQCAD compression and QDQ deployment of diffusion UNets."""

__version__ = "0.1.0"

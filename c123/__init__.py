"""c123: Consistent123, one image to a consistent textured 3D asset with case-aware diffusion priors."""

__version__ = "0.1.0"

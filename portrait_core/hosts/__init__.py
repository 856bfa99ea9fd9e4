"""Diffusion hosts: the seam between Portrait Studio's pipeline and whoever runs the diffusion."""

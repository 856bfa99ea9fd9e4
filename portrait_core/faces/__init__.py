"""Faces: one FaceAnalyzer protocol, the embedded (offline) and insightface backends, and face geometry.

Importing this package loads no model and imports no heavy library; backends load on first use.
"""

from portrait_core.faces.base import (
    Face,
    FaceAnalyzer,
    available_backends,
    get_face_analyzer,
    similarity,
    sort_faces,
)

__all__ = ["Face", "FaceAnalyzer", "available_backends", "get_face_analyzer", "similarity", "sort_faces"]
